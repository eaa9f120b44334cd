"""Built-in data sets: everything here ships with a package or is generated; nothing downloads."""

from trainmap.data.digits import Dataset, load_digits

__all__ = ["Dataset", "load_digits"]
