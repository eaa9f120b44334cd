"""Writing a Koopman results folder: config.json, summary.json, .npy arrays, PNGs, manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from trainmap.results import open_results


def write_results(
    out: str | Path,
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray] | None = None,
    figures: Mapping[str, Any] | None = None,
    captions: Mapping[str, str] | None = None,
    *,
    kind: str = "koopman",
    mode: str = "new",
) -> Path:
    """Write a Koopman results folder through :func:`trainmap.results.open_results` (the report is
    built from it by the CLI).

    Args:
        out: results folder (created).
        config: everything needed to rerun (config.json).
        summary: flat headline numbers (summary.json), optionally with a ``warnings`` list.
        arrays: ``{"name": array}`` saved as ``name.npy`` (complex arrays stay complex).
        figures: ``{"name.png": matplotlib Figure}``.
        captions: ``{"name.png": "what to look for"}`` (captions.json).
        kind: what the folder holds (a folder of another kind is refused).
        mode: ``"new"`` (default: a folder holding results is refused), ``"overwrite"`` (replace
            what trainmap wrote there) or ``"resume"``.

    Returns:
        The folder path.
    """
    folder = open_results(out, mode, kind=kind, config=config)
    folder.finish(summary, arrays={(k[:-4] if k.endswith(".npy") else k): np.asarray(v)
                                   for k, v in (arrays or {}).items()},
                  figures=figures, captions=captions or {})
    return folder.path


def ragged(spectra: list[np.ndarray]) -> np.ndarray:
    """Stack spectra of possibly different sizes into a (n, r_max) complex array padded with NaN."""
    r = max((len(s) for s in spectra), default=0)
    arr = np.full((len(spectra), r), np.nan + 0j, dtype=np.complex128)
    for i, s in enumerate(spectra):
        arr[i, : len(s)] = s
    return arr
