"""Block Lanczos on the symmetric operator A = JᵀJ − I: extreme singular triplets of J.

The eigenvalues of A are λ_i = σ_i² − 1, so the top eigenvectors of A are the most chaotic right
singular vectors of J (σ > 1) and the bottom ones the most stable (σ < 1). A shift by −I leaves
the Krylov space unchanged; it only moves the Ritz values, so the same block Lanczos run serves
the chaotic end, the stable end, and the stochastic Lanczos quadrature of :mod:`slq`.

Algorithm: block Lanczos with full (two-pass) reorthogonalisation against every stored block,
started from a (b, P) block of Rademacher probe vectors. After m block steps the Krylov basis
Q (m·b, P) and the projected matrix T = Q A Qᵀ (m·b, m·b) give Ritz pairs (θ, y = Qᵀs); the
residual ‖A y − θ y‖ = ‖B_m s_last‖ (the norm of the next, never-multiplied block) is the
convergence diagnostic, computed without extra products.

Vectors are rows throughout: a block is (b, P), matching the (k, P) blocks of
:class:`~trainmap.jacobian.matrix_free.TrainingOperator`. The host-side linear algebra is NumPy
in float64 on the small projected problem; the basis is stored in the operator's dtype.

The state after every block step is an append-only list of blocks, which :mod:`scale` writes to
disk so that an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from trainmap.jacobian.matrix_free.basis import (
    BlockStore,
    HalfBlocks,
    MemoryBlocks,
    WindowBlocks,
    combine,
    project_out,
)

# apply(X: (b, P)) -> (A X: (b, P), side: (b, P) or None); ``side`` (J X) is kept for left vectors
BlockOperator = Callable[[np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]
#: how :func:`block_lanczos` keeps its basis in memory
IN_MEMORY_BASES = ("full", "half", "window")


def rademacher(num_probes: int, dim: int, seed: int, dtype: Any = np.float32) -> np.ndarray:
    """(num_probes, dim) random ±1 matrix from ``numpy.random.default_rng(seed)``."""
    if num_probes < 1 or dim < 1:
        raise ValueError(f"need num_probes >= 1 and dim >= 1, got {num_probes} and {dim}")
    rng = np.random.default_rng(seed)
    return (2.0 * rng.integers(0, 2, size=(num_probes, dim)) - 1.0).astype(dtype)


def _dead_tolerance(dtype: Any) -> float:
    """Rows whose norm after orthogonalisation is below this (relative) are an exhausted space."""
    return max(1e-10, 1e3 * float(np.finfo(dtype).eps))


def _orthonormalise(W: np.ndarray, basis: BlockStore, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthogonalise the rows of W (b, P) against every basis block, then QR.

    W is overwritten. All products are in W's dtype (the operator's), one per row group of the
    basis; :func:`~trainmap.jacobian.matrix_free.basis.project_out` says when a second sweep runs.

    Returns:
        (Q_next, R, coeff): Q_next (b, P) with orthonormal rows, R (b, b) upper triangular such
        that the orthogonalised block is W_perp = Rᵀ Q_next, and coeff (n, b) float64 = Q Wᵀ, the
        projection of the original W on the basis. Rows that vanish (an exhausted Krylov space)
        are replaced by fresh random orthogonal rows with a zero row in R, so the recurrence
        continues without fake coupling.
    """
    coeff = project_out(W, basis)
    Qt, R = np.linalg.qr(W.T)  # W.T (P, b) = Qt (P, b) R (b, b)
    Q = np.ascontiguousarray(Qt.T)
    R = R.astype(np.float64)
    scale = max(float(np.abs(R).max()) if R.size else 0.0, 1e-300)
    dead = np.abs(np.diag(R)) <= _dead_tolerance(W.dtype) * max(scale, 1.0)
    if dead.any():
        rng = np.random.default_rng(seed)
        for i in np.flatnonzero(dead):
            v = rng.standard_normal((1, W.shape[1])).astype(W.dtype)
            others = MemoryBlocks()
            others.append(np.delete(Q, i, axis=0))
            for store in (basis, others):
                project_out(v, store)
            Q[i] = v[0] / np.linalg.norm(v[0])
            R[i, :] = 0.0
    return Q, R, coeff


@dataclass
class BlockLanczosState:
    """The growing Krylov basis of a block Lanczos run (append-only; everything resumable).

    Attributes:
        probes: (b, P) starting block V0 (Rademacher rows).
        R0: (b, b) with V0ᵀ = Q0ᵀ R0, i.e. V0 = R0ᵀ Q0 (for quadrature weights).
        blocks: the (b, P) orthonormal blocks Q_j (operator dtype), in memory or on disk
            (:mod:`~trainmap.jacobian.matrix_free.basis`).
        side: the (b, P) blocks J Q_j (empty when the operator returns no side output).
        coeffs: coeffs[j] = [Q_0; …; Q_j] A Q_jᵀ of shape ((j+1)·b, b): column block j of T.
        next_block: (b, P) the next basis block Q_{m}, or None before the first step.
        next_R: (b, b) coupling B_m with residual block = B_mᵀ Q_m.
    """

    probes: np.ndarray
    R0: np.ndarray
    blocks: BlockStore = field(default_factory=MemoryBlocks)
    side: BlockStore = field(default_factory=MemoryBlocks)
    coeffs: list[np.ndarray] = field(default_factory=list)
    next_block: np.ndarray | None = None
    next_R: np.ndarray | None = None

    @property
    def block_size(self) -> int:
        return int(self.probes.shape[0])

    @property
    def dtype(self) -> np.dtype:
        """The basis dtype (that of the next block; float64 for a state without one)."""
        return np.dtype(self.next_block.dtype if self.next_block is not None else np.float64)

    @property
    def steps(self) -> int:
        """Number of finished block steps m (operator applications to a block)."""
        return len(self.coeffs)

    @classmethod
    def start(cls, probes: np.ndarray, dtype: Any = None, blocks: BlockStore | None = None,
              side: BlockStore | None = None) -> "BlockLanczosState":
        """Begin from a (b, P) block of probes (orthonormalised by QR, in float64).

        Args:
            probes: (b, P) starting block.
            dtype: dtype of the basis (default: the probes').
            blocks, side: where to keep Q_j and J Q_j (default: in memory).
        """
        probes = np.asarray(probes)
        if probes.ndim != 2 or probes.shape[0] > probes.shape[1]:
            raise ValueError(f"probes must be (b, P) with b <= P, got {probes.shape}")
        Q0, R0, _ = _orthonormalise(probes.astype(np.float64), MemoryBlocks(), seed=0)
        return cls(probes, R0, blocks=blocks if blocks is not None else MemoryBlocks(),
                   side=side if side is not None else MemoryBlocks(),
                   next_block=Q0.astype(dtype or probes.dtype), next_R=None)

    def projected(self) -> np.ndarray:
        """T (m·b, m·b): the symmetrised projection Q A Qᵀ on the first m blocks (float64)."""
        b, m = self.block_size, self.steps
        T = np.zeros((m * b, m * b))
        for j, c in enumerate(self.coeffs):
            T[: (j + 1) * b, j * b:(j + 1) * b] = c  # blocks above and on the diagonal
            T[j * b:(j + 1) * b, : j * b] = c[: j * b].T  # their mirror below
        return 0.5 * (T + T.T)


def block_lanczos_step(state: BlockLanczosState, apply: BlockOperator, seed: int = 0) -> BlockLanczosState:
    """One block step: multiply the next block by A, reorthogonalise, append (in place).

    Args:
        state: the run so far (``state.next_block`` is multiplied).
        apply: ``apply(X (b, P)) -> (A X (b, P), J X (b, P) or None)``.
        seed: seed for replacement vectors if the Krylov space is exhausted.
    """
    Qj = state.next_block
    assert Qj is not None
    AQ, side = apply(Qj)
    AQ = np.array(AQ, dtype=Qj.dtype)  # a writable copy in the basis dtype
    finite = np.isfinite(AQ).all(axis=1)
    if not finite.all():
        jx = "" if side is None or not np.isfinite(np.asarray(side)[~finite]).all() else \
            " (J·v itself was finite: the float32 reverse pass broke down; one process recomputes such a " \
            "block in float64, several processes do not)"
        raise FloatingPointError(f"JᵀJ·v is NaN/inf for {int((~finite).sum())} of {finite.size} vectors{jx}; "
                                 "the training run is not differentiable here in this precision (diverged?): "
                                 "lower the learning rate, or use --dtype float64")
    state.blocks.append(Qj)
    # block i of coeff is Q_i A Q_jᵀ (b, b): the full column of T, not just the tridiagonal part
    Qn, R, coeff = _orthonormalise(AQ, state.blocks, seed=seed + 7919 * (state.steps + 1))
    if side is not None:
        state.side.append(np.asarray(side, dtype=Qj.dtype))
    state.coeffs.append(coeff)
    state.next_block = Qn
    state.next_R = R
    return state


@dataclass
class RitzPairs:
    """Ritz values and vectors of A = JᵀJ − I from a block Lanczos run, sorted descending.

    Attributes:
        values: (n,) Ritz values θ (estimates of σ² − 1), descending.
        coords: (m·b, n) eigenvectors s of the projected matrix T (columns).
        residuals: (n,) ‖A y − θ y‖ for the Ritz vector y = Qᵀ s.
    """

    values: np.ndarray
    coords: np.ndarray
    residuals: np.ndarray

    @property
    def sigma(self) -> np.ndarray:
        """(n,) estimated singular values sqrt(max(θ + 1, 0))."""
        return np.sqrt(np.maximum(self.values + 1.0, 0.0))


def ritz(state: BlockLanczosState, shift: float = -1.0) -> RitzPairs:
    """All Ritz pairs of the shifted operator A = JᵀJ + shift·I from the run so far.

    The operator applied during the run is JᵀJ (unshifted); the shift is added here.
    """
    T = state.projected()
    theta, S = np.linalg.eigh(T)
    order = np.argsort(theta)[::-1]
    theta, S = theta[order], S[:, order]
    b = state.block_size
    last = S[-b:, :]
    R = state.next_R if state.next_R is not None else np.zeros((b, b))
    res = np.linalg.norm(R.T @ last, axis=0)
    return RitzPairs(theta + shift, S, res)


def orthogonality_loss(state: BlockLanczosState) -> float:
    """Paige's first-order estimate of the basis's loss of orthogonality, max |q_iᵀ q_j| (i ≠ j).

    For a run that orthogonalises each block against its neighbours only
    (:class:`~trainmap.jacobian.matrix_free.basis.WindowBlocks`), rounding errors are amplified
    along the Ritz vectors that have converged: the next block's component along the Ritz vector
    y_i is about ε‖A‖ / r_i (Paige 1980; r_i = ‖A y_i − θ_i y_i‖, ε the basis dtype's machine
    epsilon, ‖A‖ ≈ the largest Ritz value). The estimate is the largest of these, clipped to
    [ε, 1]; 1 means some Ritz value has converged to working precision and the basis has lost
    orthogonality along it (its copies then reappear as repeated Ritz values, while Gauss
    quadrature stays a quadrature of the same spectral measure). A fully reorthogonalised run
    stays near ε whatever this says.
    """
    if not state.steps:
        return 0.0
    pairs = ritz(state, shift=0.0)
    eps = float(np.finfo(state.dtype).eps)
    norm = float(np.abs(pairs.values).max())
    est = eps * norm / np.maximum(pairs.residuals, 1e-300)
    return float(np.clip(est.max(), eps, 1.0))


def ritz_vectors(state: BlockLanczosState, coords: np.ndarray, side: bool = False) -> np.ndarray:
    """Rows Y = sᵀ Q (n, P), in the basis dtype, for coordinate columns ``coords`` (m·b, n); J Q instead if ``side``."""
    blocks = state.side if side else state.blocks
    if side and len(blocks) != state.steps:
        raise ValueError("this run did not keep J Q (side=False in the operator); left vectors unavailable")
    return combine(coords, blocks, blocks[0].dtype)


@dataclass
class ExtremeTriplets:
    """Extreme singular triplets of J from block Lanczos on JᵀJ − I.

    Attributes:
        sigma: (k,) singular values (descending for ``top``, ascending for ``bottom``).
        V: (k, P) right singular vectors v_i as rows (directions in θ₀ space).
        U: (k, P) left singular vectors u_i = J v_i / σ_i as rows, or None.
        residuals: (k,) ‖JᵀJ v − σ² v‖ per pair.
        rel_residuals: (k,) residual / max(σ², 1).
        repeats: Ritz values skipped as repeats of a reported one (``distinct``; else 0).
    """

    sigma: np.ndarray
    V: np.ndarray
    U: np.ndarray | None
    residuals: np.ndarray
    rel_residuals: np.ndarray
    repeats: int = 0


def _distinct(values: np.ndarray, residuals: np.ndarray, order: np.ndarray, floor: float) -> np.ndarray:
    """The indices in ``order`` whose Ritz value does not repeat an earlier kept one:
    |θ_i − θ_j| ≤ r_i + r_j + floor (the residual intervals overlap, widened by the attainable
    accuracy ``floor``), as the copies of a converged Ritz value that a run without global
    reorthogonalisation produces."""
    kept: list[int] = []
    for i in order:
        if not any(abs(values[i] - values[j]) <= residuals[i] + residuals[j] + floor for j in kept):
            kept.append(int(i))
    return np.asarray(kept, dtype=int)


def extreme_triplets(state: BlockLanczosState, k: int, end: str = "top",
                     vectors: bool = True, distinct: bool = False) -> ExtremeTriplets:
    """The k largest (``end="top"``) or smallest (``"bottom"``) singular triplets found so far.

    Args:
        state: a block Lanczos run on JᵀJ.
        k: number of triplets (at most m·b).
        end: "top" (chaotic end) or "bottom" (stable end).
        vectors: also form V (and U when the run kept J Q).
        distinct: skip Ritz values that repeat a larger reported one within their residuals
            (for a run without a stored basis, whose converged Ritz values come back as copies;
            a genuinely repeated σ is then reported once). Values closer than the basis dtype's
            attainable accuracy, 10·ε·‖A‖, count as repeats too. The number skipped is ``repeats``.
    """
    if end not in ("top", "bottom"):
        raise ValueError(f"end must be 'top' or 'bottom', got {end!r}")
    pairs = ritz(state)
    n = pairs.values.size
    if k > n:
        raise ValueError(f"asked for {k} triplets but the Krylov space has dimension {n}; "
                         "run more steps or use a larger block")
    order = np.arange(n) if end == "top" else np.arange(n - 1, -1, -1)
    if distinct:
        eps = float(np.finfo(state.dtype).eps)
        floor = 10.0 * eps * float(np.abs(pairs.values + 1.0).max())
        idx = _distinct(pairs.values, pairs.residuals, order, floor)
    else:
        idx = order
    if idx.size < k:
        raise ValueError(f"asked for {k} distinct triplets but the run has {idx.size}; run more steps")
    repeats = int(np.flatnonzero(order == idx[k - 1])[0]) + 1 - k  # skipped before the k-th kept
    idx = idx[:k]
    sigma = pairs.sigma[idx]
    res = pairs.residuals[idx]
    lam = pairs.values[idx] + 1.0
    V = U = None
    if vectors:
        V = ritz_vectors(state, pairs.coords[:, idx])
        if state.side:
            U = ritz_vectors(state, pairs.coords[:, idx], side=True) / np.maximum(sigma, 1e-30)[:, None]
    return ExtremeTriplets(sigma, V if V is not None else np.zeros((0, 0)), U, res,
                           res / np.maximum(np.abs(lam), 1.0), repeats)


def verified(t: ExtremeTriplets, apply: BlockOperator, block: int) -> ExtremeTriplets:
    """The triplets with their residuals measured by products, and U = J V / σ from the same products.

    For a basis stored inexactly (:class:`~trainmap.jacobian.matrix_free.basis.HalfBlocks`) the
    Ritz vectors V = sᵀQ carry the rounding of the stored blocks, which the projected problem's
    residual ‖B_m s_last‖ does not see. This multiplies the normalised rows of V by JᵀJ (in row
    blocks of ``block``, ⌈k / block⌉ operator calls) and reports ‖JᵀJ v − σ² v‖ of the vectors as
    returned; the left vectors come from the same call's J v.

    Args:
        t: triplets with V (k, P); σ is kept (the projected problem's value is the accurate one).
        apply: ``X (b, P) -> (JᵀJ X, J X or None)``.
        block: rows per operator call (the operator's block size).
    """
    V = t.V / np.linalg.norm(t.V, axis=1, keepdims=True).astype(t.V.dtype)
    res = np.zeros(V.shape[0])
    U: list[np.ndarray] = []
    lam = t.sigma.astype(np.float64) ** 2
    for i in range(0, V.shape[0], block):
        X = V[i:i + block]
        pad = block - X.shape[0]  # the compiled operator takes whole blocks
        Xp = np.concatenate([X, np.zeros((pad, X.shape[1]), X.dtype)]) if pad else X
        AX, JX = apply(Xp)
        AX = np.asarray(AX, dtype=np.float64)[: X.shape[0]]
        res[i:i + X.shape[0]] = np.linalg.norm(AX - lam[i:i + X.shape[0], None] * X, axis=1)
        if JX is not None:
            U.append(np.asarray(JX)[: X.shape[0]] / np.maximum(t.sigma[i:i + X.shape[0], None], 1e-30))
    Ua = np.concatenate(U).astype(V.dtype) if U else None
    return ExtremeTriplets(t.sigma, V, Ua, res, res / np.maximum(lam, 1.0), t.repeats)


def without_side(apply: BlockOperator) -> BlockOperator:
    """``apply`` with its side output (J X) dropped, for a run that keeps no left vectors."""
    return lambda X: (apply(X)[0], None)


def block_lanczos(apply: BlockOperator, probes: np.ndarray, steps: int, seed: int = 0,
                  progress: Callable[[], None] | None = None, basis: str = "full") -> BlockLanczosState:
    """Run ``steps`` block steps from ``probes`` (b, P) in memory (see :mod:`scale` for checkpoints).

    Args:
        apply: ``apply(X (b, P)) -> (JᵀJ X, J X or None)``.
        probes: (b, P) starting block.
        steps: number of block steps m (m·b ≤ P).
        seed: seed of replacement vectors for an exhausted Krylov space.
        progress: called once per finished step.
        basis: how the Krylov basis is kept (:data:`IN_MEMORY_BASES`): ``"full"`` (every block,
            and J Q when ``apply`` returns it), ``"half"`` (the last two blocks exactly, older ones
            in float16, no J Q: :class:`~trainmap.jacobian.matrix_free.basis.HalfBlocks`), or
            ``"window"`` (the last two blocks only, orthogonalising each new block against them
            alone: :class:`~trainmap.jacobian.matrix_free.basis.WindowBlocks`; see
            :func:`orthogonality_loss`). The projected matrix and the quadrature remain in all three.

    Returns:
        The :class:`BlockLanczosState`.
    """
    b, P = probes.shape
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps * b > P:
        raise ValueError(f"steps·block = {steps * b} exceeds the dimension P = {P}; use fewer steps")
    stores = {"full": None, "half": HalfBlocks(2, capacity_blocks=steps), "window": WindowBlocks(2)}
    if basis not in stores:
        raise ValueError(f"basis must be one of {IN_MEMORY_BASES}, got {basis!r}")
    state = BlockLanczosState.start(probes, blocks=stores[basis])
    step_apply = apply if basis == "full" else without_side(apply)
    for _ in range(steps):
        block_lanczos_step(state, step_apply, seed)
        if progress is not None:
            progress()
    return state


def dense_operator(M: np.ndarray) -> BlockOperator:
    """A block operator for a dense J (P, P): X -> (X JᵀJ rows, X Jᵀ rows), for tests and checks."""
    M = np.asarray(M)

    def apply(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        JX = X @ M.T  # rows (J x)ᵀ
        return JX @ M, JX

    return apply
