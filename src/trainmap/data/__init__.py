"""Built-in data sets: everything here ships with a package or is generated; nothing downloads."""

from trainmap.data.digits import Dataset, load_digits
from trainmap.data.modular import ModularData, modular_addition

__all__ = ["Dataset", "ModularData", "load_digits", "modular_addition"]
