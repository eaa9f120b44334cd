"""Matplotlib figures of the Koopman lens (every function returns a Figure)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

MARKERS = ("o", "^", "*", "s", "D", "v", "P", "X")
COLORS = ("k", "tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:gray")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def eigenvalue_figure(spectra: Mapping[str, np.ndarray | Sequence[np.ndarray]], title: str = "",
                      zoom: bool = True):
    """Eigenvalues in the complex plane with the unit circle; a second panel zooms on the data.

    Args:
        spectra: ``{label: (r,) eigenvalues}`` or ``{label: [per-run (r,) arrays]}``.
        title: figure title.
        zoom: add a panel fitted to the eigenvalues' extent.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(11 if zoom else 5.5, 5), squeeze=False)
    theta = np.linspace(0, 2 * np.pi, 400)
    allv = []
    for ax in axes[0]:
        ax.plot(np.cos(theta), np.sin(theta), "k--", lw=0.8, label="unit circle")
        for i, (label, val) in enumerate(spectra.items()):
            v = np.concatenate([np.ravel(x) for x in val]) if isinstance(val, (list, tuple)) else np.ravel(val)
            allv.append(v)
            alpha = 0.5 if isinstance(val, (list, tuple)) else 0.9
            ax.plot(v.real, v.imag, MARKERS[i % len(MARKERS)], color=COLORS[i % len(COLORS)],
                    alpha=alpha, ms=6, mfc="none" if i == 0 else None, label=label)
        ax.set_xlabel("Re λ")
        ax.set_ylabel("Im λ")
    axes[0][0].set_xlim(-1.25, 1.25)
    axes[0][0].set_ylim(-1.25, 1.25)
    axes[0][0].set_aspect("equal")
    axes[0][0].legend(fontsize=8, loc="lower left")
    if zoom and allv:
        v = np.concatenate(allv)
        pad_x = max(0.05 * np.ptp(v.real), 0.01)
        pad_y = max(0.05 * np.ptp(v.imag), 0.01)
        ax = axes[0][1]
        ax.set_xlim(v.real.min() - pad_x, v.real.max() + pad_x)
        ax.set_ylim(v.imag.min() - pad_y, v.imag.max() + pad_y)
        ax.set_title("zoom")
    if title:
        fig.suptitle(title)
    return fig


def distance_matrix_figure(d: np.ndarray, labels: Sequence[str], title: str = "", log: bool = False):
    """Heat map of a (n, n) distance matrix with run labels."""
    plt = _plt()
    n = d.shape[0]
    fig, ax = plt.subplots(figsize=(6 + 0.1 * n, 5 + 0.1 * n))
    shown = np.log10(np.where(d > 0, d, np.nan)) if log else d
    im = ax.imshow(shown, cmap="viridis")
    fig.colorbar(im, ax=ax, label="log10 W1" if log else "W1")
    if n <= 40:
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_yticklabels(labels, fontsize=7)
    ax.set_title(title)
    return fig


def null_figure(null: np.ndarray, observed: float, title: str = "", xlabel: str = "statistic"):
    """Histogram of the permutation null with the observed statistic."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(null, bins=40, color="0.6", label="null (permuted labels)")
    ax.axvline(observed, color="tab:red", lw=2, label=f"observed = {observed:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def distance_bars_figure(groups: Mapping[str, np.ndarray], title: str = "", log: bool = True):
    """Strip plot (points + mean) of several groups of distances, e.g. within vs between."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 2, 4.5))
    rng = np.random.default_rng(0)
    for i, (name, vals) in enumerate(groups.items()):
        vals = np.asarray(vals, dtype=float)
        ax.plot(i + 0.08 * rng.standard_normal(vals.size), vals, "o", alpha=0.4, color=COLORS[i % len(COLORS)])
        ax.plot([i - 0.3, i + 0.3], [vals.mean()] * 2, "-", color="k", lw=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups), rotation=20, fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel("W1 distance between spectra")
    ax.set_title(title)
    return fig


def curves_figure(x: np.ndarray, curves: Mapping[str, np.ndarray], xlabel: str, ylabel: str,
                  title: str = "", logx: bool = False, logy: bool = False):
    """Line plot of several curves; a 2-D value is drawn as its mean with a 25-75% band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, y) in enumerate(curves.items()):
        y = np.asarray(y, dtype=float)
        color = COLORS[(i + 1) % len(COLORS)]
        if y.ndim == 2:
            ax.fill_between(x, np.percentile(y, 25, 0), np.percentile(y, 75, 0), alpha=0.25, color=color)
            y = y.mean(0)
        ax.plot(x, y, "-", color=color, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def trajectories_figure(traj: Mapping[str, np.ndarray], title: str = ""):
    """2-D state trajectories (x1 vs x2) of several methods; traj values (runs, steps, 2)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(traj), figsize=(4.2 * len(traj), 4), squeeze=False)
    for ax, (name, z) in zip(axes[0], traj.items()):
        for run in z:
            ax.plot(run[:, 0], run[:, 1], "-", lw=0.8)
            ax.plot(run[0, 0], run[0, 1], "k.", ms=4)
        ax.set_title(name)
        ax.set_xlabel("state 1")
        ax.set_ylabel("state 2")
    if title:
        fig.suptitle(title)
    return fig
