"""Figures of the training-Jacobian experiments (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from trainmap._io import atomic_savefig  # noqa: E402
from trainmap.jacobian.figures import COLORS, NAMES  # noqa: E402
from trainmap.jacobian.regions import BULK, CHAOTIC, STABLE  # noqa: E402

REGION_COLORS = {NAMES[c]: COLORS[c] for c in (CHAOTIC, BULK, STABLE)}
TINY = 1e-300


def _pos(a: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(np.asarray(a, dtype=np.float64)), TINY)


def perturbation_figures(out: Path, names: Sequence[str], eps: np.ndarray, sig: np.ndarray,
                         proj: np.ndarray, rest: np.ndarray, err: np.ndarray, loss: np.ndarray,
                         base_loss: float, tol: float) -> None:
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    for d, name in enumerate(names):
        ax = axes[0, d]
        c = REGION_COLORS.get(name, "k")
        ax.loglog(eps, _pos(proj[d]), color=c, lw=1.6, label="|u_iᵀΔ|")
        ax.loglog(eps, _pos(rest[d]), color=c, ls=":", lw=1.4, label="‖rest of Δ‖")
        ax.loglog(eps, eps * sig[d], color="k", ls="--", lw=0.9, label="ε·σ_i")
        ax.set_title(f"{name}: σ = {sig[d]:.3g}")
        ax.set_xlabel("ε")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("final change")
    atomic_savefig(fig, out / "response.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for d, name in enumerate(names):
        ax.loglog(eps, _pos(err[d]), color=REGION_COLORS.get(name, None), label=f"{name} (σ={sig[d]:.3g})")
    ax.axhline(tol, color="gray", lw=0.8)
    ax.set_xlabel("ε")
    ax.set_ylabel("‖Δ − εσu‖ / (εσ)")
    ax.legend(fontsize=8)
    atomic_savefig(fig, out / "relative_error.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for d, name in enumerate(names):
        ax.semilogx(eps, loss[d], color=REGION_COLORS.get(name, None), label=name)
    ax.axhline(base_loss, color="gray", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("ε")
    ax.set_ylabel("test loss after retraining")
    ax.legend(fontsize=8)
    atomic_savefig(fig, out / "test_loss.png")


def kl_figures(out: Path, kl: np.ndarray, codes: np.ndarray, sets: Sequence[str],
               medians: Mapping[str, Mapping[str, float]]) -> None:
    n = len(sets)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.6), squeeze=False, sharey=True)
    idx = np.arange(kl.shape[0])
    for j, s in enumerate(sets):
        ax = axes[0, j]
        for code in (CHAOTIC, BULK, STABLE):
            m = codes == code
            ax.scatter(idx[m], _pos(kl[m, j]), s=1.5, color=COLORS[code], label=NAMES[code])
        ax.set_yscale("log")
        ax.set_title(s)
        ax.set_xlabel("index i (descending σ)")
    axes[0, 0].set_ylabel("KL(original ‖ perturbed by v_i)")
    axes[0, 0].legend(fontsize=7, markerscale=5)
    atomic_savefig(fig, out / "kl_by_index.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    regions = ["chaotic", "bulk", "stable"]
    w = 0.8 / len(regions)
    x = np.arange(len(sets))
    for r_i, r in enumerate(regions):
        vals = [medians[s].get(r) or np.nan for s in sets]
        ax.bar(x + (r_i - 1) * w, _pos(np.asarray(vals, float)), width=w, color=REGION_COLORS[r], label=r)
    ax.set_xticks(x, list(sets))
    ax.set_yscale("log")
    ax.set_ylabel("median KL per region")
    ax.legend(fontsize=8)
    atomic_savefig(fig, out / "kl_medians.png")


def restricted_figure(out: Path, ks: np.ndarray, losses: Mapping[str, np.ndarray], init_loss: float,
                      full_loss: float, bulk_count: int | None, ylabel: str = "test loss") -> None:
    colors = {"bulk": COLORS[BULK], "complement": "#9467bd", "top": COLORS[CHAOTIC],
              "bottom": COLORS[STABLE], "random": "gray"}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, vals in losses.items():
        ax.semilogx(ks, vals, marker="o", ms=3, color=colors.get(name), label=name)
    ax.axhline(init_loss, color="k", ls=":", lw=0.9, label="initial")
    ax.axhline(full_loss, color="k", ls="--", lw=0.9, label="unrestricted")
    if bulk_count:
        ax.axvline(bulk_count, color=COLORS[BULK], lw=0.6, alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("k (dimension of the training subspace)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    atomic_savefig(fig, out / "restricted_loss.png")


def sorted_distance_figure(out: Path, spectra: Mapping[str, np.ndarray], tol: float,
                           name: str = "sigma_minus_one_sorted.png") -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, S in spectra.items():
        d = np.sort(np.abs(np.asarray(S, np.float64) - 1.0))
        ax.semilogy(np.arange(d.size), np.maximum(d, 1e-12), label=label, lw=1.2)
    ax.axhline(tol, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("rank (sorted by |σ − 1|)")
    ax.set_ylabel("|σ − 1|")
    ax.legend(fontsize=8)
    atomic_savefig(fig, out / name)


def cosine_histogram(out: Path, cosines: Mapping[str, np.ndarray], name: str, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bins = np.linspace(0, 1, 51)
    for label, c in cosines.items():
        ax.hist(np.asarray(c), bins=bins, histtype="step", lw=1.4, label=label, density=True)
    ax.set_xlabel("cosine of principal angle")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    atomic_savefig(fig, out / name)


def change_figures(out: Path, coef: np.ndarray, codes: np.ndarray) -> None:
    idx = np.arange(coef.size)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for code in (CHAOTIC, BULK, STABLE):
        m = codes == code
        ax.scatter(idx[m], _pos(coef[m]), s=1.5, color=COLORS[code], label=NAMES[code])
    ax.set_yscale("log")
    ax.set_xlabel("index i (descending σ)")
    ax.set_ylabel("|v_iᵀ(θ_T − θ₀)|")
    ax.legend(fontsize=8, markerscale=5)
    ax = axes[1]
    energy = np.cumsum(np.asarray(coef, np.float64) ** 2)
    ax.plot(idx, energy / max(energy[-1], TINY), color="k")
    ax.plot(idx, (idx + 1) / coef.size, color="gray", ls="--", lw=0.8, label="uniform")
    for code in (CHAOTIC, BULK, STABLE):
        m = np.flatnonzero(codes == code)
        if m.size:
            ax.axvspan(m.min() - 0.5, m.max() + 0.5, color=COLORS[code], alpha=0.12)
    ax.set_xlabel("index i")
    ax.set_ylabel("cumulative fraction of ‖θ_T − θ₀‖²")
    ax.legend(fontsize=8)
    atomic_savefig(fig, out / "change_by_index.png")


def gram_figure(out: Path, eig: Mapping[str, np.ndarray], k: int) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, w in eig.items():
        w = np.sort(np.asarray(w, np.float64))[::-1]
        ax.semilogy(np.arange(w.size), np.maximum(w / max(w[0], TINY), 1e-20), label=label)
    ax.axvline(w.size - k, color=COLORS[BULK], ls="--", lw=0.8, label=f"last k = {k} (bulk size)")
    ax.set_xlabel("index (descending eigenvalue)")
    ax.set_ylabel("eigenvalue of FᵀF / largest")
    ax.legend(fontsize=8)
    atomic_savefig(fig, out / "output_gram_spectrum.png")
