"""Built-in data sets: everything here ships with a package or is generated; nothing downloads."""

from trainmap.data.digits import Dataset, load_digits
from trainmap.data.modular import ModularData, modular_addition

__all__ = ["Dataset", "ModularData", "load_digits", "modular_addition"]

from trainmap.data.synthetic import make_sloppy_data, sloppy_inputs, tanh_teacher  # noqa: E402

__all__ += ["make_sloppy_data", "sloppy_inputs", "tanh_teacher"]
