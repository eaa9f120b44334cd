"""Validation shared by the recorders and the hyper-ribbon lens: recorded predictions, and the
recorders' one vocabulary for *which steps* (``every`` or ``steps``) and *which layers* (``layers``)."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

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


def which_steps(steps: Sequence[int] | None, every: int | None) -> tuple[list[int] | None, int | None]:
    """Check the recorders' "which steps" arguments: exactly one of ``steps`` (increasing
    non-negative step indices) and ``every`` (k >= 1: steps 0, k, 2k, ...).

    Returns:
        ``(sorted unique steps or None, every or None)``.
    """
    if (steps is None) == (every is None):
        raise ValueError("say which steps to record with exactly one of steps=[...] (explicit step indices) "
                         "and every=k (steps 0, k, 2k, ...)")
    if every is not None:
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        return None, int(every)
    chosen = sorted({int(s) for s in steps})
    if not chosen or chosen[0] < 0:
        raise ValueError(f"steps must be non-negative step indices, got {list(steps)}")
    return chosen, None


def renamed(new: str, old: str, value: Any, current: Any) -> Any:
    """The value of a renamed keyword: ``value`` (given under the old name), with a
    DeprecationWarning, else ``current`` (the new name's value)."""
    if value is None:
        return current
    warnings.warn(f"{old}= is now called {new}=; {old}= will be removed", DeprecationWarning, stacklevel=3)
    return value
