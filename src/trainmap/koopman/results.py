"""Writing a Koopman results folder: config.json, summary.json, .npy arrays, PNGs, report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from trainmap._io import atomic_save_npy, atomic_savefig, atomic_write_json
from trainmap.report.html import write_report


def write_results(
    out: str | Path,
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray] | None = None,
    figures: Mapping[str, Any] | None = None,
    captions: Mapping[str, str] | None = None,
) -> Path:
    """Write everything atomically and build report.html.

    Args:
        out: results folder (created).
        config: everything needed to rerun (config.json).
        summary: flat headline numbers (summary.json), optionally with a ``warnings`` list.
        arrays: ``{"name": array}`` saved as ``name.npy`` (complex arrays stay complex).
        figures: ``{"name.png": matplotlib Figure}``.
        captions: ``{"name.png": "what to look for"}`` (captions.json).

    Returns:
        The folder path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in (arrays or {}).items():
        atomic_save_npy(out / (name if name.endswith(".npy") else f"{name}.npy"), np.asarray(arr))
    for name, fig in (figures or {}).items():
        atomic_savefig(fig, out / name)
    atomic_write_json(out / "captions.json", dict(captions or {}))
    atomic_write_json(out / "config.json", dict(config))
    atomic_write_json(out / "summary.json", dict(summary))
    write_report(out)
    return out


def ragged(spectra: list[np.ndarray]) -> np.ndarray:
    """Stack spectra of possibly different sizes into a (n, r_max) complex array padded with NaN."""
    r = max((len(s) for s in spectra), default=0)
    arr = np.full((len(spectra), r), np.nan + 0j, dtype=np.complex128)
    for i, s in enumerate(spectra):
        arr[i, : len(s)] = s
    return arr
