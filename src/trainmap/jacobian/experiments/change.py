"""Experiment 6 — the parameter change θ_T − θ₀ in the right-singular basis of J.

c_i = v_iᵀ(θ_T − θ₀). Since V is orthonormal, Σ c_i² = ‖θ_T − θ₀‖², so each region's share of
the squared change can be compared with its share of the dimensions (what an isotropic change
would give).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from trainmap._io import atomic_save_npy
from trainmap.jacobian.experiments import _common as C
from trainmap.jacobian.experiments import plots
from trainmap.jacobian.regions import REGIONS, JacobianSVD, Thresholds, project_change, region_mask
from trainmap.protocol import jit_if_traceable
from trainmap.recipe import Recipe

CAPTIONS = {
    "change_by_index.png": "Left: |v_iᵀ(θ_T − θ₀)| against i, coloured by region. Right: cumulative "
                           "share of ‖θ_T − θ₀‖² (dashed: an isotropic change). A flat stretch over "
                           "the bulk means training barely moved along bulk directions.",
}


def change_by_region(coef: np.ndarray, codes: np.ndarray) -> dict[str, Any]:
    """Per region: share of Σc², share of dimensions, their ratio, median and RMS |c|.

    Args:
        coef: (P,) coordinates c_i; codes: (P,) region codes.
    """
    c2 = np.asarray(coef, np.float64) ** 2
    total = float(c2.sum())
    P = c2.size
    out: dict[str, Any] = {}
    for r in REGIONS:
        m = region_mask(codes, r)
        n = int(m.sum())
        share = float(c2[m].sum() / total) if total > 0 else None
        out[r] = {"count": n, "energy_fraction": share, "dimension_fraction": n / P,
                  "energy_over_dimension": (share / (n / P)) if n and share is not None else None,
                  "median_abs": float(np.median(np.abs(coef[m]))) if n else None,
                  "rms": float(np.sqrt(c2[m].mean())) if n else None}
    return out


def parameter_change(
    recipe: Recipe,
    theta0: Any,
    out_dir: str | Path,
    *,
    dec: JacobianSVD | None = None,
    thetaT: Any = None,
    thresholds: Thresholds = Thresholds(),
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """How far training moved along each singular direction and region.

    Args:
        recipe, theta0: the run; out_dir: results folder.
        dec: the Jacobian's SVD/spectrum at θ₀ (Vt and codes used; computed when None).
        thetaT: (P,) final parameters (trained from ``theta0`` when None).

    Returns:
        Summary: ‖θ_T − θ₀‖ and, per region, the share of ‖θ_T − θ₀‖² against the share of
        dimensions (see :func:`change_by_region`).

    Arrays: ``coef.npy`` (P,) = Vᵀ(θ_T − θ₀).
    """
    t = C.Timer()
    out = C.prepare_folder(out_dir, resume=resume, overwrite=overwrite)
    if resume and (done := C.finished(out)):
        return done
    if dec is None:
        dec = C.jacobian_spectrum(recipe, theta0, thresholds=thresholds, progress=progress)
    th0 = np.asarray(theta0)
    thT = np.asarray(jit_if_traceable(recipe, recipe.train)(theta0) if thetaT is None else thetaT)
    coef = project_change(dec.Vt, th0, thT)
    atomic_save_npy(out / "coef.npy", coef)
    regions = change_by_region(coef, dec.codes)
    summary: dict[str, Any] = {"change_norm": float(np.linalg.norm(thT - th0)), "regions": regions,
                               "wall_time_s": t()}
    per_dim = {r: v["energy_over_dimension"] for r, v in regions.items()}
    others = [v for r, v in per_dim.items() if r != "bulk" and v is not None]
    holds = None if per_dim["bulk"] is None or not others else bool(per_dim["bulk"] < min(others))
    summary["bulk_per_dimension_vs_others"] = (per_dim["bulk"] / min(others)) if holds is not None else None
    summary["finding"] = {
        "claim": "per dimension, training moves less along the bulk than along the chaotic and "
                 "the stable regions (share of ‖θ_T − θ₀‖² over share of dimensions)",
        "holds": holds,
        "statement": ", ".join(f"{r}: {v['energy_fraction']:.3g} of the squared change in "
                               f"{v['dimension_fraction']:.3g} of the dimensions"
                               for r, v in regions.items() if v["energy_fraction"] is not None),
    }
    plots.change_figures(out, coef, dec.codes)
    cfg = {**C.recipe_config(recipe), **(config or {}), "experiment": "change",
           "thresholds": C.thresholds_config(dec.thresholds)}
    return C.finish(out, cfg, summary, CAPTIONS)
