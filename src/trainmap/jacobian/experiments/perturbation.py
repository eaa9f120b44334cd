"""Experiment 1 — perturbation response: how far is training linear in θ₀?

Perturb the initial parameters along a right singular vector, θ₀ + ε v_i, retrain, and compare
the change of the final parameters Δ(ε) = θ_T(θ₀ + ε v_i) − θ_T(θ₀) with the Jacobian's
prediction ε σ_i u_i, for ε on a log grid. The relative error ‖Δ − ε σ_i u_i‖ / (ε σ_i) measures
non-linearity; the linear prediction *fails* at the first ε where it exceeds ``tol`` (10%).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from trainmap._io import atomic_save_npy
from trainmap.jacobian.experiments import _common as C
from trainmap.jacobian.experiments import plots
from trainmap.jacobian.precision import precision_context
from trainmap.jacobian.regions import BULK, CHAOTIC, REGIONS, STABLE, JacobianSVD, Thresholds
from trainmap.recipe import Recipe

CAPTIONS = {
    "response.png": "|u_iᵀΔ| (projection of the final change on u_i, solid) and the norm of the rest "
                    "of Δ (dotted) against ε, with the linear prediction ε·σ_i (dashed). Linear "
                    "training keeps the solid line on the dashed one and the dotted one far below.",
    "relative_error.png": "‖Δ − ε σ_i u_i‖ / (ε σ_i) against ε; the grey line is the 10% failure "
                          "threshold. Where a curve crosses it, training stops being linear in θ₀.",
    "test_loss.png": "Test loss of the retrained network against ε (the unperturbed loss dashed).",
}


def default_directions(dec: JacobianSVD) -> dict[str, int]:
    """One index per region: the top chaotic direction (i = 0), and the middle (by index) of the
    bulk and of the stable region. Regions that are empty are left out."""
    out: dict[str, int] = {}
    if dec.codes[0] == CHAOTIC:
        out["chaotic"] = 0
    for name, code in (("bulk", BULK), ("stable", STABLE)):
        idx = np.flatnonzero(dec.codes == code)
        if idx.size:
            out[name] = int(idx[idx.size // 2])
    return out


def linear_range(eps: np.ndarray, rel_err: np.ndarray, tol: float) -> tuple[float | None, float | None]:
    """(largest ε up to which every grid point has error ≤ tol, first ε with error > tol).

    Either is None when the prediction fails at the first grid point / never fails.
    """
    bad = np.flatnonzero(~(rel_err <= tol))  # NaN counts as a failure
    if bad.size == 0:
        return float(eps[-1]), None
    first = int(bad[0])
    return (float(eps[first - 1]) if first > 0 else None), float(eps[first])


def perturbation_response(
    recipe: Recipe,
    theta0: Any,
    out_dir: str | Path,
    *,
    dec: JacobianSVD | None = None,
    eval_set: tuple[Any, Any] | None = None,
    eps: Sequence[float] | np.ndarray | None = None,
    directions: Mapping[str, int] | None = None,
    tol: float = 0.1,
    dtype: Any = np.float64,
    block: int = 32,
    thresholds: Thresholds = Thresholds(),
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Retrain from θ₀ + ε v_i for each direction and ε, and compare with ε σ_i u_i.

    Args:
        recipe: the training run; theta0: (P,) initial parameters.
        out_dir: results folder.
        dec: the Jacobian's SVD at θ₀ (computed when None; needs U).
        eval_set: (x, y) on which the test loss is measured (default: the training data).
        eps: (E,) perturbation sizes (default: 31 points, log-spaced 1e-3 … 1e3).
        directions: ``{name: index i}`` (default: :func:`default_directions`).
        tol: relative error at which the linear prediction counts as failed.
        dtype: precision of the retraining (float64 default: float32 rounding noise, amplified
            by the chaotic directions, would swamp the response at ε ≈ 1e-3).
        block: retrainings per compiled vmap.

    Returns:
        The summary (also in ``summary.json``): per direction its index, σ, region, the linear
        range and failure ε, and the relative error at the smallest ε.

    Arrays written: ``eps.npy`` (E,), ``indices.npy`` (D,), ``sigma.npy`` (D,), ``proj_u.npy``
    (D, E) = u_iᵀΔ, ``rest_norm.npy`` (D, E) = ‖Δ − (u_iᵀΔ) u_i‖, ``rel_error.npy`` (D, E),
    ``test_loss.npy`` (D, E).
    """
    t = C.Timer()
    out = C.prepare_folder(out_dir, resume=resume, overwrite=overwrite)
    if resume and (done := C.finished(out)):
        return done
    eps_arr = np.logspace(-3, 3, 31) if eps is None else np.asarray(eps, dtype=np.float64)
    if eps_arr.ndim != 1 or eps_arr.size == 0 or np.any(eps_arr <= 0):
        raise ValueError("eps must be a non-empty 1-D array of positive sizes")
    if dec is None:
        dec = C.jacobian_svd(recipe, theta0, thresholds=thresholds, progress=progress)
    if dec.U is None:
        raise C.ExperimentError("the perturbation experiment needs the left singular vectors U; "
                                "pass a full SVD (jacobian_svd), not a spectrum")
    dirs = dict(directions) if directions is not None else default_directions(dec)
    P = recipe.num_params
    for name, i in dirs.items():
        if not 0 <= int(i) < P:
            raise ValueError(f"direction {name!r} has index {i}, outside [0, {P})")
    names = list(dirs)
    idx = np.array([int(dirs[n]) for n in names], dtype=np.int64)
    x_eval, y_eval = eval_set if eval_set is not None else (recipe.x, recipe.y)
    dt = np.dtype(dtype)

    with precision_context(dt):
        th0 = jnp.asarray(theta0, dtype=dt)
        V = jnp.asarray(dec.Vt[idx], dtype=dt)  # (D, P)
        starts = (th0[None, None, :] + jnp.asarray(eps_arr, dt)[None, :, None] * V[:, None, :])
        # row 0 is the unperturbed run: one compiled program for all runs
        runs = C.train_many(recipe, jnp.concatenate([th0[None], starts.reshape(-1, P)]), block=block,
                            progress=progress, description="perturbed retraining")
        all_losses = C.loss_acc_many(recipe, runs, x_eval, y_eval)[0]
        base, finals = runs[0], runs[1:]
        base_loss, losses = float(all_losses[0]), all_losses[1:]
    D, E = idx.size, eps_arr.size
    delta = finals.reshape(D, E, P) - base[None, None]
    U = dec.U[:, idx].T.astype(np.float64)  # (D, P)
    sig = dec.S[idx].astype(np.float64)
    proj = np.einsum("dep,dp->de", delta, U)
    rest = np.linalg.norm(delta - proj[..., None] * U[:, None, :], axis=-1)
    pred = eps_arr[None, :] * sig[:, None]
    err = np.linalg.norm(delta - pred[..., None] * U[:, None, :], axis=-1) / np.maximum(pred, 1e-300)
    for name, arr in (("eps", eps_arr), ("indices", idx), ("sigma", sig), ("proj_u", proj),
                      ("rest_norm", rest), ("rel_error", err), ("test_loss", losses.reshape(D, E))):
        atomic_save_npy(out / f"{name}.npy", arr)

    per_dir: dict[str, Any] = {}
    for d, name in enumerate(names):
        lin_max, fail = linear_range(eps_arr, err[d], tol)
        per_dir[name] = {
            "index": int(idx[d]), "sigma": float(sig[d]), "region": REGIONS[2 - int(dec.codes[idx[d]])],
            "eps_linear_max": lin_max, "eps_fail": fail,
            "rel_error_at_min_eps": float(err[d, 0]),
            "test_loss_at_max_eps": float(losses.reshape(D, E)[d, -1]),
        }
    summary: dict[str, Any] = {
        "directions": per_dir, "tol": tol, "eps_min": float(eps_arr[0]), "eps_max": float(eps_arr[-1]),
        "num_eps": int(E), "test_loss_unperturbed": base_loss, "wall_time_s": t(),
    }
    summary["finding"] = _finding(per_dir)
    plots.perturbation_figures(out, names, eps_arr, sig, proj, rest, err, losses.reshape(D, E),
                               base_loss, tol)
    cfg = {**C.recipe_config(recipe), **(config or {}), "experiment": "perturbation",
           "eps": eps_arr, "directions": dict(zip(names, idx.tolist())), "tol": tol,
           "dtype": dt.name, "thresholds": C.thresholds_config(dec.thresholds)}
    return C.finish(out, cfg, summary, CAPTIONS)


def _finding(per_dir: Mapping[str, Any]) -> dict[str, Any]:
    parts = []
    for name, d in per_dir.items():
        if d["eps_fail"] is None:
            parts.append(f"{name} (σ={d['sigma']:.3g}) stays linear over the whole grid")
        else:
            parts.append(f"{name} (σ={d['sigma']:.3g}) fails at ε={d['eps_fail']:.3g}")
    bulk = per_dir.get("bulk")
    others = [d["eps_fail"] or np.inf for n, d in per_dir.items() if n != "bulk"]
    holds = None
    if bulk is not None and others:
        holds = bool((bulk["eps_fail"] or np.inf) >= max(others))
    return {"claim": "training is linear in θ₀ over a wide range of ε, widest along the bulk",
            "holds": holds, "statement": "; ".join(parts)}
