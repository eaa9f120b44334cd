"""Exact dynamic mode decomposition (DMD) over a *stack* of trajectories, with time delays.

A stack is an array ``(runs, steps, F)``: several trajectories of the same dynamical system
(training runs from different seeds or initial conditions) observed through the same F
observables. DMD fits one linear operator ``A`` with ``y_{t+1} ≈ A y_t`` to the snapshot
pairs of *every* run at once; a pair never joins the last snapshot of one run to the first
snapshot of the next (gluing runs end to end would invent a jump the dynamics never made).

With ``delays = n`` each snapshot is first replaced by the Hankel (time-delay) vector
``[x_t, x_{t+1}, ..., x_{t+n}]`` of dimension ``F (n + 1)``; delays let a few observables
carry enough information for the Koopman eigenvalues of a nonlinear system to show up.

Exact DMD (Tu et al. 2014, "On dynamic mode decomposition: theory and applications"):
with snapshot matrices ``X, Y: (D, m)`` (columns are pairs), thin SVD ``X = U Σ Vᵀ`` truncated
to rank r, the reduced operator is ``Ã = U_rᵀ Y V_r Σ_r⁻¹: (r, r)``; its eigenvalues are the
DMD eigenvalues and the exact modes are ``Φ = Y V_r Σ_r⁻¹ W`` where ``Ã W = W Λ``.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import scipy.linalg

ArrayLike = Any


def as_stack(trajectories: ArrayLike, name: str = "trajectories", dtype: Any = np.float64) -> np.ndarray:
    """Bring trajectories into the ``(runs, steps, F)`` stack layout and validate them.

    Args:
        trajectories: a ``Trajectory``, an array ``(runs, steps, F)``, a single run ``(steps, F)``,
            or a sequence of ``(steps, F)`` arrays of equal length.
        name: how the input is called in error messages.
        dtype: floating dtype of the result (float64 by default: DMD eigenvalues near the unit
            circle need it).

    Returns:
        (runs, steps, F) array of ``dtype``.

    Raises:
        ValueError: for the wrong number of dimensions, runs of unequal length, or NaN/inf values
            (the message names the run and step of the first bad value).
    """
    feats = getattr(trajectories, "features", None)
    if feats is not None:
        trajectories = feats
    if isinstance(trajectories, (list, tuple)):
        runs = [np.asarray(r) for r in trajectories]
        if not runs:
            raise ValueError(f"{name} is empty; pass at least one (steps, features) run")
        if any(r.ndim != 2 for r in runs):
            shapes = [r.shape for r in runs]
            raise ValueError(f"each run in {name} must be a (steps, features) array, got shapes {shapes}")
        lengths = sorted({r.shape[0] for r in runs})
        if len(lengths) > 1:
            counts = [r.shape[0] for r in runs]
            raise ValueError(
                f"runs in {name} have unequal lengths {counts}; trim them to a common length "
                f"(e.g. run[:{lengths[0]}]) or record them with the same schedule"
            )
        widths = {r.shape[1] for r in runs}
        if len(widths) > 1:
            raise ValueError(f"runs in {name} have different numbers of features {sorted(widths)}")
        arr = np.stack(runs)
    else:
        arr = np.asarray(trajectories)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(
                f"{name} must have shape (runs, steps, features) or (steps, features), got {arr.shape}"
            )
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        run, step, feat = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN/inf values (first at run {run}, step {step}, "
            f"feature {feat}); the run probably diverged. Drop or truncate that run before fitting"
        )
    return arr


def delay_embed(stack: np.ndarray, delays: int) -> np.ndarray:
    """Time-delay (Hankel) embedding of every run.

    Args:
        stack: (runs, steps, F) trajectories.
        delays: number of delays n >= 0.

    Returns:
        (runs, steps - n, F (n + 1)) array whose row t of run i is
        ``[x_t, x_{t+1}, ..., x_{t+n}]`` (oldest first).

    Raises:
        ValueError: if fewer than two embedded snapshots would remain per run.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"stack must have shape (runs, steps, features), got {stack.shape}")
    n = int(delays)
    if n < 0:
        raise ValueError(f"delays must be >= 0, got {delays}")
    runs, steps, feats = stack.shape
    if steps - n < 2:
        raise ValueError(
            f"too few snapshots for {n} delays: each run has {steps} steps, and delay embedding "
            f"needs at least delays + 2 = {n + 2}; record more steps or use fewer delays"
        )
    blocks = [stack[:, d:steps - n + d, :] for d in range(n + 1)]
    return np.concatenate(blocks, axis=2)


def snapshot_pairs(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Snapshot pairs of every run, never crossing from one run into the next.

    Args:
        stack: (runs, steps, D) trajectories (already embedded).

    Returns:
        (X, Y), each (runs (steps - 1), D): row k of Y is the successor of row k of X.
    """
    runs, steps, dim = stack.shape
    x = stack[:, :-1, :].reshape(runs * (steps - 1), dim)
    y = stack[:, 1:, :].reshape(runs * (steps - 1), dim)
    return x, y


class DMD:
    """Exact DMD with optional rank truncation, fitted on a stack of trajectories.

    Hyper-parameters are set in ``__init__``; :meth:`fit` learns the attributes ending in ``_``
    (scikit-learn style).

    Args:
        rank: number r of singular directions kept (and of eigenvalues returned). None keeps
            every direction whose singular value exceeds ``tol * σ_max``.
        delays: number of time delays n (0: no embedding).
        tol: relative cutoff for the numerical rank (also caps an explicit ``rank``).
        dtype: floating dtype of the computation (float64 by default; float32 loses eigenvalues
            within ~1e-6 of each other or of the unit circle).

    Attributes (after ``fit``):
        eigenvalues_: (r,) complex DMD eigenvalues, sorted by decreasing modulus.
        modes_: (D, r) complex exact DMD modes (D = F (delays + 1)), column i for eigenvalue i.
        operator_: (r, r) reduced operator Ã in the POD basis.
        basis_: (D, r) POD basis U_r (left singular vectors of the snapshot matrix X).
        singular_values_: (min(D, m),) all singular values of X.
        rank_: r actually used.
        n_runs_, n_pairs_, n_features_in_, n_embedded_: runs, snapshot pairs m, F and D.
    """

    def __init__(self, rank: int | None = None, delays: int = 0, tol: float = 1e-10,
                 dtype: Any = np.float64) -> None:
        self.rank = rank
        self.delays = delays
        self.tol = tol
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"DMD(rank={self.rank}, delays={self.delays}, tol={self.tol})"

    # ------------------------------------------------------------------ fitting
    def _check_params(self) -> None:
        if self.rank is not None and (int(self.rank) != self.rank or self.rank < 1):
            raise ValueError(f"rank must be a positive integer or None, got {self.rank!r}")
        if int(self.delays) != self.delays or self.delays < 0:
            raise ValueError(f"delays must be an integer >= 0, got {self.delays!r}")

    def fit(self, trajectories: ArrayLike) -> "DMD":
        """Fit the operator to every snapshot pair of every run.

        Args:
            trajectories: (runs, steps, F) stack, a (steps, F) single run, a list of equal-length
                runs, or a ``Trajectory``.

        Returns:
            self.

        Raises:
            ValueError: for NaN/inf input, unequal run lengths, or too few snapshots for the
                requested delays or rank.
        """
        self._check_params()
        stack = as_stack(trajectories, dtype=self.dtype)
        runs, steps, feats = stack.shape
        emb = delay_embed(stack, int(self.delays))
        x, y = snapshot_pairs(emb)
        m, dim = x.shape
        max_rank = min(m, dim)
        if self.rank is not None and self.rank > max_rank:
            raise ValueError(
                f"rank={self.rank} is more than the {max_rank} directions the data can span: "
                f"{runs} run(s) x ({steps} steps - {self.delays} delays - 1) = {m} snapshot pairs "
                f"of dimension {dim}. Record more steps/runs, use fewer delays, or lower the rank"
            )
        # columns are snapshots: X = xᵀ (D, m) = U Σ Vᵀ
        u, s, vt = np.linalg.svd(x.T, full_matrices=False)
        if s[0] == 0:
            raise ValueError("the trajectories are all zero; DMD needs motion to fit")
        numerical = int(np.sum(s > self.tol * s[0]))
        r = numerical if self.rank is None else int(self.rank)
        if r > numerical:
            warnings.warn(
                f"rank={r} exceeds the numerical rank {numerical} of the snapshots (singular "
                f"values below {self.tol:g} x the largest); keeping {numerical} eigenvalues",
                stacklevel=2,
            )
            r = numerical
        ur, sr, vr = u[:, :r], s[:r], vt[:r].T
        yv = y.T @ vr / sr  # (D, r) = Y V_r Σ_r⁻¹
        atilde = ur.T @ yv
        lam, w = scipy.linalg.eig(atilde)
        order = np.lexsort((-lam.imag, -np.abs(lam)))
        lam, w = lam[order], w[:, order]
        self.eigenvalues_ = lam
        self.modes_ = yv @ w
        self.operator_ = atilde
        self.basis_ = ur
        self.singular_values_ = s
        self.rank_ = r
        self.n_runs_, self.n_pairs_, self.n_features_in_, self.n_embedded_ = runs, m, feats, dim
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "eigenvalues_"):
            raise RuntimeError("this DMD is not fitted yet; call fit(trajectories) first")

    def predict(self, states: np.ndarray) -> np.ndarray:
        """One step of the fitted linear model, in the (embedded) observable space.

        Args:
            states: (n, D) embedded snapshots (D = ``n_embedded_``).

        Returns:
            (n, D) predicted next snapshots ``U_r Ã U_rᵀ y``.
        """
        self._check_fitted()
        states = np.asarray(states, dtype=self.dtype)
        if states.ndim != 2 or states.shape[1] != self.n_embedded_:
            raise ValueError(f"states must have shape (n, {self.n_embedded_}), got {states.shape}")
        return ((states @ self.basis_) @ self.operator_.T) @ self.basis_.T

    def score(self, trajectories: ArrayLike) -> float:
        """Relative one-step residual ``‖Y − Ŷ‖_F / ‖Y‖_F`` on the pairs of ``trajectories``."""
        self._check_fitted()
        emb = delay_embed(as_stack(trajectories, dtype=self.dtype), int(self.delays))
        x, y = snapshot_pairs(emb)
        return float(np.linalg.norm(y - self.predict(x)) / np.linalg.norm(y))


def dmd_eigenvalues(trajectories: ArrayLike, rank: int | None = None, delays: int = 0) -> np.ndarray:
    """Shortcut: the (r,) DMD eigenvalues of one stack (see :class:`DMD`)."""
    return DMD(rank=rank, delays=delays).fit(trajectories).eigenvalues_


def per_run_eigenvalues(trajectories: ArrayLike, rank: int | None = None, delays: int = 0) -> list[np.ndarray]:
    """DMD eigenvalues of every run fitted on its own.

    Args:
        trajectories: (runs, steps, F) stack (or anything :func:`as_stack` accepts).

    Returns:
        A list of ``runs`` complex arrays, each (r,).
    """
    stack = as_stack(trajectories)
    return [DMD(rank=rank, delays=delays).fit(stack[i:i + 1]).eigenvalues_ for i in range(stack.shape[0])]


def group_eigenvalues(stacks: Sequence[ArrayLike], rank: int | None = None, delays: int = 0) -> list[np.ndarray]:
    """DMD eigenvalues of each stack in ``stacks`` (one spectrum per stack)."""
    return [DMD(rank=rank, delays=delays).fit(s).eigenvalues_ for s in stacks]
