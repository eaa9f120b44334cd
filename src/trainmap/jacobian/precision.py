"""Precision of the Jacobian computations: float32 (default) or float64 (JAX's x64 mode, per call)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import jax
import numpy as np


def precision_context(dtype: Any) -> Any:
    """A context enabling 64-bit JAX when ``dtype`` is float64 (a no-op for float32)."""
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else nullcontext()


def check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


