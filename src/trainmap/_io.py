"""Atomic, pickle-free storage helpers shared by every lens.

A *results folder* (see :mod:`trainmap.results`) holds ``config.json``, ``summary.json``, ``.npy`` arrays and
``.png`` figures. Every write here goes to a temporary name in the same folder and is renamed
into place, so a killed process never leaves a half-written file under the final name.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_path(path: Path) -> Path:
    """A fresh temporary file beside ``path`` with ordinary (umask) permissions."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return Path(name)


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fh)`` on a temp file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    return _atomic_write(path, lambda fh: fh.write(data))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy / jax scalars and arrays, paths and tuples into plain JSON values.

    Non-finite floats become ``None`` (JSON has no NaN); callers that care store a flag.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if hasattr(obj, "tolist"):
        return to_jsonable(np.asarray(obj).tolist())
    return str(obj)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as pretty JSON, atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n"
    return atomic_write_bytes(path, text.encode())


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with an error that names the file when it is corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); the file is corrupt. Delete it and rerun."
        ) from exc


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save one array as ``.npy`` atomically (``allow_pickle`` is never used)."""
    return _atomic_write(path, lambda fh: np.save(fh, np.asarray(array), allow_pickle=False))


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """Load a ``.npy`` file without pickle; a clear error names a corrupt file."""
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} could not be read as a .npy array ({exc}); it is corrupt. "
                         "Delete it and rerun to recompute it.") from exc


def atomic_savefig(fig: Any, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


class NpyStreamWriter:
    """Write a 2-D ``.npy`` file slab by slab, without holding the array in memory.

    The array ``(rows, cols)`` is stored *major-axis first*: with ``fortran_order=True`` each
    column is contiguous on disk (the file is a Fortran-ordered array), otherwise each row is.
    :meth:`write` puts ``block`` — shape ``(n, minor)``, one slab per major index — at major
    indices ``start .. start + n``. Data go to a temporary file beside ``path`` with ``os.pwrite``
    (page cache, not the process's resident memory); :meth:`commit` fsyncs and renames it into
    place, so ``path`` never holds a half-written array. Use as a context manager: leaving the
    block without :meth:`commit` (an exception, Ctrl-C) removes the temporary file.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int], dtype: Any,
                 fortran_order: bool = False) -> None:
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.fortran_order = bool(fortran_order)
        self.minor = self.shape[0] if fortran_order else self.shape[1]
        self.major = self.shape[1] if fortran_order else self.shape[0]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _tmp_path(self.path)
        self._fd = os.open(self._tmp, os.O_RDWR | os.O_TRUNC)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype),
                  "fortran_order": self.fortran_order, "shape": self.shape}
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
        self._offset = len(buf.getvalue())
        os.pwrite(self._fd, buf.getvalue(), 0)
        os.ftruncate(self._fd, self._offset + self.major * self.minor * self.dtype.itemsize)

    def write(self, start: int, block: np.ndarray) -> None:
        """Store ``block`` (n, minor) at major indices ``start .. start + n``."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.ndim != 2 or block.shape[1] != self.minor or not 0 <= start <= self.major - len(block):
            raise ValueError(f"block of shape {block.shape} at {start} does not fit a "
                             f"{self.major} x {self.minor} major-first array")
        data = memoryview(block).cast("B")
        pos = self._offset + start * self.minor * self.dtype.itemsize
        while len(data):
            n = os.pwrite(self._fd, data, pos)
            data, pos = data[n:], pos + n

    def commit(self) -> Path:
        """Flush to disk and rename the finished file to ``path``."""
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        os.replace(self._tmp, self.path)
        return self.path

    def close(self) -> None:
        """Abandon an unfinished file (removes the temporary file)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp.exists():
            self._tmp.unlink()

    def __enter__(self) -> "NpyStreamWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def release_memory(collect: bool = True, full: bool = False) -> None:
    """Return freed heap memory to the operating system (glibc ``malloc_trim``; else a no-op).

    XLA's compiler and JAX's tracing free much of what they allocate, but glibc keeps freed
    pages in its arenas (one per thread that allocated); trimming them keeps a long
    computation's resident memory to what it actually holds. ``collect`` runs Python's garbage
    collector on its young generations first (worth it after tracing and compiling, not between
    chunks); ``full`` collects every generation, which costs about 0.15 s in a process with a
    large heap, so it is done once per Jacobian, before the chunks start.
    """
    if collect or full:
        import gc

        gc.collect(2 if full else 1)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
