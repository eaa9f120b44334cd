"""Intensive PCA (InPCA; Quinn et al., PNAS 2019): classical MDS of a Bhattacharyya matrix.

The Bhattacharyya matrix D plays the role of the *squared* distance (it is not squared again).
With the centring matrix C = I − 11ᵀ/n,

    W = −½ · C · D · C,       W = U Λ Uᵀ,

eigenpairs sorted by |λ|, and the embedding coordinates are x_ik = √|λ_k| · U_ik. D is not a
Euclidean squared distance in general, so some λ are negative: those are *time-like*
directions, reported (never dropped), and distances in the embedding use the Minkowski
signature Σ_k sign(λ_k)(x_ik − x_jk)². With all components kept this reproduces D exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainmap._progress import progress as _progress
from trainmap.ribbon.distances import EPS, _num_blocks, iter_bhattacharyya_blocks


def double_center(D: np.ndarray, out: np.ndarray | None = None, block: int = 2048) -> tuple[np.ndarray, np.ndarray, float]:
    """W = −½ C D C, computed in row blocks (in place when ``out is D``).

    Args:
        D: (n, n) symmetric matrix of squared distances.
        out: where to write W (default a new array; may be D itself).
        block: rows per block.

    Returns:
        (W (n, n), row means of D (n,), grand mean of D).
    """
    D = np.asarray(D)
    n = D.shape[0]
    row_means = D.mean(axis=1, dtype=np.float64)
    grand = float(row_means.mean())
    W = np.empty_like(D, dtype=np.float64) if out is None else out
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        W[i0:i1] = -0.5 * (D[i0:i1] - row_means[i0:i1, None] - row_means[None, :] + grand)
    return W, row_means, grand


def _check_square(D: Any, name: str = "D") -> np.ndarray:
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise ValueError(f"{name} must be a square (n, n) distance matrix, got shape {D.shape}")
    if not np.all(np.isfinite(D)):
        raise ValueError(f"{name} contains NaN/inf values; check the predictions it came from")
    if not np.allclose(D, D.T, rtol=1e-8, atol=1e-12 * max(1.0, float(np.abs(D).max(initial=0.0)))):
        raise ValueError(f"{name} is not symmetric; pass a pairwise distance matrix (D[i, j] == D[j, i])")
    return D


def _top_eigenpairs(W: np.ndarray, k: int, solver: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The k eigenpairs of symmetric W with the largest |λ|, sorted by |λ| (descending)."""
    n = W.shape[0]
    if solver == "auto":
        solver = "dense" if n <= 3000 or k >= n // 2 else "partial"
    if solver == "dense" or k >= n - 1:
        vals, vecs = np.linalg.eigh(W)
    elif solver == "partial":
        from scipy.sparse.linalg import eigsh

        v0 = np.random.default_rng(seed).standard_normal(n)
        vals, vecs = eigsh(W, k=k, which="LM", v0=v0, tol=1e-10)
    else:
        raise ValueError(f"unknown solver {solver!r}; use 'auto', 'dense' or 'partial'")
    order = np.argsort(-np.abs(vals), kind="stable")[:k]
    vecs = vecs[:, order]
    # a deterministic sign: the largest-|.| entry of each eigenvector is positive
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    return vals[order], vecs * signs


class InPCA:
    """Intensive PCA of prediction trajectories, scikit-learn style.

    Args:
        n_components: number of components kept (largest |λ|).
        solver: ``"dense"`` (full ``eigh``), ``"partial"`` (Lanczos on W for the top |λ|; W is
            built block by block and no more than one block of D is held beside it), or
            ``"auto"`` (dense up to 3,000 points).
        block: models per Bhattacharyya block.
        dtype: product precision of the Bhattacharyya blocks (float32 or float64).
        eps: probability clipping.
        progress: show progress bars.
        random_state: seed of the Lanczos start vector.

    Attributes (after ``fit``):
        eigenvalues_: (k,) eigenvalues of W sorted by |λ| (negative = time-like).
        signature_: (k,) sign of each eigenvalue (+1 / −1).
        eigenvectors_: (n, k) unit eigenvectors U.
        embedding_: (n, k) coordinates √|λ| · U.
        total_stress_: ‖W‖_F² = Σ_i λ_i² over the full spectrum.
        explained_stress_: (k,) χ_j = 1 − √(1 − Σ_{i≤j} λ_i² / ‖W‖_F²).
        row_means_: (n,) row means of D (for ``transform``).
        grand_mean_: mean of D.
        n_samples_: n, the number of embedded points.
    """

    def __init__(self, n_components: int = 10, solver: str = "auto", block: int = 256,
                 dtype: Any = np.float32, eps: float = EPS, progress: bool = False,
                 random_state: int = 0) -> None:
        self.n_components = n_components
        self.solver = solver
        self.block = block
        self.dtype = dtype
        self.eps = eps
        self.progress = progress
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any = None) -> "InPCA":
        """Embed predictions.

        Args:
            X: (n, N, C) class probabilities of n models (checkpoints) on N probe samples, a
                :class:`~trainmap.record.store.PredictionTrajectory` (its runs × steps are
                flattened run-major), or a zarr array (read block by block).
            y: ignored.

        Returns:
            self.
        """
        X = _as_points(X)
        n = int(X.shape[0])
        W = np.zeros((n, n), dtype=np.float64)  # holds D first, then W in place
        blocks = iter_bhattacharyya_blocks(X, None, self.block, self.dtype, self.eps)
        with _progress(self.progress, _num_blocks(n, n, self.block, True), "InPCA distances") as adv:
            for rows, cols, d in blocks:
                W[rows, cols] = d
                W[cols, rows] = d.T
                adv()
        self._X = X
        return self._fit_inplace(W)

    def fit_distances(self, D: Any) -> "InPCA":
        """Embed a precomputed (n, n) Bhattacharyya (squared-distance) matrix D."""
        D = _check_square(D)
        self._X = None
        return self._fit_inplace(D.copy())

    def _fit_inplace(self, D: np.ndarray) -> "InPCA":
        n = D.shape[0]
        if n < 2:
            raise ValueError(f"InPCA needs at least 2 points, got {n}")
        k = int(min(self.n_components, n))
        if k < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")
        W, self.row_means_, self.grand_mean_ = double_center(D, out=D)
        self.total_stress_ = float(np.einsum("ij,ij->", W, W))
        vals, vecs = _top_eigenpairs(W, k, self.solver, self.random_state)
        del W, D
        self.n_samples_ = n
        self.eigenvalues_ = vals
        self.signature_ = np.where(vals < 0, -1.0, 1.0)
        self.eigenvectors_ = vecs
        self.embedding_ = vecs * np.sqrt(np.abs(vals))
        from trainmap.ribbon.measures import explained_stress

        self.explained_stress_ = explained_stress(vals, self.total_stress_)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """``fit(X)`` and return ``embedding_`` (n, k)."""
        return self.fit(X).embedding_

    # ------------------------------------------------------------------ out of sample
    def transform(self, X_new: Any) -> np.ndarray:
        """Coordinates of new models (checkpoints, reference points) in the fitted embedding.

        Args:
            X_new: (m, N, C) probabilities on the same probe set as the fitted points.

        Returns:
            (m, k) coordinates by the classical-MDS out-of-sample formula.
        """
        self._check_fitted()
        if self._X is None:
            raise ValueError("this InPCA was fitted on distances; use transform_distances(D_new)")
        X_new = _as_points(X_new)
        D_new = np.zeros((X_new.shape[0], self.n_samples_))
        for rows, cols, d in iter_bhattacharyya_blocks(X_new, self._X, self.block, self.dtype, self.eps):
            D_new[rows, cols] = d
        return self.transform_distances(D_new)

    def transform_distances(self, D_new: Any) -> np.ndarray:
        """Out-of-sample coordinates from (m, n) distances of new points to the fitted points.

        The centred kernel column of a new point is b = −½(d − r − mean(d) + m̄) (r: row means
        of D, m̄: grand mean) and its coordinates are y_k = sign(λ_k) · bᵀu_k / √|λ_k|, which
        returns exactly ``embedding_`` for the fitted points.

        Returns:
            (m, k) coordinates.
        """
        self._check_fitted()
        D_new = np.atleast_2d(np.asarray(D_new, dtype=np.float64))
        if D_new.shape[1] != self.n_samples_:
            raise ValueError(f"D_new must have {self.n_samples_} columns (one per fitted point), "
                             f"got shape {D_new.shape}")
        b = -0.5 * (D_new - self.row_means_[None, :] - D_new.mean(1, keepdims=True) + self.grand_mean_)
        lam = self.eigenvalues_
        scale = np.where(np.abs(lam) > 0, self.signature_ / np.sqrt(np.abs(lam) + (lam == 0)), 0.0)
        return (b @ self.eigenvectors_) * scale

    # ------------------------------------------------------------------ geometry
    def minkowski_distances(self, A: Any = None, B: Any = None) -> np.ndarray:
        """Squared distances with the Minkowski signature: Σ_k sign(λ_k)(a_k − b_k)².

        Args:
            A: (m, k) coordinates (default ``embedding_``).
            B: (m', k) coordinates (default A).

        Returns:
            (m, m') matrix; can be negative along time-like directions.
        """
        self._check_fitted()
        return minkowski_sq(self.embedding_ if A is None else A, B, self.signature_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "eigenvalues_"):
            raise RuntimeError("InPCA is not fitted yet; call fit(X) or fit_distances(D) first")


def minkowski_sq(A: Any, B: Any, signature: Any) -> np.ndarray:
    """Σ_k s_k (A_ik − B_jk)² for coordinates A: (m, k), B: (m', k) and signature s: (k,)."""
    A = np.asarray(A, dtype=np.float64)
    B = A if B is None else np.asarray(B, dtype=np.float64)
    s = np.asarray(signature, dtype=np.float64)[: A.shape[1]]
    diff = A[:, None, :] - B[None, :, :]
    return np.einsum("ijk,k->ij", diff**2, s)


def _as_points(X: Any) -> Any:
    """(n, N, C) points from an array or a PredictionTrajectory (runs × steps flattened)."""
    probs = getattr(X, "probs", None)
    if probs is not None:
        shape = tuple(probs.shape)
        if hasattr(probs, "reshape") and isinstance(probs, np.ndarray):
            return probs.reshape(shape[0] * shape[1], shape[2], shape[3])
        return _FlatRuns(probs)
    if len(getattr(X, "shape", ())) != 3:
        X = np.asarray(X)
        if X.ndim != 3:
            raise ValueError(f"expected (models, samples, classes) probabilities, got shape {X.shape}")
    if np.iscomplexobj(X) or (hasattr(X, "dtype") and np.issubdtype(np.dtype(X.dtype), np.complexfloating)):
        raise ValueError("X holds complex numbers; InPCA embeds real class probabilities: pass softmax outputs")
    return X


class _FlatRuns:
    """A lazy (runs*steps, N, C) row view of a (runs, steps, N, C) array (e.g. zarr)."""

    def __init__(self, arr: Any) -> None:
        self.arr = arr
        r, s, n, c = (int(v) for v in arr.shape)
        self.steps = s
        self.shape = (r * s, n, c)

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, _ = sl.indices(self.shape[0])
        rows = []
        i = start
        while i < stop:
            run, step = divmod(i, self.steps)
            take = min(self.steps - step, stop - i)
            rows.append(np.asarray(self.arr[run, step: step + take]))
            i += take
        return np.concatenate(rows) if rows else np.zeros((0, *self.shape[1:]))
