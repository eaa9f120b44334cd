"""Figures of the training-Jacobian spectrum (matplotlib, Agg backend)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from trainmap.jacobian.regions import BULK, CHAOTIC, STABLE, Thresholds  # noqa: E402

COLORS = {CHAOTIC: "#d62728", BULK: "#2ca02c", STABLE: "#1f77b4"}
NAMES = {CHAOTIC: "chaotic", BULK: "bulk", STABLE: "stable"}


def _shade_index_regions(ax: plt.Axes, codes: np.ndarray) -> None:
    for code in (CHAOTIC, BULK, STABLE):
        idx = np.flatnonzero(codes == code)
        if idx.size:
            ax.axvspan(idx.min() - 0.5, idx.max() + 0.5, color=COLORS[code], alpha=0.12,
                       label=f"{NAMES[code]} ({idx.size})")


def spectrum_figure(S: np.ndarray, codes: np.ndarray, th: Thresholds, title: str = "") -> Any:
    """σ_i against index on a log axis; index ranges of the regions shaded."""
    fig, ax = plt.subplots(figsize=(7, 4))
    _shade_index_regions(ax, codes)
    ax.semilogy(np.arange(S.size), np.maximum(S, np.finfo(float).tiny), color="k", lw=1.2)
    ax.axhline(th.high, color="gray", ls="--", lw=0.8)
    ax.axhline(th.low, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("index i (descending σ)")
    ax.set_ylabel("singular value σ_i of J")
    ax.set_title(title or "Training-Jacobian spectrum")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def distance_from_one_figure(S: np.ndarray, codes: np.ndarray, th: Thresholds) -> Any:
    """|σ_i − 1| against index on a log axis, coloured by region."""
    fig, ax = plt.subplots(figsize=(7, 4))
    d = np.maximum(np.abs(S - 1.0), 1e-12)
    for code in (CHAOTIC, BULK, STABLE):
        m = codes == code
        ax.scatter(np.flatnonzero(m), d[m], s=2, color=COLORS[code], label=f"{NAMES[code]} ({m.sum()})")
    ax.set_yscale("log")
    ax.axhline(max(th.high - 1, 1 - th.low), color="gray", ls="--", lw=0.8)
    ax.set_xlabel("index i (descending σ)")
    ax.set_ylabel("|σ_i − 1|")
    ax.set_title("Distance of singular values from 1")
    ax.legend(loc="lower left", fontsize=8, markerscale=4)
    return fig


def cosine_figure(cos_uv: np.ndarray, codes: np.ndarray) -> Any:
    """cos(u_i, v_i) against index, coloured by region."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for code in (CHAOTIC, BULK, STABLE):
        m = codes == code
        ax.scatter(np.flatnonzero(m), cos_uv[m], s=2, color=COLORS[code], label=NAMES[code])
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("index i (descending σ)")
    ax.set_ylabel("cos(u_i, v_i)")
    ax.set_title("Alignment of left and right singular vectors")
    ax.legend(loc="lower left", fontsize=8, markerscale=4)
    return fig


def change_projection_figure(proj: np.ndarray, codes: np.ndarray) -> Any:
    """|v_iᵀ(θ_T − θ₀)| against index on a log axis, coloured by region."""
    fig, ax = plt.subplots(figsize=(7, 4))
    a = np.maximum(np.abs(proj), 1e-12)
    for code in (CHAOTIC, BULK, STABLE):
        m = codes == code
        ax.scatter(np.flatnonzero(m), a[m], s=2, color=COLORS[code], label=NAMES[code])
    ax.set_yscale("log")
    ax.set_xlabel("index i (descending σ)")
    ax.set_ylabel("|v_iᵀ(θ_T − θ₀)|")
    ax.set_title("Parameter change in the right-singular basis")
    ax.legend(loc="lower left", fontsize=8, markerscale=4)
    return fig


def sigma_histogram_figure(S: np.ndarray, codes: np.ndarray, th: Thresholds, bins: int = 80) -> Any:
    """How many singular values lie at each σ: a histogram on log-spaced bins (log σ axis),
    stacked by region; the region boundaries dashed. The bulk is the tall peak at σ = 1."""
    fig, ax = plt.subplots(figsize=(7, 4))
    s = np.maximum(np.asarray(S, dtype=float), np.finfo(float).tiny)
    lo, hi = np.log10(max(s.min(), 1e-12)), np.log10(max(s.max(), 1.0) * 1.0001)
    edges = np.logspace(lo, hi, bins + 1) if hi > lo else np.array([s.min() * 0.9, s.max() * 1.1])
    parts = [(s[codes == c], COLORS[c], f"{NAMES[c]} ({int((codes == c).sum())})") for c in (STABLE, BULK, CHAOTIC)]
    ax.hist([p[0] for p in parts], bins=edges, stacked=True, color=[p[1] for p in parts],
            label=[p[2] for p in parts])
    ax.set_xscale("log")
    ax.set_yscale("log")
    for b in (th.low, th.high):
        ax.axvline(b, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("singular value σ of J (log scale)")
    ax.set_ylabel("count per bin")
    ax.set_title("Histogram of the training-Jacobian spectrum")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def loss_curve_figure(losses: np.ndarray) -> Any:
    """The batch loss of every training step (before its update), and its running mean over
    about 2% of the run, on a log axis."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    y = np.asarray(losses, dtype=float).reshape(-1)
    t = np.arange(y.size)
    ax.plot(t, y, color="#999999", lw=0.6, label="batch loss")
    w = max(1, y.size // 50)
    if w > 1 and y.size > w:
        ax.plot(t[w - 1:], np.convolve(y, np.ones(w) / w, mode="valid"), color="k", lw=1.4,
                label=f"mean over {w} steps")
    if np.all(y[np.isfinite(y)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training curve")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def scaling_figure(rows: Any) -> Any:
    """Region fractions, σ_max and the bulk's median |cos(u, v)| against P, one marker per family.

    Args:
        rows: the study's table rows (:func:`trainmap.jacobian.scaling.scaling_study`); exact points
            are drawn filled, matrix-free estimates hollow with their error bars.
    """
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    markers = {"mlp": "o", "cnn": "s", "transformer": "^", "transformer-sgd": "v"}
    for fam in sorted({r["family"] for r in rows}):
        rs = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["num_params"])
        P = np.array([r["num_params"] for r in rs], float)
        exact = np.array([r["route"] == "exact" for r in rs])
        mk = markers.get(fam, "D")
        for code, region in ((CHAOTIC, "chaotic"), (BULK, "bulk"), (STABLE, "stable")):
            f = np.array([r[f"{region}_fraction"] for r in rs])
            e = np.array([r[f"{region}_fraction_err"] for r in rs])
            axes[0].plot(P, f, color=COLORS[code], lw=0.8, alpha=0.6)
            axes[0].errorbar(P[~exact], f[~exact], yerr=e[~exact], fmt=mk, mfc="none", color=COLORS[code], ms=6)
            axes[0].plot(P[exact], f[exact], mk, color=COLORS[code], ms=6)
        axes[1].plot(P, [r["sigma_max"] for r in rs], mk + "-", label=fam)
        cos = np.array([np.nan if r["bulk_median_abs_cos_uv"] is None else r["bulk_median_abs_cos_uv"] for r in rs])
        axes[2].plot(P, cos, mk + "-", label=fam)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("parameters P")
    axes[0].set_ylabel("fraction of P (red chaotic, green bulk, blue stable)")
    axes[0].set_ylim(0, 1)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("σ_max")
    axes[2].set_ylabel("bulk median |cos(u, v)| (exact points)")
    axes[1].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.suptitle("Training-Jacobian regions against model size")
    fig.tight_layout()
    return fig
