"""Figures of the matrix-free spectrum estimates (matplotlib, Agg backend)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from trainmap.jacobian.figures import COLORS  # noqa: E402
from trainmap.jacobian.regions import BULK, CHAOTIC, STABLE, Thresholds  # noqa: E402


def density_figure(grid: np.ndarray, density: np.ndarray, per_probe: np.ndarray, th: Thresholds,
                   counts: dict[str, Any]) -> Any:
    """Estimated density of log10 σ with the region boundaries; one thin line per probe."""
    fig, ax = plt.subplots(figsize=(7, 4))
    sig = 10.0 ** grid
    lo, hi = float(sig.min()), float(sig.max())
    ax.axvspan(lo, th.low, color=COLORS[STABLE], alpha=0.12,
               label=f"stable ≈ {counts['stable']['count']:.0f} ± {counts['stable']['std_err']:.0f}")
    ax.axvspan(th.low, th.high, color=COLORS[BULK], alpha=0.12,
               label=f"bulk ≈ {counts['bulk']['count']:.0f} ± {counts['bulk']['std_err']:.0f}")
    ax.axvspan(th.high, hi, color=COLORS[CHAOTIC], alpha=0.12,
               label=f"chaotic ≈ {counts['chaotic']['count']:.0f} ± {counts['chaotic']['std_err']:.0f}")
    for row in per_probe:
        ax.plot(sig, row, color="gray", lw=0.4, alpha=0.5)
    ax.plot(sig, density, color="k", lw=1.4, label="mean over probes")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=max(float(density.max()) * 1e-3, 1e-9))
    ax.set_ylim(bottom=0.0)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("singular value σ of J")
    ax.set_ylabel("estimated density (per unit log10 σ)")
    ax.set_title("Spectral density of J by stochastic Lanczos quadrature")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def extreme_figure(top: Any, bottom: Any, rtol: float, th: Thresholds) -> Any:
    """Extreme singular values (top and, if given, bottom) on a log axis; hollow = not converged."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for t, color, label in ((top, COLORS[CHAOTIC], "top (chaotic end)"),
                            (bottom, COLORS[STABLE], "bottom (stable end)")):
        if t is None:
            continue
        i = np.arange(t.sigma.size)
        conv = t.rel_residuals < rtol
        s = np.maximum(t.sigma, 1e-12)
        ax.semilogy(i[conv], s[conv], "o", color=color, ms=4, label=f"{label}, converged")
        if (~conv).any():
            ax.semilogy(i[~conv], s[~conv], "o", mfc="none", color=color, ms=4,
                        label=f"{label}, not converged")
    ax.axhline(th.high, color="gray", ls="--", lw=0.8)
    ax.axhline(th.low, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("rank i from the end")
    ax.set_ylabel("singular value σ_i of J")
    ax.set_title("Extreme singular values (block Lanczos on JᵀJ − I)")
    ax.legend(loc="best", fontsize=8)
    return fig
