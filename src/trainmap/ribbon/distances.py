"""Bhattacharyya distances between models' predictions on a shared probe set.

For two models with class probabilities ``p[n, c]`` and ``q[n, c]`` on the same N probe samples,
the *intensive* Bhattacharyya distance is

    D(p, q) = -(1/N) Σ_n log Σ_c √(p[n, c] q[n, c]),

the per-sample average, so that it does not grow with the probe-set size. D is 0 for identical
predictions, symmetric, and plays the role of a *squared* distance in InPCA.

The pairwise matrix is computed in blocks of models: for a block pair, the per-sample overlaps
``Σ_c √p √q`` are formed by a fused multiply-add over the (few) classes in float32, the log is
taken there, and the sum over samples is accumulated in float64. Only two blocks of
square-root probabilities and one block of overlaps are in memory at a time, so thousands of
checkpoints × thousands of samples fit. For regression outputs modelled as Gaussians the
closed form is used instead (:func:`gaussian_bhattacharyya_matrix`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Iterator

import numpy as np

from trainmap._progress import progress as _progress
from trainmap.record.validation import check_probs

EPS = 1e-12  # probabilities are clipped to [EPS, 1] before the square root


def check_same_probe(a_shape: tuple, b_shape: tuple, a_name: str = "X", b_name: str = "Y") -> None:
    """Raise if two prediction arrays were not computed on the same probe set shape (N, C)."""
    if tuple(a_shape[-2:]) != tuple(b_shape[-2:]):
        raise ValueError(f"{a_name} has (samples, classes) = {tuple(a_shape[-2:])} but {b_name} has "
                         f"{tuple(b_shape[-2:])}: predictions must be on the same probe set with the "
                         "same classes; record both on one probe set")


# ----------------------------------------------------------------------------- direct form
def bhattacharyya(p: Any, q: Any, eps: float = EPS) -> np.ndarray:
    """Intensive Bhattacharyya distance between matching predictions, in float64.

    Args:
        p, q: (..., N, C) probabilities (broadcastable against each other).
        eps: probabilities are clipped to [eps, 1].

    Returns:
        (...) distances D = -(1/N) Σ_n log Σ_c √(p q).
    """
    p = check_probs(p, "p")
    q = check_probs(q, "q")
    check_same_probe(p.shape, q.shape, "p", "q")
    sp = np.sqrt(np.clip(p.astype(np.float64), eps, 1.0))
    sq = np.sqrt(np.clip(q.astype(np.float64), eps, 1.0))
    overlap = np.maximum(np.sum(sp * sq, axis=-1), np.finfo(np.float64).tiny)
    return np.maximum(-np.mean(np.log(np.minimum(overlap, 1.0)), axis=-1), 0.0)


# ----------------------------------------------------------------------------- blocked form
@lru_cache(maxsize=None)
def _block_kernel(dtype_name: str) -> Callable:
    import jax
    import jax.numpy as jnp

    def kernel(a: Any, b: Any) -> Any:
        """a: (bi, C, N), b: (bj, C, N) square-root probabilities -> (bi, bj) Σ_n log overlap."""
        g = a[:, None, 0, :] * b[None, :, 0, :]
        for c in range(1, a.shape[1]):
            g = g + a[:, None, c, :] * b[None, :, c, :]
        # inputs were clipped to [eps, 1], so g >= sqrt(eps) > 0 and no clip is needed here;
        # g <= 1 up to rounding (Cauchy-Schwarz), and D is floored at 0 by the caller
        return jnp.sum(jnp.log(g).astype(jnp.float64), axis=-1)

    return jax.jit(kernel)


def _sqrt_block(x: Any, start: int, stop: int, dtype: Any, eps: float, name: str,
                validate: bool) -> np.ndarray:
    """Rows [start, stop) of (M, N, C) probabilities as (b, C, N) square roots."""
    block = np.asarray(x[start:stop])
    if validate:
        block = check_probs(block, name, offset=start)
    block = np.sqrt(np.clip(block.astype(dtype, copy=False), eps, 1.0))
    return np.ascontiguousarray(block.transpose(0, 2, 1))


def _log_overlap_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import jax

    with jax.enable_x64(True):
        return np.asarray(_block_kernel(str(a.dtype))(a, b), dtype=np.float64)


def iter_bhattacharyya_blocks(
    X: Any,
    Y: Any = None,
    block: int = 256,
    dtype: Any = np.float32,
    eps: float = EPS,
    validate: bool = True,
    symmetric_only: bool = True,
) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """Yield the Bhattacharyya matrix block by block.

    Args:
        X: (M, N, C) probabilities (NumPy, zarr or any array with row slicing; read a block at
            a time, so it may live on disk).
        Y: (M', N, C) probabilities, or None for the distances within X.
        block: models per block; memory is about ``block² · N`` floats for the overlaps.
        dtype: float32 (fast) or float64 for the products; sums are always float64.
        eps: probabilities are clipped to [eps, 1].
        validate: check each block (sums to one, finite, non-negative).
        symmetric_only: when Y is None, yield only blocks with column start >= row start.

    Yields:
        (rows, cols, D_block) with D_block: (len(rows), len(cols)) float64.
    """
    M = int(X.shape[0])
    N = int(X.shape[1])
    other = X if Y is None else Y
    if Y is not None:
        check_same_probe(tuple(X.shape), tuple(Y.shape))
    M2 = int(other.shape[0])
    dtype = np.dtype(dtype)
    for i0 in range(0, M, block):
        i1 = min(i0 + block, M)
        a = _sqrt_block(X, i0, i1, dtype, eps, "X", validate)
        j_start = i0 if (Y is None and symmetric_only) else 0
        for j0 in range(j_start, M2, block):
            j1 = min(j0 + block, M2)
            if Y is None and j0 == i0:
                b = a
            else:
                b = _sqrt_block(other, j0, j1, dtype, eps, "X" if Y is None else "Y",
                                validate and Y is not None and i0 == 0)
            d = np.maximum(-_log_overlap_sums(a, b) / N, 0.0)
            if Y is None and j0 == i0:
                d = 0.5 * (d + d.T)
                np.fill_diagonal(d, 0.0)
            yield slice(i0, i1), slice(j0, j1), d


def bhattacharyya_matrix(
    X: Any,
    Y: Any = None,
    block: int = 256,
    dtype: Any = np.float32,
    eps: float = EPS,
    validate: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Pairwise intensive Bhattacharyya distances, computed in blocks.

    Args:
        X: (M, N, C) probabilities of M models on N probe samples and C classes.
        Y: (M', N, C) probabilities on the same probe set, or None for X against itself.
        block: models per block (memory ~ block² · N floats).
        dtype: float32 (fast; absolute error ~1e-7) or float64 for the products; the sums
            over samples always accumulate in float64.
        eps: probabilities are clipped to [eps, 1].
        validate: check the inputs (sums to one, finite, non-negative).
        progress: show a progress bar.

    Returns:
        (M, M') float64 matrix D; for Y None it is symmetric with a zero diagonal.
    """
    M = int(X.shape[0])
    M2 = M if Y is None else int(Y.shape[0])
    if len(X.shape) != 3:
        raise ValueError(f"X must have shape (models, samples, classes), got {tuple(X.shape)}")
    if Y is not None and len(Y.shape) != 3:
        raise ValueError(f"Y must have shape (models, samples, classes), got {tuple(Y.shape)}")
    D = np.zeros((M, M2), dtype=np.float64)
    blocks = iter_bhattacharyya_blocks(X, Y, block, dtype, eps, validate)
    with _progress(progress, _num_blocks(M, M2, block, Y is None), "Bhattacharyya blocks") as advance:
        for rows, cols, d in blocks:
            D[rows, cols] = d
            if Y is None:
                D[cols, rows] = d.T
            advance()
    return D


def _num_blocks(M: int, M2: int, block: int, symmetric: bool) -> int:
    nb, nb2 = -(-M // block), -(-M2 // block)
    return nb * (nb + 1) // 2 if symmetric else nb * nb2


# ----------------------------------------------------------------------------- Gaussian outputs
def gaussian_bhattacharyya_matrix(
    means: Any, variance: Any = 1.0, Y: Any = None, variance_y: Any = None
) -> np.ndarray:
    """Closed-form intensive Bhattacharyya distances between Gaussian predictions.

    Each model predicts N(μ[n], s²) independently per probe sample n and output k. For two
    Gaussians the distance is ¼(μ−μ')²/(s²+s'²) + ½ log((s²+s'²)/(2 s s')); with a common fixed
    variance σ² this is (μ−μ')²/(8σ²), so D = ‖f − f'‖² / (8 σ² N).

    Args:
        means: (M, N) or (M, N, K) predicted means of M models on N probe samples.
        variance: σ², a scalar shared by all models, or (M,) one per model.
        Y: (M', N[, K]) means of other models on the same probe set, or None.
        variance_y: variances of Y's models (default: ``variance`` when it is a scalar).

    Returns:
        (M, M') float64 matrix (symmetric with zero diagonal when Y is None).
    """
    X = _gaussian_means(means, "means")
    Z = X if Y is None else _gaussian_means(Y, "Y")
    if Z.shape[1:] != X.shape[1:]:
        raise ValueError(f"means have (samples, outputs) = {X.shape[1:]} but Y has {Z.shape[1:]}; "
                         "predictions must be on the same probe set")
    vx = np.broadcast_to(np.asarray(variance, dtype=np.float64), (X.shape[0],))
    if variance_y is None:
        if Y is not None and np.ndim(variance) != 0:
            raise ValueError("give variance_y for Y when variance is per model")
        variance_y = variance
    vz = np.broadcast_to(np.asarray(variance_y, dtype=np.float64), (Z.shape[0],))
    if np.any(vx <= 0) or np.any(vz <= 0) or not (np.all(np.isfinite(vx)) and np.all(np.isfinite(vz))):
        raise ValueError("variances must be positive and finite")
    N, K = X.shape[1], X.shape[2]
    A, B = X.reshape(len(X), -1), Z.reshape(len(Z), -1)
    sq = (np.sum(A**2, 1)[:, None] + np.sum(B**2, 1)[None, :] - 2.0 * A @ B.T)
    sq = np.maximum(sq, 0.0)
    vsum = vx[:, None] + vz[None, :]
    D = sq / (4.0 * vsum * N) + 0.5 * K * np.log(vsum / (2.0 * np.sqrt(vx[:, None] * vz[None, :])))
    if Y is None:
        D = 0.5 * (D + D.T)
        np.fill_diagonal(D, 0.0)
    return D


def _gaussian_means(means: Any, name: str) -> np.ndarray:
    X = np.asarray(means, dtype=np.float64)
    if X.ndim == 2:
        X = X[:, :, None]
    if X.ndim != 3:
        raise ValueError(f"{name} must have shape (models, samples) or (models, samples, outputs), "
                         f"got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} contains NaN/inf values; the run probably diverged")
    return X
