"""Figures of the hyper-ribbon lens (matplotlib PNGs, plotly 3-D HTML) and their captions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trainmap._io import atomic_savefig, atomic_write_bytes, atomic_write_json, read_json


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def add_captions(out: Any, captions: dict[str, str]) -> None:
    """Merge captions into ``captions.json`` of a results folder (a :class:`~trainmap.results.ResultsFolder`)."""
    path = out / "captions.json"
    current = read_json(path) if path.exists() else {}
    current.update(captions)
    atomic_write_json(path, current)


def spectrum_figure(out: Any, eigenvalues: np.ndarray, chi: np.ndarray, name: str = "spectrum.png",
                    title: str = "InPCA spectrum") -> str:
    """Bar plot of |λ_k| (log scale; red = negative, time-like) and the explained stress χ_k."""
    plt = _plt()
    lam = np.asarray(eigenvalues)
    k = np.arange(1, len(lam) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.bar(k, np.abs(lam), color=np.where(lam < 0, "tab:red", "tab:blue"))
    a.set_yscale("log")
    a.set_xlabel("component k")
    a.set_ylabel("|λ_k|  (red: negative)")
    a.set_title(title)
    b.plot(k, chi, "o-")
    b.set_ylim(0, 1.02)
    b.set_xlabel("k")
    b.set_ylabel("explained stress χ_k")
    b.grid(alpha=0.3)
    atomic_savefig(fig, out / name)
    return name


def _scatter3d(ax: Any, emb: np.ndarray, colors: Any, **kw: Any) -> Any:
    return ax.scatter(emb[:, 0], emb[:, 1], emb[:, 2], c=colors, s=6, depthshade=False, **kw)


def deepnets_figures(out: Any, emb: np.ndarray, eigenvalues: np.ndarray, chi: np.ndarray, geo: np.ndarray,
                     runs: Sequence[dict], steps: np.ndarray, progress: np.ndarray) -> None:
    """3-D embeddings coloured by configuration and by progress, the spectrum, and a plotly view."""
    plt = _plt()
    M, R = len(runs), len(steps)
    pts = emb[: M * R].reshape(M, R, -1)
    p0, pstar = emb[M * R], emb[M * R + 1]
    archs = sorted({r["architecture"] for r in runs})
    opts = sorted({r["optimizer"] for r in runs})
    cmap = plt.get_cmap("tab10")

    def frame(ax: Any) -> None:
        ax.plot(geo[:, 0], geo[:, 1], geo[:, 2], "k--", lw=1.5, label="geodesic P₀→P*")
        ax.scatter(*p0[:3], c="k", marker="s", s=50, label="P₀ uniform")
        ax.scatter(*pstar[:3], c="k", marker="*", s=120, label="P* truth")
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
        ax.set_zlabel("PC3")

    fig = plt.figure(figsize=(13, 6))
    for j, (key, values) in enumerate((("architecture", archs), ("optimizer", opts))):
        ax = fig.add_subplot(1, 2, j + 1, projection="3d")
        for i, r in enumerate(runs):
            c = cmap(values.index(r[key]) % 10)
            ax.plot(pts[i, :, 0], pts[i, :, 1], pts[i, :, 2], color=c, lw=0.6, alpha=0.7)
        for v in values:
            ax.plot([], [], color=cmap(values.index(v) % 10), label=v)
        frame(ax)
        ax.set_title(f"coloured by {key}")
        ax.legend(fontsize=7, loc="upper left")
    atomic_savefig(fig, out / "embedding3d_config.png")

    fig = plt.figure(figsize=(7, 6))
    ax = fig.add_subplot(projection="3d")
    sc = _scatter3d(ax, pts.reshape(M * R, -1), progress, cmap="viridis", vmin=0, vmax=1)
    frame(ax)
    fig.colorbar(sc, ax=ax, shrink=0.6, label="progress along the geodesic P₀→P*")
    ax.set_title("coloured by progress")
    atomic_savefig(fig, out / "embedding3d_progress.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, r in enumerate(runs):
        c = cmap(archs.index(r["architecture"]) % 10)
        axes[0].plot(pts[i, :, 0], pts[i, :, 1], color=c, lw=0.6, alpha=0.7)
    axes[0].plot(geo[:, 0], geo[:, 1], "k--")
    axes[0].set_xlabel("PC1")
    axes[0].set_ylabel("PC2")
    axes[0].set_title("top two components, by architecture")
    axes[1].plot(steps[1:], progress.reshape(M, R)[:, 1:].T, color="tab:blue", alpha=0.25, lw=0.7)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("progress P₀→P*")
    axes[1].set_title("progress along the geodesic vs step")
    atomic_savefig(fig, out / "embedding2d_progress.png")

    spectrum_figure(out, eigenvalues, chi, title="joint InPCA spectrum (all runs + P₀, P*)")
    plotly_embedding(out / "embedding3d.html", pts, [r["architecture"] for r in runs],
                     [_hover(r) for r in runs], steps, geo, p0, pstar)
    add_captions(out, {
        "embedding3d_config.png": "All training trajectories in the top three InPCA components, coloured by "
                                  "architecture (left) and optimizer (right); look for the runs sharing one "
                                  "thin manifold from P₀ towards P*, close to the geodesic (dashed).",
        "embedding3d_progress.png": "Checkpoints coloured by their progress along the P₀→P* geodesic; "
                                    "progress should grow smoothly along the ribbon.",
        "embedding2d_progress.png": "Left: the top two components; right: progress vs (log) step for every run.",
        "spectrum.png": "|λ_k| of the joint embedding (red = negative, time-like) and explained stress χ_k; "
                        "a fast fall-off and χ_3 near 1 mean a low-dimensional picture.",
    })


def _hover(r: dict) -> str:
    return f"{r['architecture']} {r['optimizer']} lr={r['lr']:g} b={r['batch_size']} seed={r['seed']}"


def embedding_plotly_figure(runs: Sequence[np.ndarray], groups: Sequence[str], hover: Sequence[Sequence[str]],
                            geo: np.ndarray | None = None, refs: dict[str, np.ndarray] | None = None) -> Any:
    """A 3-D plotly view of trajectories: one line per run, one colour per group (condition), each
    group once in the legend (clicking it shows or hides all its runs).

    Args:
        runs: one (T_r, ≥3) array of embedding coordinates per run.
        groups: each run's group (condition) label.
        hover: per run, one hover text per point.
        geo: optional (n, ≥3) P₀→P* geodesic; refs: optional named reference points.
    """
    import plotly.graph_objects as go

    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    names = list(dict.fromkeys(groups))
    fig = go.Figure()
    shown: set[str] = set()
    for pts, g, text in zip(runs, groups, hover):
        fig.add_trace(go.Scatter3d(
            x=pts[:, 0], y=pts[:, 1], z=pts[:, 2], mode="lines+markers",
            line=dict(color=palette[names.index(g) % 10], width=2), marker=dict(size=2),
            name=g, legendgroup=g, showlegend=g not in shown, text=list(text), hoverinfo="text"))
        shown.add(g)
    if geo is not None:
        fig.add_trace(go.Scatter3d(x=geo[:, 0], y=geo[:, 1], z=geo[:, 2], mode="lines",
                                   line=dict(color="black", dash="dash", width=4), name="geodesic P₀→P*"))
    for label, p in (refs or {}).items():
        fig.add_trace(go.Scatter3d(x=[p[0]], y=[p[1]], z=[p[2]], mode="markers+text", text=[label],
                                   marker=dict(size=6, color="black"), name=label))
    fig.update_layout(scene=dict(xaxis_title="PC1", yaxis_title="PC2", zaxis_title="PC3"),
                      margin=dict(l=0, r=0, t=30, b=0), title="InPCA embedding", height=620)
    return fig


def plotly_embedding(path: Path, pts: np.ndarray, groups: Sequence[str], hover: Sequence[str], steps: np.ndarray,
                     geo: np.ndarray | None = None, p0: np.ndarray | None = None, pstar: np.ndarray | None = None) -> Path:
    """A self-contained interactive 3-D page (plotly with the library inlined) of (runs, T, k) ``pts``."""
    refs = {k: v for k, v in (("P₀ uniform", p0), ("P* truth", pstar)) if v is not None}
    fig = embedding_plotly_figure(list(pts), groups, [[f"{h} step {s}" for s in steps] for h in hover], geo, refs)
    return atomic_write_bytes(path, fig.to_html(include_plotlyjs=True, full_html=True).encode())


def embed_figures(out: Any, emb: np.ndarray, eigenvalues: np.ndarray, chi: np.ndarray, run_of_point: np.ndarray,
                  labels: Sequence[str], progress: np.ndarray | None, refs: dict[str, np.ndarray]) -> None:
    """Figures of ``trainmap ribbon embed``: 3-D embedding by run (and by progress), spectrum."""
    plt = _plt()
    fig = plt.figure(figsize=(13 if progress is not None else 7, 6))
    ncols = 2 if progress is not None else 1
    ax = fig.add_subplot(1, ncols, 1, projection="3d")
    cmap = plt.get_cmap("tab20")
    dims = emb.shape[1]
    e3 = np.pad(emb, ((0, 0), (0, max(0, 3 - dims))))
    for r in np.unique(run_of_point):
        sel = run_of_point == r
        ax.plot(e3[sel, 0], e3[sel, 1], e3[sel, 2], ".-", color=cmap(int(r) % 20), lw=0.8, ms=3,
                label=labels[int(r)] if len(labels) <= 12 else None)
    for name, p in refs.items():
        p3 = np.pad(p, (0, max(0, 3 - len(p))))
        ax.scatter(*p3[:3], c="k", marker="*", s=80)
        ax.text(*p3[:3], name)
    ax.set_title("coloured by run")
    if len(labels) <= 12:
        ax.legend(fontsize=7)
    if progress is not None:
        ax2 = fig.add_subplot(1, 2, 2, projection="3d")
        sc = _scatter3d(ax2, e3, progress, cmap="viridis")
        fig.colorbar(sc, ax=ax2, shrink=0.6, label="progress P₀→P*")
        ax2.set_title("coloured by progress")
    atomic_savefig(fig, out / "embedding3d.png")
    if dims >= 3:  # the interactive view, by condition (the store a run came from)
        runs = [e3[run_of_point == r] for r in np.unique(run_of_point)]
        groups = [labels[int(r)].split(":", 1)[0] for r in np.unique(run_of_point)]
        hover = [[f"{labels[int(r)]} point {i}" for i in range(len(pts))] for r, pts in zip(np.unique(run_of_point), runs)]
        view = embedding_plotly_figure(runs, groups, hover, refs={k: np.pad(v, (0, max(0, 3 - len(v))))
                                                                   for k, v in refs.items()})
        atomic_write_bytes(out / "embedding3d.plotly.json", view.to_json().encode())
    spectrum_figure(out, eigenvalues, chi)
    add_captions(out, {
        "embedding3d.plotly.json": "Trajectories in the top three InPCA components, one colour per input store "
                                   "(condition), each once in the legend: click it to show or hide its runs; "
                                   "hover for the run and checkpoint.",
        "embedding3d.png": "Trajectories in the top three InPCA components (left: by run; right: by progress "
                           "along the P₀→P* geodesic when targets are known).",
        "spectrum.png": "|λ_k| (red = negative, time-like) and explained stress χ_k of the embedding.",
    })


def linear_figures(out: Any, analytic: np.ndarray, empirical: np.ndarray, emb: np.ndarray, runs: int,
                   records: int, title: str) -> None:
    """Analytic vs trained InPCA spectra and the embedded linear-model ensemble."""
    plt = _plt()
    k = np.arange(1, len(analytic) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.semilogy(k, analytic, "o-", label="closed form")
    a.semilogy(k, np.abs(empirical[: len(k)]), "x--", label="trained (GD + Bhattacharyya + InPCA)")
    a.set_xlabel("component k")
    a.set_ylabel("InPCA eigenvalue")
    a.legend()
    a.set_title(title)
    pts = emb.reshape(runs, records, -1)
    for i in range(runs):
        b.plot(pts[i, :, 0], pts[i, :, 1], ".-", ms=3, lw=0.8)
    b.set_xlabel("PC1")
    b.set_ylabel("PC2")
    b.set_title("ensemble trajectories (top two components)")
    atomic_savefig(fig, out / "linear_spectrum.png")
    add_captions(out, {"linear_spectrum.png": "Left: InPCA eigenvalues from the closed form and from actual "
                                              "training agree; a straight line on the log scale is a geometric "
                                              "(hyper-ribbon) decay. Right: the runs in the top two components."})


def phase_figure(out: Any, pd: Any) -> None:
    """Heatmaps of χ_3 over (decay, scale) per number of steps, with the derived boundaries."""
    plt = _plt()
    S = len(pd.steps)
    fig, axes = plt.subplots(2, S, figsize=(4.6 * S, 8), squeeze=False)
    ls = np.log10(pd.scales)
    for s in range(S):
        for row, (data, name) in enumerate(((pd.numeric, "numeric (finite ensemble)"),
                                            (pd.theory, "large-ensemble theory"))):
            ax = axes[row, s]
            im = ax.pcolormesh(ls, pd.decays, data[s], vmin=0, vmax=1, cmap="magma", shading="nearest")
            ax.contour(ls, pd.decays, data[s], levels=[pd.threshold], colors="cyan", linewidths=1.5)
            ax.plot(np.log10(pd.crossover[s] / np.sqrt(1 - pd.threshold)), pd.decays, "w--", lw=1.5,
                    label="r* = r_b/√(1−χ)")
            ax.plot(np.log10(pd.crossover[s]), pd.decays, "w:", lw=1.2, label="r_b (equal spreads)")
            ax.axhline(pd.plateau[s], color="lime", ls="-.", lw=1.5, label="c_A(T)")
            ax.set_xlim(ls.min(), ls.max())
            ax.set_title(f"T = {pd.steps[s]}: {name}", fontsize=9)
            ax.set_xlabel("log10 scale ‖w*‖/‖w₀‖")
            ax.set_ylabel("decay rate c")
            if s == 0 and row == 0:
                ax.legend(fontsize=7, loc="lower right")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="χ_3")
    atomic_savefig(fig, out / "phase_diagram.png")
    add_captions(out, {"phase_diagram.png": "χ_3 (explained stress of three components) over input decay c and "
                                            "truth scale, for each number of steps; cyan: χ_3 = threshold "
                                            "contour; white dashed / dotted: derived path-dominance boundary and "
                                            "equal-spread line; green: derived decay boundary c_A(T). Ribbon "
                                            "phase: above green or right of white dashed."})
