"""Stochastic Lanczos quadrature (SLQ): the spectral density of JᵀJ and region counts of σ.

For a Rademacher probe z (P,), zᵀ f(A) z ≈ Σ_i w_i f(θ_i) with Gauss quadrature nodes θ_i (Ritz
values of the Lanczos run started at z) and weights w_i = ‖z‖² (first component of the i-th
eigenvector of T)². With a block of b probes and block Lanczos the probe z_j gets the weights
w_ij = ((Sᵀ E₁ R₀)_ij)², where V₀ᵀ = Q₀ᵀ R₀; averaging over probes is Hutchinson's trace
estimator, so for the indicator f = 1[θ ∈ I]

    #{i : σ_i² ∈ I}  ≈  mean_j Σ_i w_ij 1[θ_i ∈ I]           (Σ_i w_ij = ‖z_j‖² = P).

Two uncertainties are reported per count:

* ``std_err`` — the spread over probes, std_j / √b (Hutchinson's variance);
* ``quadrature_range`` — the interval allowed by the Chebyshev–Markov–Stieltjes inequalities
  of Gauss quadrature (the true distribution function at a threshold lies between the node sums
  just below and just above it), averaged over probes. It is wide when few Ritz values fall
  near the region boundaries σ = 0.9 and σ = 1.1; run more Lanczos steps to narrow it. With a
  block of b > 1 probes each probe's rule (m·b nodes, exact to degree 2m − 1) is not a Gauss
  rule, so the range is a guide there, not a bound (docs/jacobian_scale.md has a case it misses).

The point estimate interpolates each probe's quadrature distribution function linearly between
node midpoints, which removes most of the staircase bias of the plain node sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trainmap.jacobian.matrix_free.lanczos import BlockLanczosState, BlockOperator, block_lanczos, rademacher
from trainmap.jacobian.regions import REGIONS, Thresholds


@dataclass
class Quadrature:
    """Per-probe Gauss quadrature of the spectral measure of JᵀJ.

    Attributes:
        nodes: (n,) Ritz values of JᵀJ (estimates of σ²), ascending.
        weights: (n, b) weights per node and probe; each column sums to 1 (multiply by P).
        dim: P, the dimension (total mass of each probe's measure).
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int

    @property
    def num_probes(self) -> int:
        return int(self.weights.shape[1])


def quadrature(state: BlockLanczosState) -> Quadrature:
    """Nodes and per-probe weights from a block Lanczos run on JᵀJ (see module docstring)."""
    T = state.projected()
    theta, S = np.linalg.eigh(T)
    b = state.block_size
    W = (S[:b, :].T @ state.R0) ** 2  # (n, b)
    W = W / np.maximum(W.sum(axis=0, keepdims=True), 1e-300)
    return Quadrature(theta, W, int(state.probes.shape[1]))


def _cdf(q: Quadrature, x: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-probe (estimate, lower, upper) of the distribution function F(x) = #{σ² ≤ x} / P."""
    t, W = q.nodes, q.weights
    mid = np.cumsum(W, axis=0) - 0.5 * W  # F at node midpoints
    est = np.array([np.interp(x, t, mid[:, j], left=0.0, right=1.0) for j in range(W.shape[1])])
    below = t <= x
    hard = W[below].sum(axis=0)
    k = int(np.flatnonzero(below)[-1]) if below.any() else -1
    w_k = W[k] if k >= 0 else np.zeros(W.shape[1])
    w_next = W[k + 1] if k + 1 < t.size else np.zeros(W.shape[1])
    return est, np.clip(hard - w_k, 0, 1), np.clip(hard + w_next, 0, 1)


def region_counts(q: Quadrature, thresholds: Thresholds = Thresholds()) -> dict[str, dict[str, Any]]:
    """Estimated number of chaotic / bulk / stable singular values, with uncertainties.

    Returns:
        ``{region: {"count", "std_err", "fraction", "quadrature_range": [lo, hi],
        "per_probe": [...]}}`` (JSON-able).
    """
    P = q.dim
    lo_t, hi_t = thresholds.low ** 2, thresholds.high ** 2
    e_lo, l_lo, u_lo = _cdf(q, np.nextafter(lo_t, -np.inf))  # stable is σ < low
    e_hi, l_hi, u_hi = _cdf(q, hi_t)  # chaotic is σ > high
    per = {"stable": P * e_lo, "bulk": P * (e_hi - e_lo), "chaotic": P * (1.0 - e_hi)}
    ranges = {"stable": (P * l_lo.mean(), P * u_lo.mean()),
              "bulk": (P * max(l_hi.mean() - u_lo.mean(), 0.0), P * (u_hi.mean() - l_lo.mean())),
              "chaotic": (P * (1.0 - u_hi.mean()), P * (1.0 - l_hi.mean()))}
    b = q.num_probes
    out = {}
    for r in REGIONS:
        v = per[r]
        se = float(v.std(ddof=1) / np.sqrt(b)) if b > 1 else float("nan")
        out[r] = {"count": float(v.mean()), "std_err": se, "fraction": float(v.mean() / P),
                  "quadrature_range": [float(ranges[r][0]), float(ranges[r][1])],
                  "per_probe": [float(c) for c in v]}
    return out


def spectral_density(q: Quadrature, grid: np.ndarray, bandwidth: float = 0.03) -> np.ndarray:
    """Smoothed density of log10 σ (singular values per unit log10 σ), averaged over probes.

    Args:
        q: the quadrature.
        grid: (g,) values of log10 σ.
        bandwidth: Gaussian kernel width in log10 σ.

    Returns:
        (g,) density; integrates (over log10 σ) to about P.
    """
    sig = np.sqrt(np.maximum(q.nodes, 0.0))
    logs = np.log10(np.maximum(sig, 1e-12))
    w = q.weights.mean(axis=1) * q.dim
    z = (grid[:, None] - logs[None, :]) / bandwidth
    return (np.exp(-0.5 * z**2) / (bandwidth * np.sqrt(2 * np.pi))) @ w


def slq_counts(apply: BlockOperator, dim: int, num_probes: int = 8, steps: int = 30, seed: int = 0,
               thresholds: Thresholds = Thresholds(), dtype: Any = np.float64,
               basis: str = "full") -> dict[str, dict[str, Any]]:
    """SLQ region counts in one call (in memory), for a block operator of JᵀJ.

    Args:
        apply: ``X (b, P) -> (JᵀJ X, J X or None)``.
        dim: P.
        num_probes: Rademacher probes b (the block size).
        steps: block Lanczos steps m (m · b ≤ P).
        seed: seed of the probes.
        thresholds: region boundaries on σ.
        dtype: dtype of the probes and the stored basis.
        basis: ``"full"``, ``"half"`` or ``"window"`` (see :func:`~trainmap.jacobian.matrix_free.lanczos.block_lanczos`).

    Returns:
        See :func:`region_counts`.
    """
    state = block_lanczos(apply, rademacher(num_probes, dim, seed, dtype), steps, seed, basis=basis)
    return region_counts(quadrature(state), thresholds)
