"""Distances between Koopman spectra: 1-Wasserstein distance between eigenvalue sets in ℂ.

Two spectra ``a: (n,)`` and ``b: (m,)`` are read as discrete measures on the complex plane
(uniform weights unless given). Their 1-Wasserstein distance is the cheapest way to move one
measure onto the other when moving mass w from λ to μ costs ``w |λ − μ|``.

* Equal sizes with uniform weights: an optimal transport plan is a permutation (Birkhoff), so
  ``W₁ = min_π (1/n) Σ_i |a_i − b_π(i)|``, solved exactly by ``scipy.optimize.linear_sum_assignment``.
* Unequal sizes or weights: an exact transport solver (POT's ``ot.emd2``).

Ambiguities worth knowing (see docs/koopman.md): the eigenvalues of a real operator come in
complex-conjugate pairs, and an estimator's output order is arbitrary. Matching by position
after a sort (by modulus, by real part) is *not* the optimal matching and can overstate the
distance; the transport formulation is invariant to order. When a rank truncation cuts a
conjugate pair in half the spectra are no longer symmetric; ``fold_conjugates=True`` maps every
λ to ``Re λ + i |Im λ|`` so the distance ignores which member of a pair survived.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment


def _as_spectrum(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values).astype(np.complex128).ravel()
    if arr.size == 0:
        raise ValueError(f"spectrum {name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"spectrum {name} contains NaN/inf eigenvalues; refit DMD on finite data")
    return arr


def _weights(w: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(w, dtype=np.float64).ravel()
    if w.shape != (n,) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights {name} must be {n} non-negative numbers with a positive sum")
    return w / w.sum()


def fold(values: np.ndarray) -> np.ndarray:
    """Map each eigenvalue to the closed upper half plane: ``Re λ + i |Im λ|``."""
    values = np.asarray(values, dtype=np.complex128)
    return values.real + 1j * np.abs(values.imag)


def cost_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) matrix of distances ``|a_i − b_j|`` in the complex plane."""
    return np.abs(np.asarray(a)[:, None] - np.asarray(b)[None, :])


def optimal_matching(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Optimal one-to-one matching of two equal-size spectra.

    Returns:
        (perm, W): ``a[i]`` is matched to ``b[perm[i]]``; W is the mean matched distance.
    """
    a, b = _as_spectrum(a, "a"), _as_spectrum(b, "b")
    if a.size != b.size:
        raise ValueError(f"a matching needs spectra of equal size, got {a.size} and {b.size}")
    cost = cost_matrix(a, b)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(a.size, dtype=np.int64)
    perm[rows] = cols
    return perm, float(cost[rows, cols].mean())


def wasserstein(
    a: np.ndarray,
    b: np.ndarray,
    weights_a: np.ndarray | None = None,
    weights_b: np.ndarray | None = None,
    fold_conjugates: bool = False,
) -> float:
    """1-Wasserstein distance between two eigenvalue sets in the complex plane.

    Args:
        a: (n,) complex eigenvalues.
        b: (m,) complex eigenvalues.
        weights_a, weights_b: optional non-negative weights (normalised to sum 1); uniform if None.
        fold_conjugates: compare ``Re λ + i|Im λ|`` instead of λ (see the module docstring).

    Returns:
        W₁ ≥ 0 (0 iff the two weighted sets coincide).
    """
    a, b = _as_spectrum(a, "a"), _as_spectrum(b, "b")
    if fold_conjugates:
        a, b = fold(a), fold(b)
    if a.size == b.size and weights_a is None and weights_b is None:
        return optimal_matching(a, b)[1]
    import ot

    wa, wb = _weights(weights_a, a.size, "weights_a"), _weights(weights_b, b.size, "weights_b")
    return float(ot.emd2(wa, wb, cost_matrix(a, b)))


def distance_matrix(spectra: Sequence[np.ndarray], fold_conjugates: bool = False) -> np.ndarray:
    """Pairwise W₁ distances between spectra.

    Args:
        spectra: n complex arrays (sizes may differ).

    Returns:
        (n, n) symmetric matrix with zero diagonal.
    """
    n = len(spectra)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            d[i, j] = d[j, i] = wasserstein(spectra[i], spectra[j], fold_conjugates=fold_conjugates)
    return d


def sorted_pairing_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean ``|a_i − b_i|`` after sorting both by modulus: a naive, order-dependent distance.

    Only for comparison with :func:`wasserstein` (it is never smaller, and can be much larger
    when eigenvalues of similar modulus sit at different angles).
    """
    a, b = _as_spectrum(a, "a"), _as_spectrum(b, "b")
    if a.size != b.size:
        raise ValueError("sorted pairing needs spectra of equal size")
    sa = a[np.lexsort((a.imag, -np.abs(a)))]
    sb = b[np.lexsort((b.imag, -np.abs(b)))]
    return float(np.abs(sa - sb).mean())
