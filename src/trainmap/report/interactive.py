"""Interactive (plotly) views of a results folder, inlined into ``report.html``.

The report finds interactive views in four ways, in this order:

1. **Explicit figure specs.** Any ``NAME.plotly.json`` in the folder (a plotly figure as JSON,
   written with :func:`save_plotly`) is shown as it is; its caption is ``captions.json["NAME.plotly.json"]``.
2. **Standalone plotly pages.** Any other ``NAME.html`` written by plotly (``fig.write_html`` /
   ``fig.to_html``) is read back and its figure drawn inline (the page is also linked); caption
   ``captions.json["NAME.html"]``.
3. **Koopman eigenvalues.** Every complex ``.npy`` array whose name contains ``eigenvalues``
   (for example ``eigenvalues_h5.npy``, shape ``(r,)`` or ``(runs, r)`` padded with NaN) becomes one
   trace of a single complex-plane plot with the unit circle drawn in.
4. **Embeddings.** Every real ``.npy`` array whose name contains ``embedding`` (for example the
   InPCA coordinates ``inpca_embedding.npy``) with shape ``(N, k)`` or ``(runs, T, k)``, ``k ≥ 2``,
   becomes a 3-D view of its first three components (2-D when ``k = 2``); a ``(runs, T, k)`` array
   is drawn as one line per run, coloured by time.

The automatic views 3 and 4 are left out when an explicit view (1 or 2) already has
"eigenvalue" or "embedding" in its name. A lens can also suppress them by listing array names
under ``"interactive_skip"`` in captions.json, and caption them with keys ``"eigenvalues"`` and
``"embedding"`` (or ``"NAME.npy"``).

Static PNGs are always kept: the interactive views are for looking, the PNGs for papers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from trainmap._io import atomic_write_bytes, load_npy

PLOTLY_SUFFIX = ".plotly.json"
REPORT_NAME = "report.html"
MAX_POINTS = 20_000  # per trace; larger arrays are subsampled evenly (the PNGs show everything)

DEFAULT_CAPTIONS = {
    "eigenvalues": "Eigenvalues in the complex plane (drag to pan, scroll to zoom, hover for |λ| and "
                   "angle): modes on the unit circle persist, inside it they decay; compare where "
                   "each group's cluster sits.",
    "embedding": "The first three embedding coordinates (drag to rotate): look for the trajectories "
                 "spreading along a few long directions (a thin ribbon) and where runs separate.",
}


@dataclass(frozen=True)
class InteractiveView:
    """One interactive figure: ``figure`` is a plotly figure dict ({"data": [...], "layout": {...}}).

    ``source`` names the standalone file the view was read from, if any (the report links it).
    """

    name: str
    caption: str
    figure: dict
    source: str | None = None


def figure_from_plotly_html(text: str) -> dict:
    """The figure of a page written by plotly's ``to_html``/``write_html`` (its first ``Plotly.newPlot``).

    Raises:
        ValueError: when the page holds no plotly figure that can be read back.
    """
    i = text.find("Plotly.newPlot(")
    if i < 0:
        raise ValueError("no Plotly.newPlot call in the page")
    dec = json.JSONDecoder()
    pos = i + len("Plotly.newPlot(")
    args = []
    for _ in range(3):  # div id, data, layout
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            value, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the plotly call could not be read back ({exc.msg})") from exc
        args.append(value)
    _, data, layout = args
    if not isinstance(data, list) or not isinstance(layout, dict):
        raise ValueError("the plotly call does not hold (data, layout)")
    return {"data": data, "layout": layout}


def save_plotly(fig: Any, run_dir: str | Path, name: str, caption: str | None = None) -> Path:
    """Save a plotly figure as ``run_dir/NAME.plotly.json`` so that report.html shows it.

    Args:
        fig: a ``plotly.graph_objects.Figure`` or a figure dict with ``data`` and ``layout``.
        run_dir: the results folder.
        name: file stem (``"spectrum_3d"`` gives ``spectrum_3d.plotly.json``).
        caption: optional one-line "what to look for", merged into ``captions.json``.

    Returns:
        The path written.
    """
    from trainmap._io import atomic_write_json, read_json

    run_dir = Path(run_dir)
    text = fig.to_json() if hasattr(fig, "to_json") else json.dumps(fig)
    path = atomic_write_bytes(run_dir / f"{name}{PLOTLY_SUFFIX}", text.encode())
    if caption is not None:
        cap_path = run_dir / "captions.json"
        caps = read_json(cap_path) if cap_path.exists() else {}
        caps[path.name] = caption
        atomic_write_json(cap_path, caps)
    return path


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of a ``.npy`` file without reading its data (None if unreadable)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, _, dtype = reader(fh)
        return tuple(shape), np.dtype(dtype)
    except Exception:  # noqa: BLE001 - a broken array is reported, never fatal for the report
        return None


def _template() -> dict:
    """plotly's "plotly_white" template as plain JSON (plotly.js does not know template names)."""
    import plotly.io as pio

    return json.loads(json.dumps(pio.templates["plotly_white"].to_plotly_json()))


def _subsample(n: int, limit: int = MAX_POINTS) -> np.ndarray:
    return np.arange(n) if n <= limit else np.linspace(0, n - 1, limit).round().astype(int)


def _label(stem: str, key: str) -> str:
    lab = "_".join(part for part in stem.replace(key, "").split("_") if part)
    return lab or stem


def eigenvalue_figure(groups: Mapping[str, np.ndarray], title: str = "") -> dict:
    """A complex-plane plotly figure of eigenvalue groups with the unit circle.

    Args:
        groups: ``{"label": complex array}`` of any shape (NaN padding is dropped).
        title: figure title.

    Returns:
        A plotly figure dict.
    """
    t = np.linspace(0, 2 * np.pi, 361)
    data: list[dict] = [{"type": "scatter", "x": np.cos(t).round(5).tolist(), "y": np.sin(t).round(5).tolist(),
                         "mode": "lines", "name": "unit circle", "hoverinfo": "skip",
                         "line": {"color": "#888", "width": 1, "dash": "dot"}}]
    for label, lam in groups.items():
        lam = np.asarray(lam).ravel()
        lam = lam[np.isfinite(lam)]
        lam = lam[_subsample(lam.size)]
        mod, ang = np.abs(lam), np.degrees(np.angle(lam))
        data.append({
            "type": "scatter", "mode": "markers", "name": label,
            "x": lam.real.astype(float).round(7).tolist(), "y": lam.imag.astype(float).round(7).tolist(),
            "customdata": np.stack([mod, ang], axis=-1).round(6).tolist(),
            "hovertemplate": "Re %{x:.5f}<br>Im %{y:.5f}<br>|λ| %{customdata[0]:.5f}"
                             "<br>angle %{customdata[1]:.2f}°<extra>%{fullData.name}</extra>",
            "marker": {"size": 6, "opacity": 0.7},
        })
    layout = {"template": _template(), "title": {"text": title}, "xaxis": {"title": {"text": "Re λ"}, "zeroline": True},
              "yaxis": {"title": {"text": "Im λ"}, "scaleanchor": "x", "scaleratio": 1},
              "height": 560, "margin": {"l": 60, "r": 20, "t": 50, "b": 50}, "legend": {"orientation": "v"}}
    return {"data": data, "layout": layout}


def embedding_figure(emb: np.ndarray, title: str = "") -> dict:
    """A 3-D (or 2-D for k = 2) plotly view of an embedding.

    Args:
        emb: ``(N, k)`` points or ``(runs, T, k)`` trajectories, ``k ≥ 2``; the first three
            components are drawn.
        title: figure title.

    Returns:
        A plotly figure dict.
    """
    emb = np.asarray(emb, dtype=float)
    if emb.ndim not in (2, 3) or emb.shape[-1] < 2:
        raise ValueError(f"embedding must have shape (N, k) or (runs, T, k) with k >= 2, got {emb.shape}")
    three = emb.shape[-1] >= 3
    kind = "scatter3d" if three else "scatter"
    data: list[dict] = []

    def coords(a: np.ndarray) -> dict:
        d = {"x": a[:, 0].round(6).tolist(), "y": a[:, 1].round(6).tolist()}
        if three:
            d["z"] = a[:, 2].round(6).tolist()
        return d

    if emb.ndim == 2:
        idx = _subsample(emb.shape[0])
        data.append({"type": kind, "mode": "markers", "name": "points", **coords(emb[idx]),
                     "marker": {"size": 3 if three else 5, "color": idx.tolist(), "colorscale": "Viridis",
                                "colorbar": {"title": {"text": "index"}}}})
    else:
        runs, T = emb.shape[:2]
        per_run = max(2, MAX_POINTS // max(runs, 1))
        for r in range(runs):
            idx = _subsample(T, per_run)
            data.append({"type": kind, "mode": "lines+markers", "name": f"run {r}", **coords(emb[r, idx]),
                         "marker": {"size": 2 if three else 4, "color": idx.tolist(), "colorscale": "Viridis",
                                    "showscale": r == 0, "colorbar": {"title": {"text": "step"}}},
                         "line": {"width": 2}})
    axes = {f"{a}axis": {"title": {"text": f"component {i + 1}"}} for i, a in enumerate("xyz"[: 3 if three else 2])}
    layout: dict[str, Any] = {"template": _template(), "title": {"text": title}, "height": 620, "margin": {"l": 0, "r": 0, "t": 50, "b": 0}}
    if three:
        layout["scene"] = {**axes, "aspectmode": "data"}
    else:
        layout.update(axes)
    return {"data": data, "layout": layout}


def find_views(run_dir: str | Path, captions: Mapping[str, Any] | None = None) -> tuple[list[InteractiveView], list[str]]:
    """All interactive views of a results folder (see the module docstring for the rules).

    Args:
        run_dir: the results folder.
        captions: the folder's captions.json contents.

    Returns:
        ``(views, problems)``: the views, and a message for each file that could not be shown.
    """
    run_dir = Path(run_dir)
    captions = dict(captions or {})
    skip = set(captions.get("interactive_skip", []) or [])
    views: list[InteractiveView] = []
    problems: list[str] = []

    for path in sorted(run_dir.glob(f"*{PLOTLY_SUFFIX}")):
        try:
            fig = json.loads(path.read_text())
            if not isinstance(fig, dict) or "data" not in fig:
                raise ValueError("not a plotly figure (no 'data')")
        except (ValueError, OSError) as exc:
            problems.append(f"{path.name} could not be shown: {exc}")
            continue
        name = path.name[: -len(PLOTLY_SUFFIX)]
        views.append(InteractiveView(name, str(captions.get(path.name, name.replace("_", " "))), fig))

    for path in sorted(run_dir.glob("*.html")):
        if path.name in (REPORT_NAME,) or path.name.startswith(".") or path.name in skip:
            continue
        try:
            text = path.read_text(errors="replace")
            if "Plotly.newPlot(" not in text:
                continue  # some other page: not ours to show
            fig = figure_from_plotly_html(text)
        except (ValueError, OSError) as exc:
            problems.append(f"{path.name} could not be shown inline: {exc}")
            continue
        views.append(InteractiveView(path.stem, str(captions.get(path.name, path.stem.replace("_", " "))),
                                     fig, source=path.name))
    explicit = " ".join(v.name.lower() for v in views)

    eig: dict[str, np.ndarray] = {}
    embeddings: list[tuple[Path, np.ndarray]] = []
    for path in sorted(run_dir.glob("*.npy")):
        if path.name in skip or path.stem in skip:
            continue
        lower = path.stem.lower()
        want_eig = "eigenvalues" in lower and "eigenvalue" not in explicit
        want_emb = "embedding" in lower and "embedding" not in explicit
        if not (want_eig or want_emb):
            continue
        head = _npy_header(path)
        if head is None:
            problems.append(f"{path.name} is not a readable .npy array")
            continue
        shape, dtype = head
        if want_eig and dtype.kind == "c":
            eig[_label(path.stem, "eigenvalues")] = load_npy(path)
        elif want_emb and dtype.kind == "f" and len(shape) in (2, 3) and shape[-1] >= 2:
            embeddings.append((path, load_npy(path)))

    if eig:
        views.append(InteractiveView("eigenvalues", str(captions.get("eigenvalues", DEFAULT_CAPTIONS["eigenvalues"])),
                                     eigenvalue_figure(eig, "eigenvalues (complex plane)")))
    for path, emb in embeddings:
        cap = captions.get(path.name, captions.get("embedding", DEFAULT_CAPTIONS["embedding"]))
        views.append(InteractiveView(path.stem, str(cap), embedding_figure(emb, path.stem.replace("_", " "))))
    return views, problems


def plotly_js() -> str:
    """The plotly.js bundle shipped with the ``plotly`` package (inlined: no network needed)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()
