"""Published reference values shown beside a run's own numbers in its report.

The training-Jacobian values are those of Scherlis & Belrose (2024) for their 4,810-parameter MLP
on the UCI digits ("paper": as the paper states them) and of their public code rerun by
``python bench/authors_route.py`` ("authors' code": ``bench/results/authors_route.json``).
"""

from __future__ import annotations

import html
from typing import Any

#: row label -> (paper, authors' code rerun); the run's own value is read by :func:`_jacobian_rows`
JACOBIAN_REFERENCE: dict[str, tuple[str, str]] = {
    "chaotic (σ > 1.1)": ("a few hundred", "690 (14.3%)"),
    "bulk (|σ−1| ≤ 0.1)": ("≈ 62%", "3,021 (62.8%)"),
    "stable (σ < 0.9)": ("several hundred", "1,099 (22.8%)"),
    "|σ−1| ≤ 0.01": ("", "1,838 (38.2%)"),
    "|σ−1| ≤ 0.001": ("", "1,033 (21.5%)"),
    "σ_max": ("≈ 15", "15.03"),
    "median |cos(u_i, v_i)| over |σ−1| < 1e-3": ("≈ 1", "0.9999"),
}


def _count(entry: Any, P: int) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("count"), int) or P <= 0:
        return "—"
    return f"{entry['count']:,} ({100 * entry['count'] / P:.1f}%)"


def _jacobian_rows(summary: dict) -> dict[str, str]:
    P = int(summary.get("num_params") or 0)
    authors = summary.get("authors") or {}
    counts = authors.get("bulk_counts") or {}
    near = authors.get("near_one") or {}
    cos = near.get("median_abs_cos_uv")
    smax = summary.get("sigma_max")
    return {
        "chaotic (σ > 1.1)": _count(summary.get("chaotic"), P),
        "bulk (|σ−1| ≤ 0.1)": _count(summary.get("bulk"), P),
        "stable (σ < 0.9)": _count(summary.get("stable"), P),
        "|σ−1| ≤ 0.01": _count(counts.get("0.01"), P),
        "|σ−1| ≤ 0.001": _count(counts.get("0.001"), P),
        "σ_max": f"{smax:.2f}" if isinstance(smax, (int, float)) else "—",
        "median |cos(u_i, v_i)| over |σ−1| < 1e-3": f"{cos:.4f}" if isinstance(cos, (int, float)) else "—",
    }


def comparison_html(summary: Any) -> str:
    """An HTML table of this run beside the published values, or "" when the summary is not a
    training-Jacobian spectrum (it needs ``bulk``, ``sigma_max`` and ``authors``)."""
    if not (isinstance(summary, dict) and {"bulk", "sigma_max", "authors"} <= set(summary)):
        return ""
    mine = _jacobian_rows(summary)
    P = summary.get("num_params")
    head = ("<tr><th></th><th>this run" + (f" (P = {P:,})" if isinstance(P, int) else "") + "</th>"
            "<th>paper (P = 4,810)</th><th>authors' code, rerun (P = 4,810)</th></tr>")
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(mine[k])}</td><td>{html.escape(p)}</td>"
                   f"<td>{html.escape(a)}</td></tr>" for k, (p, a) in JACOBIAN_REFERENCE.items())
    return ('<h2 id="paper">Against the paper</h2><p class="muted">Scherlis &amp; Belrose (2024), their MLP '
            "64→64→10 on the UCI digits; the authors' code rerun by bench/authors_route.py. Other setups "
            "are not expected to match.</p>"
            f'<table class="headline">{head}{rows}</table>')
