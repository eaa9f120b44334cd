"""Golub–Kahan (Lanczos) bidiagonalisation of J itself: extreme singular triplets from J v and Jᵀ u.

From a unit start vector v₁, k steps build orthonormal V = [v₁ … v_k] and U = [u₁ … u_k] with

    J V = U B,    Jᵀ U = V Bᵀ + β_k v_{k+1} e_kᵀ,

B (k, k) upper bidiagonal (α on the diagonal, β above it). The singular triplets (σ, p, q) of B
give Ritz triplets of J: σ, right vector V q, left vector U p; the residual of the right vector
‖JᵀJ (Vq) − σ² (Vq)‖ = σ β_k |p_k| needs no extra product, the same diagnostic that
:mod:`~trainmap.jacobian.matrix_free.lanczos` reports. One step costs one J·v and one Jᵀ·u, the
cost of one JᵀJ·v there, and spans the same Krylov space K(JᵀJ, v₁) as Lanczos on JᵀJ from v₁;
it never squares J's condition number, which matters for the smallest σ, not for the chaotic end.
Both bases are reorthogonalised in full (two passes) and held in memory.

``bench/golub_kahan.py`` measures this against block Lanczos on JᵀJ, in products and in time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from trainmap.jacobian.matrix_free.basis import MemoryBlocks, project_out

# matvec(v (P,)) -> J v (P,);  rmatvec(u (P,)) -> Jᵀ u (P,)
Vector = Callable[[np.ndarray], np.ndarray]


def _reorth(w: np.ndarray, basis: list[np.ndarray]) -> np.ndarray:
    """w (P,) with its components along the orthonormal ``basis`` vectors removed (the block
    Lanczos routine, :func:`~trainmap.jacobian.matrix_free.basis.project_out`, on one row)."""
    if not basis:
        return w
    store = MemoryBlocks(len(basis))
    for q in basis:
        store.append(q[None])
    W = np.array(w, dtype=np.float64)[None]
    project_out(W, store)
    return W[0]


@dataclass
class Bidiagonalisation:
    """The state of a Golub–Kahan run (append-only).

    Attributes:
        V: right basis vectors v₁ … v_{k+1} (P,) each.
        U: left basis vectors u₁ … u_k.
        alpha: (k,) diagonal of B; beta: (k,) β_j (β_k couples to v_{k+1}).
    """

    V: list[np.ndarray] = field(default_factory=list)
    U: list[np.ndarray] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def B(self) -> np.ndarray:
        """(k, k) upper bidiagonal matrix."""
        k = self.steps
        return np.diag(self.alpha) + np.diag(self.beta[: k - 1], 1) if k else np.zeros((0, 0))


def golub_kahan(matvec: Vector, rmatvec: Vector, v0: np.ndarray, steps: int,
                progress: Callable[[], None] | None = None,
                state: Bidiagonalisation | None = None) -> Bidiagonalisation:
    """Run (or continue) ``steps`` Golub–Kahan steps from ``v0`` (P,).

    Args:
        matvec, rmatvec: J v and Jᵀ u on (P,) vectors.
        v0: start vector (normalised here).
        steps: steps to add.
        progress: called after every step.
        state: a previous run to extend (``v0`` is then ignored).
    """
    st = state if state is not None else Bidiagonalisation()
    if not st.V:
        v = np.asarray(v0, dtype=np.float64)
        st.V.append(v / np.linalg.norm(v))
    for _ in range(steps):
        v = st.V[-1]
        p = np.asarray(matvec(v), dtype=np.float64)
        if st.U:
            p = p - st.beta[-1] * st.U[-1]
        p = _reorth(p, st.U)
        a = float(np.linalg.norm(p))
        st.U.append(p / max(a, 1e-300))
        st.alpha.append(a)
        w = np.asarray(rmatvec(st.U[-1]), dtype=np.float64) - a * v
        w = _reorth(w, st.V)
        b = float(np.linalg.norm(w))
        st.V.append(w / max(b, 1e-300))
        st.beta.append(b)
        if progress is not None:
            progress()
    return st


@dataclass
class GKTriplets:
    """The k largest Ritz triplets of a bidiagonalisation (σ descending).

    Attributes:
        sigma: (k,); V, U: (k, P) right and left vectors as rows (or None);
        residuals: (k,) ‖JᵀJ v − σ² v‖; rel_residuals: residuals / max(σ², 1).
    """

    sigma: np.ndarray
    V: np.ndarray | None
    U: np.ndarray | None
    residuals: np.ndarray
    rel_residuals: np.ndarray


def gk_triplets(state: Bidiagonalisation, k: int, vectors: bool = False) -> GKTriplets:
    """The top-k Ritz triplets of J from ``state`` with their residual norms (no extra products)."""
    if not 1 <= k <= state.steps:
        raise ValueError(f"asked for {k} triplets from {state.steps} Golub–Kahan steps")
    Pm, s, Qt = np.linalg.svd(state.B())
    res = s[:k] * abs(state.beta[-1]) * np.abs(Pm[-1, :k])
    V = U = None
    if vectors:
        V = Qt[:k] @ np.stack(state.V[: state.steps])
        U = Pm[:, :k].T @ np.stack(state.U)
    return GKTriplets(s[:k], V, U, res, res / np.maximum(s[:k] ** 2, 1.0))


def dense_vectors(M: Any) -> tuple[Vector, Vector]:
    """(matvec, rmatvec) of a dense J (P, P), for tests and the benchmark's dense check."""
    M = np.asarray(M)
    return (lambda v: M @ v), (lambda u: M.T @ u)
