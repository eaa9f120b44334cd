"""A self-contained ``report.html`` for a results folder (inline images, no network needed)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from trainmap._io import atomic_write_bytes, read_json

CAPTIONS_FILE = "captions.json"


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj


def _table(d: dict) -> str:
    flat: dict[str, Any] = {}
    _flatten("", d, flat)
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
        for k, v in flat.items()
    )
    return f"<table>{rows}</table>"


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html``: config, summary table, warnings and every PNG figure.

    Captions come from ``captions.json`` (``{"figure.png": "what to look for"}``) when present;
    warnings from the ``warnings`` list in summary.json.

    Returns:
        The path of the report.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a results folder")
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else {}
    captions = read_json(run_dir / CAPTIONS_FILE) if (run_dir / CAPTIONS_FILE).exists() else {}
    warnings = summary.get("warnings", []) if isinstance(summary, dict) else []
    figs = []
    for png in sorted(run_dir.glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        cap = html.escape(captions.get(png.name, png.stem.replace("_", " ")))
        figs.append(f'<figure><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'
                    f"<figcaption><b>{html.escape(png.name)}</b>: {cap}</figcaption></figure>")
    warn_html = "".join(f"<li>{html.escape(str(w))}</li>" for w in warnings)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trainmap report: {html.escape(run_dir.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
th {{ background: #f4f4f4; font-weight: 600; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
.warn {{ background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.5em 1em; }}
</style></head><body>
<h1>trainmap report: {html.escape(run_dir.name)}</h1>
{f'<div class="warn"><h2>Warnings</h2><ul>{warn_html}</ul></div>' if warnings else ''}
<h2>Summary</h2>{_table(summary)}
<h2>Figures</h2>{''.join(figs) or '<p>No figures.</p>'}
<h2>Configuration</h2>{_table(config)}
</body></html>
"""
    return atomic_write_bytes(run_dir / "report.html", page.encode())
