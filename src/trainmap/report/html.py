"""A self-contained ``report.html`` for a results folder (inline images, styles and scripts).

The page reads only what a results folder holds (see :mod:`trainmap.results`):

- ``summary.json``: the headline numbers, shown as a table, and its ``warnings`` list;
- ``config.json``: everything needed to rerun, shown in full;
- ``*.png``: every figure, inlined as base64, with the one-line caption from ``captions.json``
  (``{"figure.png": "what to look for"}``); figures named in captions.json come first, in its order;
- interactive views (plotly, inlined; see :mod:`trainmap.report.interactive`);
- ``*.npy``: a list of the arrays with their shapes and dtypes.

Besides the lens's own warnings the report adds warnings it can see for itself: non-finite
headline numbers (NaN is stored as ``null``), estimates flagged as not converged
(``converged: false``), diverged training (``diverged: true``, or a ``*losses*.npy`` curve that ends
non-finite or far above its start), and a note on float32 precision when ``config.json`` says
``"dtype": "float32"``. Nothing in the page is fetched from the network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from trainmap._io import atomic_write_bytes, load_npy, read_json
from trainmap.report.papers import comparison_html
from trainmap.results import MANIFEST, reopen, results_folders

CAPTIONS_FILE = "captions.json"
REPORT_FILE = "report.html"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FLOAT32_NOTE = ("Computed in float32: differences below about 1e-6 relative to the largest value "
                "(for example |σ−1| < 1e-5) are not resolved; rerun with float64 where they matter.")
DIVERGENCE_FACTOR = 10.0  # a loss curve ending this many times above its start counts as diverged


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj


def _fmt(v: Any, key: str = "", null: str = "—") -> str:
    """A compact human reading of one JSON value; ``key`` (its name) adds units: ``*fraction*`` and
    ``*share*`` in [0, 1] as percentages, ``*_s`` (or inside a ``*_s`` section) in seconds,
    ``*_bytes`` in MiB or GiB."""
    leaf = key.rsplit(".", 1)[-1].lower()
    if v is None:
        return null
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if ("fraction" in leaf or "share" in leaf) and 0 <= v <= 1:
            return f"{100 * v:.3g} %"
        if leaf.endswith("_s") or key.split(".", 1)[0].endswith("_s"):  # wall_time_s.svd: seconds too
            return f"{v:.3g} s"
        if leaf.endswith("_bytes"):
            return f"{v / 2**30:.3g} GiB" if v >= 2**30 else f"{v / 2**20:.3g} MiB"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v == 0 or (1e-3 <= abs(v) < 1e6):
            return f"{v:.4g}"
        return f"{v:.3e}"
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        items = [_fmt(x, null=null) for x in v[:8]]
        more = f", … ({len(v)} items)" if len(v) > 8 else ""
        return "[" + ", ".join(items) + more + "]"
    return json.dumps(v)


def _rows(flat: Mapping[str, Any], null: str, strip: str = "") -> str:
    muted = ' class="muted"'
    return "".join(
        f"<tr><th>{html.escape(k[len(strip):])}</th><td{muted if v is None else ''}>"
        f"{html.escape(_fmt(v, k, null))}</td></tr>" for k, v in flat.items())


def _table(d: Any, css: str = "", null: str = "—") -> str:
    """A two-column table of the flattened ``d``; None reads ``null`` (muted, not an error)."""
    flat: dict[str, Any] = {}
    _flatten("", d if isinstance(d, dict) else {"value": d}, flat)
    if not flat:
        return "<p class=\"muted\">(empty)</p>"
    return f'<table class="{css}">{_rows(flat, null)}</table>'


def _grouped_table(d: Any) -> str:
    """The headline numbers grouped by meaning: top-level numbers first, then one titled block per
    top-level section (a region, the metrics, the engine, the timings, ...)."""
    if not isinstance(d, dict) or not d:
        return _table(d, "headline")
    top = {k: v for k, v in d.items() if not (isinstance(v, dict) and v)}
    parts = []
    if top:
        parts.append(_rows(top, "—"))
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat: dict[str, Any] = {}
            _flatten(k, v, flat)
            parts.append(f'<tr class="group"><th colspan="2">{html.escape(k.replace("_", " "))}</th></tr>'
                         + _rows(flat, "—", strip=k + "."))
    return f'<table class="headline">{"".join(parts)}</table>'


def _read(run_dir: Path, name: str, problems: list[str]) -> Any:
    path = run_dir / name
    if not path.exists():
        return {}
    try:
        return read_json(path)
    except ValueError as exc:
        problems.append(str(exc))
        return {}


def derived_warnings(run_dir: Path, config: Any, summary: Any) -> tuple[list[str], list[str]]:
    """Warnings the report can see in a results folder without knowing the lens.

    Returns:
        ``(warnings, notes)``: warnings are problems with the numbers; notes are precision caveats.
    """
    warns: list[str] = []
    notes: list[str] = []
    if isinstance(summary, dict):
        flat: dict[str, Any] = {}
        _flatten("", {k: v for k, v in summary.items() if k != "warnings"}, flat)
        nonfinite = [k for k, v in flat.items() if v is None]
        if nonfinite:
            shown = ", ".join(nonfinite[:6]) + (f" and {len(nonfinite) - 6} more" if len(nonfinite) > 6 else "")
            warns.append(f"Headline numbers that are NaN, infinite or missing: {shown}. Unless the lens "
                         "leaves them empty on purpose, the training diverged or an estimate failed.")
        for k, v in flat.items():
            leaf = k.rsplit(".", 1)[-1].lower()
            if leaf in ("converged", "is_converged") and v is False:
                warns.append(f"{k} is false: this estimate did not converge; treat its numbers as rough.")
            if leaf == "diverged" and v is True:
                warns.append(f"{k} is true: the training diverged.")
    for path in sorted(run_dir.glob("*loss*.npy")):
        try:
            arr = load_npy(path, mmap=True)
            if arr.dtype.kind != "f" or arr.size == 0 or arr.size > 10_000_000:
                continue
            curve = np.asarray(arr, dtype=float)
            curve = curve.reshape(curve.shape[0], -1) if curve.ndim > 1 else curve[:, None]
        except ValueError:
            continue
        if not np.isfinite(curve).all():
            warns.append(f"{path.name} contains NaN or infinite losses: the training diverged.")
        elif curve.shape[0] > 1:
            start, end = np.abs(curve[0]), np.abs(curve[-1])
            if np.any(end > DIVERGENCE_FACTOR * np.maximum(start, 1e-12)):
                warns.append(f"{path.name} ends more than {DIVERGENCE_FACTOR:g}× above where it "
                             "started: the training diverged; lower the learning rate.")
    if isinstance(config, dict) and str(config.get("dtype", "")).lower() == "float32":
        notes.append(FLOAT32_NOTE)
    return warns, notes


def _ordered_pngs(run_dir: Path, captions: dict) -> list[Path]:
    pngs = {p.name: p for p in run_dir.glob("*.png") if not p.name.startswith(".")}
    first = [pngs.pop(k) for k in captions if k in pngs]
    return first + [pngs[k] for k in sorted(pngs)]


def _figure_html(png: Path, caption: str, problems: list[str]) -> str:
    data = png.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        problems.append(f"{png.name} is not a valid PNG file and was left out.")
        return ""
    b64 = base64.b64encode(data).decode()
    anchor = "fig-" + html.escape(png.stem)
    return (f'<figure id="{anchor}"><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{b64}">'
            f"<figcaption><b>{html.escape(png.name)}</b>: {html.escape(caption)}</figcaption></figure>")


def _arrays_html(run_dir: Path) -> str:
    from trainmap.report.interactive import _npy_header

    rows = []
    for p in sorted(run_dir.glob("*.npy")):
        head = _npy_header(p)
        shape, dtype = (("?", "unreadable") if head is None
                        else ("×".join(str(s) for s in head[0]) or "scalar", str(head[1])))
        rows.append(f"<tr><th>{html.escape(p.name)}</th><td>{shape}</td><td>{dtype}</td>"
                    f"<td>{p.stat().st_size / 1e6:.2f} MB</td></tr>")
    if not rows:
        return ""
    return ("<h2 id=\"arrays\">Arrays</h2><table><tr><th>file</th><th>shape</th><th>dtype</th>"
            f"<th>size</th></tr>{''.join(rows)}</table>")


def _href(relative: str) -> str:
    """A link to a file inside the results folder: always a relative path (``./name``, percent-
    encoded), so that a file named ``javascript:...`` is never a live script link."""
    from urllib.parse import quote

    return html.escape("./" + quote(relative.lstrip("/")))


def _subreports_html(run_dir: Path) -> str:
    """Links to the reports of results folders nested one level down (e.g. one per experiment)."""
    subs = sorted(p for p in run_dir.glob(f"*/{REPORT_FILE}") if not p.parent.name.startswith("."))
    if not subs:
        return ""
    items = "".join(f'<li><a href="{_href(p.parent.name + "/" + REPORT_FILE)}">{html.escape(p.parent.name)}</a></li>'
                    for p in subs)
    return f'<h2 id="subreports">Nested results folders</h2><ul>{items}</ul>'


def _script_json(obj: Any) -> str:
    """JSON safe to place inside a <script> element."""
    return json.dumps(obj, allow_nan=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def _clean(obj: Any) -> Any:
    """Replace non-finite floats by None so the figure is valid JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


#: the shared plotly.js bundle written beside the reports of a folder tree (``plotly="shared"``)
PLOTLY_FILE = "plotly.min.js"


def _interactive_html(views: list, plotly_src: str | None = None) -> str:
    if not views:
        return ""
    if plotly_src is None:
        from trainmap.report.interactive import plotly_js

        loader = f"<script>{plotly_js()}</script>"
    else:
        missing = _script_json(f"The interactive views need {PLOTLY_FILE}, which was not found at {plotly_src}; "
                               "rebuild with `trainmap report DIR` (without --shared-plotly) for a "
                               "self-contained page.")
        loader = (f'<script src="{_href(plotly_src)}"></script><script>if(!window.Plotly){{var p=document.createElement'
                  f"('p');p.className='warn';p.textContent={missing};document.currentScript.after(p);}}</script>")
    parts = [loader, '<h2 id="interactive">Interactive views</h2>']
    for i, v in enumerate(views):
        div = f"plotly-{i}"
        fig = _clean(v.figure)
        layout = fig.get("layout", {})
        link = (f' Also as a standalone page: <a href="{_href(v.source)}">{html.escape(v.source)}</a>.'
                if v.source else "")
        parts.append(
            f'<figure class="interactive"><div id="{div}" class="plotly-view"></div>'
            f"<figcaption><b>{html.escape(v.name)}</b> (interactive): {html.escape(v.caption)}{link}</figcaption></figure>"
            f"<script>(function(){{var el=document.getElementById('{div}');"
            f"try{{Plotly.newPlot(el,{_script_json(fig.get('data', []))},{_script_json(layout)},"
            f"{{responsive:true,displaylogo:false}});}}catch(e){{el.textContent='This view could not be drawn: '+e;"
            f"el.className+=' failed';console.error('trainmap report: view {html.escape(v.name)} failed: '+e);}}}})();</script>"
        )
    return "".join(parts)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 1.5em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
nav { font-size: 0.9em; color: #555; } nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; font-weight: 600; } td.bad { color: #b00020; font-weight: 600; }
tr.group th { background: #e4e8f0; text-transform: capitalize; }
table.headline td { font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.92em; color: #333; margin-top: 0.3em; }
.plotly-view { width: 100%; min-height: 400px; } .failed { color: #b00020; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.3em 1em; margin: 1em 0; }
.note { background: #eef5ff; border-left: 4px solid #4a80c8; padding: 0.3em 1em; margin: 1em 0; }
.muted { color: #777; } footer { margin-top: 3em; font-size: 0.8em; color: #888; }
details summary { cursor: pointer; font-weight: 600; }
"""


def render_report(run_dir: str | Path, *, interactive: bool = True, title: str | None = None,
                  plotly_src: str | None = None) -> str:
    """The report page of a results folder as an HTML string (see :func:`write_report`);
    ``plotly_src``: a relative path to a shared plotly.js instead of inlining it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a results folder (no such directory); pass the folder "
                                "a trainmap command wrote, e.g. results/jacobian")
    problems: list[str] = []
    config = _read(run_dir, "config.json", problems)
    summary = _read(run_dir, "summary.json", problems)
    captions = _read(run_dir, CAPTIONS_FILE, problems)
    captions = captions if isinstance(captions, dict) else {}
    lens_warnings = summary.get("warnings", []) if isinstance(summary, dict) else []
    lens_warnings = lens_warnings if isinstance(lens_warnings, list) else [lens_warnings]
    extra_warnings, notes = derived_warnings(run_dir, config, summary)
    headline = {k: v for k, v in summary.items() if k != "warnings"} if isinstance(summary, dict) else summary

    figs = [_figure_html(p, str(captions.get(p.name, p.stem.replace("_", " "))), problems)
            for p in _ordered_pngs(run_dir, captions)]
    figs = [f for f in figs if f]
    views: list = []
    if interactive:
        from trainmap.report.interactive import find_views

        views, view_problems = find_views(run_dir, captions)
        problems += view_problems

    warnings = [str(w) for w in lens_warnings] + extra_warnings + problems
    name = title or run_dir.resolve().name
    warn_html = ("<div class=\"warn\" id=\"warnings\"><h2>Warnings</h2><ul>"
                 + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>") if warnings else ""
    note_html = "".join(f'<div class="note">{html.escape(n)}</div>' for n in notes)
    paper_html = comparison_html(summary)
    nav = (['<a href="#paper">against the paper</a>'] if paper_html else []) + ['<a href="#summary">summary</a>']
    if views:
        nav.append('<a href="#interactive">interactive views</a>')
    nav.append('<a href="#figures">figures</a>')
    nav.append('<a href="#config">configuration</a>')
    try:
        from importlib.metadata import version

        ver = version("trainmap")
    except Exception:  # noqa: BLE001
        ver = "?"
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>trainmap report: {html.escape(name)}</title>
<style>{STYLE}</style></head><body>
<h1>trainmap report: {html.escape(name)}</h1>
<nav>{''.join(nav)}</nav>
{warn_html}{note_html}
{_subreports_html(run_dir)}
{paper_html}
<h2 id="summary">Summary</h2>{_grouped_table(headline)}
{_interactive_html(views, plotly_src)}
<h2 id="figures">Figures</h2>{''.join(figs) or '<p class="muted">No figures.</p>'}
{_arrays_html(run_dir)}
<h2 id="config">Configuration</h2>
<details open><summary>config.json (everything needed to rerun; "auto": chosen by trainmap)</summary>{_table(config, null="auto")}</details>
<footer>Written by trainmap {html.escape(ver)} on {stamp} from {html.escape(name)}/. {"Self-contained: opens offline." if plotly_src is None else "Opens offline; its interactive views read the shared " + html.escape(PLOTLY_FILE) + "."}</footer>
</body></html>
"""


def write_report(run_dir: str | Path, *, interactive: bool = True, title: str | None = None,
                 plotly: str = "inline", plotly_root: str | Path | None = None) -> Path:
    """Write ``run_dir/report.html``: warnings, summary table, interactive views, figures, config.

    Args:
        run_dir: a results folder (config.json, summary.json, figures, arrays).
        interactive: inline plotly views (eigenvalues, embeddings, ``*.plotly.json``); they add
            about 5 MB of plotly.js to the page, once.
        title: page title (default: the folder name).
        plotly: ``"inline"`` (self-contained page) or ``"shared"``: write ``plotly.min.js`` once into
            ``plotly_root`` (default ``run_dir``) and load it from there by a relative path, so that the
            reports of a folder tree share one copy.
        plotly_root: the folder holding the shared ``plotly.min.js`` (``run_dir`` or a parent of it).

    Returns:
        The path of the report (written atomically).
    """
    if plotly not in ("inline", "shared"):
        raise ValueError(f"plotly must be 'inline' or 'shared', got {plotly!r}")
    src = None
    if plotly == "shared" and interactive:
        root = Path(plotly_root or run_dir).resolve()
        here = Path(run_dir).resolve()
        if root != here and root not in here.parents:
            raise ValueError(f"plotly_root {root} must be {here} or one of its parent folders")
        shared = root / PLOTLY_FILE
        if not shared.exists():
            from trainmap.report.interactive import plotly_js

            atomic_write_bytes(shared, plotly_js().encode())
            if (root / MANIFEST).exists():  # a results folder's own file: --overwrite removes it too
                reopen(root).add_file(PLOTLY_FILE)
        src = "/".join([".."] * len(here.relative_to(root).parts) + [PLOTLY_FILE])
    page = render_report(run_dir, interactive=interactive, title=title, plotly_src=src)
    path = atomic_write_bytes(Path(run_dir) / REPORT_FILE, page.encode())
    if (Path(run_dir) / MANIFEST).exists():  # recorded, so that --overwrite removes it too
        reopen(run_dir).add_file(REPORT_FILE)
    return path


def write_reports(run_dir: str | Path, **kwargs: Any) -> Path:
    """:func:`write_report` for ``run_dir`` and every finished results folder below it (the
    sub-folders of an experiment that runs others, e.g. ``trainmap jacobian reproduce``).

    Returns:
        The path of the top folder's report.
    """
    root = Path(run_dir)
    if kwargs.get("plotly") == "shared":
        kwargs.setdefault("plotly_root", root)
    sub_kwargs = {k: v for k, v in kwargs.items() if k != "title"}  # a title names the top report only
    for sub in results_folders(root):
        if sub != root and reopen(sub).summary is not None:
            write_report(sub, **sub_kwargs)
    return write_report(root, **kwargs)
