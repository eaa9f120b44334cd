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
from typing import Any

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
    if 0 in arr.shape:
        raise ValueError(f"{name} is empty (shape {arr.shape}); it needs at least one run, two steps "
                         "and one feature")
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


class DMDBase:
    """The shape every DMD variant shares (after PyDMD's ``DMDBase``, for stacks of runs).

    :meth:`fit` validates the trajectories, :meth:`embed`s each run (identity here; delays in
    :class:`HankelDMD`), forms the snapshot pairs of every run without crossing runs, and hands
    them to :meth:`_fit_pairs`, which a variant implements. Hyper-parameters are set in
    ``__init__``; learned attributes end in ``_`` (scikit-learn style).

    Attributes (after ``fit``):
        eigenvalues_: (r,) complex DMD eigenvalues, sorted by decreasing modulus.
        modes_: (D, r) complex DMD modes, column i for eigenvalue i.
        operator_: (r, r) reduced operator Ã in the basis ``basis_``.
        basis_: (D, r) the reduced basis (POD basis U_r for exact DMD).
        singular_values_: singular values of the snapshot matrix X.
        rank_: r actually used.
        n_runs_, n_pairs_, n_features_in_, n_embedded_: runs, snapshot pairs m, F and D.
    """

    dtype: Any = np.float64

    def embed(self, stack: np.ndarray) -> np.ndarray:
        """The observables a variant fits: (runs, steps, F) -> (runs, steps', D)."""
        return stack

    def _fit_pairs(self, x: np.ndarray, y: np.ndarray, context: str) -> None:
        """Learn the fitted attributes from snapshot pairs x, y: (m, D) (``context`` describes
        where the m pairs come from, for error messages)."""
        raise NotImplementedError

    def fit(self, trajectories: ArrayLike) -> "DMDBase":
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
        x, y = snapshot_pairs(self.embed(stack))
        context = (f"{runs} run(s) x ({steps} steps - {getattr(self, 'delays', 0)} delays - 1) = "
                   f"{x.shape[0]} snapshot pairs of dimension {x.shape[1]}")
        self._fit_pairs(x, y, context)
        self.n_runs_, self.n_pairs_, self.n_features_in_, self.n_embedded_ = runs, x.shape[0], feats, x.shape[1]
        return self

    def _check_params(self) -> None:
        pass

    def _check_fitted(self) -> None:
        if not hasattr(self, "eigenvalues_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit(trajectories) first")

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
        x, y = snapshot_pairs(self.embed(as_stack(trajectories, dtype=self.dtype)))
        return float(np.linalg.norm(y - self.predict(x)) / np.linalg.norm(y))


class ExactDMD(DMDBase):
    """Exact DMD (Tu et al. 2014) with optional rank truncation.

    Args:
        rank: number r of singular directions kept (and of eigenvalues returned). None keeps
            every direction whose singular value exceeds ``tol * σ_max``.
        tol: relative cutoff for the numerical rank (also caps an explicit ``rank``).
        dtype: floating dtype of the computation (float64 by default; float32 loses eigenvalues
            within ~1e-6 of each other or of the unit circle).
    """

    def __init__(self, rank: int | None = None, tol: float = 1e-10, dtype: Any = np.float64) -> None:
        self.rank = rank
        self.tol = tol
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"ExactDMD(rank={self.rank}, tol={self.tol})"

    def _check_params(self) -> None:
        if self.rank is not None and (int(self.rank) != self.rank or self.rank < 1):
            raise ValueError(f"rank must be a positive integer or None, got {self.rank!r}")

    def _fit_pairs(self, x: np.ndarray, y: np.ndarray, context: str) -> None:
        m, dim = x.shape
        max_rank = min(m, dim)
        if self.rank is not None and self.rank > max_rank:
            raise ValueError(
                f"rank={self.rank} is more than the {max_rank} directions the data can span: "
                f"{context}. Record more steps/runs, use fewer delays, or lower the rank"
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
                stacklevel=3,
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


class HankelDMD(DMDBase):
    """Time delays as a wrapper: any DMD variant fitted on Hankel vectors.

    Each snapshot is replaced by ``[x_t, x_{t+1}, ..., x_{t+n}]`` (:func:`delay_embed`) before
    the wrapped variant sees the pairs; the fitted attributes are the wrapped variant's.

    Args:
        dmd: the variant to wrap (e.g. :class:`ExactDMD`).
        delays: number of time delays n >= 0.
    """

    def __init__(self, dmd: DMDBase, delays: int = 0) -> None:
        self.dmd = dmd
        self.delays = delays

    @property
    def dtype(self) -> Any:  # type: ignore[override]
        return self.dmd.dtype

    def _check_params(self) -> None:
        if int(self.delays) != self.delays or self.delays < 0:
            raise ValueError(f"delays must be an integer >= 0, got {self.delays!r}")
        self.dmd._check_params()

    def embed(self, stack: np.ndarray) -> np.ndarray:
        return self.dmd.embed(delay_embed(stack, int(self.delays)))

    def _fit_pairs(self, x: np.ndarray, y: np.ndarray, context: str) -> None:
        self.dmd._fit_pairs(x, y, context)
        for name in ("eigenvalues_", "modes_", "operator_", "basis_", "singular_values_", "rank_"):
            setattr(self, name, getattr(self.dmd, name))


class DMD(HankelDMD):
    """Exact DMD with optional rank truncation and time delays, fitted on a stack of runs:
    ``HankelDMD(ExactDMD(rank, tol, dtype), delays)`` with flat hyper-parameters.

    Args:
        rank: number r of singular directions kept (and of eigenvalues returned). None keeps
            every direction whose singular value exceeds ``tol * σ_max``.
        delays: number of time delays n (0: no embedding).
        tol: relative cutoff for the numerical rank (also caps an explicit ``rank``).
        dtype: floating dtype of the computation (float64 by default; float32 loses eigenvalues
            within ~1e-6 of each other or of the unit circle).

    Attributes (after ``fit``): see :class:`DMDBase`; ``modes_`` are the exact DMD modes
    (D = F (delays + 1)).
    """

    def __init__(self, rank: int | None = None, delays: int = 0, tol: float = 1e-10,
                 dtype: Any = np.float64) -> None:
        self.rank = rank
        self.tol = tol
        super().__init__(ExactDMD(rank, tol, dtype), delays)
        self._dtype = dtype

    @property
    def dtype(self) -> Any:  # type: ignore[override]
        return self._dtype

    def __repr__(self) -> str:
        return f"DMD(rank={self.rank}, delays={self.delays}, tol={self.tol})"

    def _check_params(self) -> None:
        self.dmd = ExactDMD(self.rank, self.tol, self._dtype)  # hyper-parameters may be set after init
        super()._check_params()


def per_run_eigenvalues(trajectories: ArrayLike, rank: int | None = None, delays: int = 0) -> list[np.ndarray]:
    """DMD eigenvalues of every run fitted on its own.

    Args:
        trajectories: (runs, steps, F) stack (or anything :func:`as_stack` accepts).

    Returns:
        A list of ``runs`` complex arrays, each (r,).
    """
    stack = as_stack(trajectories)
    return [DMD(rank=rank, delays=delays).fit(stack[i:i + 1]).eigenvalues_ for i in range(stack.shape[0])]
