"""Validation of recorded predictions, shared by the recorders and the hyper-ribbon lens."""

from __future__ import annotations

from typing import Any

import numpy as np

SUM_ATOL = 1e-3  # tolerance on Σ_c p = 1 (float32 softmax is well inside this)


def check_probs(probs: Any, name: str = "probs", atol: float = SUM_ATOL, offset: int = 0) -> np.ndarray:
    """Validate class probabilities and return them as a NumPy array.

    Args:
        probs: (..., N, C) probabilities; each (n, :) row must sum to one.
        name: how the input is named in error messages.
        atol: allowed deviation of a row sum from one.
        offset: index of the first model in ``probs`` (used in error messages for blocks).

    Returns:
        ``probs`` as a floating NumPy array (no copy when already one).

    Raises:
        ValueError: naming the first bad model and sample, for NaN/inf values, negative
            entries, or rows that do not sum to one (with the fix: pass softmax outputs, or
            ``from_logits=True`` where available).
    """
    arr = np.asarray(probs)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.ndim < 2:
        raise ValueError(f"{name} must have shape (..., N samples, C classes), got {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise ValueError(f"{name} contains {int(bad.sum())} NaN/inf values (first at index "
                         f"{_index(where, offset)}); the run probably diverged — drop it or lower "
                         "the learning rate")
    if (arr < -atol).any():
        where = np.argwhere(arr < -atol)[0]
        raise ValueError(f"{name} has negative probabilities (first at index {_index(where, offset)}); "
                         "pass softmax outputs, not logits")
    sums = arr.sum(-1)
    off = np.abs(sums - 1.0) > atol
    if off.any():
        where = np.argwhere(off)[0]
        raise ValueError(f"{name} rows must sum to one over classes, but the row at index "
                         f"{_index(where, offset)} sums to {float(sums[tuple(where)]):.6g}; apply "
                         "softmax to logits (from_logits=True) or normalise the rows")
    return arr


def _index(where: np.ndarray, offset: int) -> tuple:
    idx = [int(i) for i in where]
    if idx:
        idx[0] += offset
    return tuple(idx)
