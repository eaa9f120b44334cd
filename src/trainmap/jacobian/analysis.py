"""End-to-end training-Jacobian analysis of a recipe, written to a results folder.

``analyze(recipe, theta0, out_dir)`` trains once (checking for divergence), computes the exact
Jacobian in resumable chunks, decomposes it, and writes (see :mod:`trainmap.results`):

* ``config.json`` — the recipe's config and the engine's settings;
* ``summary.json`` — region counts/fractions, σ_max, σ_min, median |cos(u_i, v_i)| per region,
  loss and accuracy before/after training, wall times, warnings;
* arrays — ``jacobian.npy`` (P, P), ``singular_values.npy`` (P,), ``svd_U.npy`` (P, P),
  ``svd_Vt.npy`` (P, P), ``regions.npy`` (P,) int8 (0 stable, 1 bulk, 2 chaotic),
  ``cos_uv.npy`` (P,), ``delta_proj.npy`` (P,) = Vᵀ(θ_T − θ₀), ``theta0.npy``, ``thetaT.npy``,
  ``train_losses.npy`` (T,);
* figures — ``spectrum.png``, ``sigma_minus_one.png``, ``cos_uv.png``, ``delta_proj.png``;
* ``manifest.json`` (see :mod:`trainmap.results`); ``report.html`` is added by the report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from trainmap._io import read_json
from trainmap._progress import stage
from trainmap.jacobian import figures
from trainmap.jacobian.exact import exact_jacobian, plan_engine
from trainmap.jacobian.precision import check_dtype, precision_context
from trainmap.jacobian.regions import BULK_TOLERANCES, JacobianSVD, Thresholds, project_change, region_summary, svd
from trainmap.protocol import TrainingMap
from trainmap.recipe import check_training, classification_metrics
from trainmap.results import ResultsFolder, mode_of, open_results, reopen

CAPTIONS = {
    "spectrum.png": "Singular values of J, descending, log scale; shaded: chaotic (σ > 1.1), bulk "
                    "(|σ−1| ≤ 0.1), stable (σ < 0.9). Look for the wide flat bulk at σ ≈ 1.",
    "sigma_minus_one.png": "|σ−1| on a log scale: how close the bulk lies to 1 (float32 resolves "
                           "about 1e-6).",
    "cos_uv.png": "cos(u_i, v_i): in the bulk left and right singular vectors coincide (≈ 1).",
    "delta_proj.png": "|v_iᵀ(θ_T − θ₀)|: how far training moved along each singular direction.",
    "sigma_histogram.png": "How many singular values lie at each σ (log-spaced bins, log axes), stacked by "
                           "region: the bulk is the tall peak at σ = 1, the chaotic tail to its right.",
    "training_loss.png": "The batch loss of every step: a run that did not train (or diverged) makes "
                         "its Jacobian hard to read.",
}


def train_and_record(
    recipe: TrainingMap, theta0: Any, folder: ResultsFolder, dtype: np.dtype,
    eval_sets: Mapping[str, tuple[Any, Any]] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train once (stopping on divergence), evaluate before/after, save θ₀, θ_T and the losses.

    Returns:
        (theta0 (P,), thetaT (P,), metrics ``{set: {"before": {...}, "after": {...}}}``).
    """
    sets = dict(eval_sets) if eval_sets is not None else {"train": (recipe.x, recipe.y)}
    with precision_context(dtype):
        th0 = recipe.check_theta(jnp.asarray(theta0, dtype=dtype))
        thT, losses = check_training(recipe, th0)
        metrics = {name: {"before": classification_metrics(recipe.predict(th0, x), y),
                          "after": classification_metrics(recipe.predict(thT, x), y)}
                   for name, (x, y) in sets.items()}
    th0_np, thT_np = np.asarray(th0), np.asarray(thT)
    folder.save_array("theta0", th0_np)
    folder.save_array("thetaT", thT_np)
    folder.save_array("train_losses", losses)
    folder.save_figure("training_loss.png", figures.loss_curve_figure(losses))
    return th0_np, thT_np, metrics


def decompose(
    J: np.ndarray, theta0: np.ndarray, thetaT: np.ndarray,
    thresholds: Thresholds = Thresholds(), svd_dtype: Any = None, progress: bool = False,
) -> tuple[JacobianSVD, np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """SVD J and plot it (``progress``: a line per stage).

    Returns:
        (svd, delta_proj (P,) = Vᵀ(θ_T − θ₀), the spectral arrays by name, the figures by name).
    """
    with stage(f"SVD of J ({J.shape[0]:,} x {J.shape[1]:,})", progress):
        dec = svd(J, thresholds, svd_dtype)
        proj = project_change(dec.Vt, theta0, thetaT)
    arrays = {"singular_values": dec.S, "svd_U": dec.U, "svd_Vt": dec.Vt, "regions": dec.codes,
              "cos_uv": dec.cos_uv, "delta_proj": proj}
    with stage("figures", progress):
        figs = {"spectrum.png": figures.spectrum_figure(dec.S, dec.codes, thresholds),
                "sigma_minus_one.png": figures.distance_from_one_figure(dec.S, dec.codes, thresholds),
                "cos_uv.png": figures.cosine_figure(dec.cos_uv, dec.codes),
                "delta_proj.png": figures.change_projection_figure(proj, dec.codes),
                "sigma_histogram.png": figures.sigma_histogram_figure(dec.S, dec.codes, thresholds)}
    return dec, proj, arrays, figs


def load_svd(run_dir: str | Path) -> JacobianSVD:
    """Read the decomposition saved by :func:`analyze` from a results folder (checksums verified)."""
    run = reopen(run_dir)
    cfg = read_json(run.path / "config.json")
    if not run.has("svd_U.npy"):
        raise ValueError(f"{run.path} holds no singular vectors (it was written with --no-save-vectors); "
                         "rerun trainmap jacobian there with --overwrite and without that option")
    th = Thresholds(cfg["thresholds"]["stable_below"], cfg["thresholds"]["chaotic_above"])
    return JacobianSVD(run.load_array("svd_U"), run.load_array("singular_values"),
                       run.load_array("svd_Vt"), run.load_array("regions"),
                       run.load_array("cos_uv"), th)


def analyze(
    recipe: TrainingMap,
    theta0: Any,
    out_dir: str | Path,
    *,
    eval_sets: Mapping[str, tuple[Any, Any]] | None = None,
    dtype: Any = np.float32,
    thresholds: Thresholds = Thresholds(),
    bulk_tolerances: Sequence[float] = BULK_TOLERANCES,
    chunk_size: int | None = None,
    memory_budget_gb: float = 2.0,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    config: Mapping[str, Any] | None = None,
    mode: str = "auto",
    primal: str = "auto",
    save_vectors: bool = True,
) -> dict[str, Any]:
    """Compute, decompose and report the exact training Jacobian of ``recipe`` from ``theta0``.

    Args:
        recipe: any :class:`~trainmap.protocol.TrainingMap`: a JAX :class:`~trainmap.recipe.Recipe`
            or a :func:`trainmap.torch.torch_recipe` (your own model, loss, optimizer, data).
        theta0: (P,) initial flat parameters.
        out_dir: results folder (created).
        eval_sets: ``{"train": (x, y), "test": (x, y), ...}`` classification sets on which loss
            and accuracy are reported before and after training (default: the recipe's data).
        dtype: float32 or float64 for the Jacobian and the SVD.
        thresholds: region boundaries on σ.
        bulk_tolerances: tolerances of the authors' bulk counts #{|σ−1| ≤ tol} (``summary["authors"]``).
        chunk_size, memory_budget_gb: see :func:`~trainmap.jacobian.exact.exact_jacobian`.
        resume: continue an interrupted run in ``out_dir``.
        overwrite: remove what trainmap wrote at ``out_dir`` first (see :mod:`trainmap.results`).
        progress: progress bar over chunks.
        stop_after: stop after this many new chunks (raises KeyboardInterrupt; for tests).
        config: extra JSON-able settings recorded in config.json.
        mode, primal: engine settings, see :func:`~trainmap.jacobian.exact.exact_jacobian`.
        save_vectors: write the singular vectors ``svd_U.npy`` and ``svd_Vt.npy`` (2 P² floats;
            the per-direction results, ``cos_uv`` and ``delta_proj``, are written either way).

    Returns:
        The summary dictionary (also written to ``summary.json``). The report is built from the
        folder by :func:`trainmap.report.write_report` (the CLI does it).
    """
    t_start = time.perf_counter()
    dt = check_dtype(dtype)
    check_engine_options(chunk_size, memory_budget_gb, mode, primal)
    cfg = {**recipe.config, **(config or {}), "dtype": dt.name, "chunk_size": chunk_size,
           "memory_budget_gb": memory_budget_gb, "mode": mode, "primal": primal,
           **({} if save_vectors else {"save_vectors": False}), "num_params": recipe.num_params,
           "num_steps": recipe.num_steps,
           "thresholds": {"stable_below": thresholds.low, "chaotic_above": thresholds.high},
           "recipe_fingerprint": recipe.fingerprint()}
    folder = open_results(out_dir, mode_of(resume, overwrite), kind="jacobian", config=cfg)
    with stage("training once (checks, losses, accuracies)", progress):
        th0_np, thT_np, metrics = train_and_record(recipe, theta0, folder, dt, eval_sets)
    t_train = time.perf_counter()

    if folder.resumed and folder.has("jacobian.npy"):
        J = folder.load_array("jacobian", mmap=True)
    else:
        with stage("Jacobian", False):
            J = exact_jacobian(recipe, th0_np, dtype=dt, chunk_size=chunk_size,
                               memory_budget_gb=memory_budget_gb, checkpoint_dir=folder.dir("checkpoint"),
                               resume=folder.resumed, progress=progress, stop_after=stop_after,
                               out=folder.file("jacobian.npy"), mode=mode, primal=primal)
        folder.add_file("jacobian.npy")  # its checksum now, so that a resume reads it back verified
    t_jac = time.perf_counter()

    dec, proj, arrays, figs = decompose(J, th0_np, thT_np, thresholds, dt, progress)
    if not save_vectors:
        del arrays["svd_U"], arrays["svd_Vt"]
    t_svd = time.perf_counter()

    summary = region_summary(dec, bulk_tolerances)
    summary["metrics"] = metrics
    summary["change_norm"] = float(np.linalg.norm(thT_np - th0_np))
    summary["engine"] = _engine_summary(recipe, th0_np, dt, mode, primal, chunk_size, memory_budget_gb)
    summary["wall_time_s"] = {"train_check": t_train - t_start, "jacobian": t_jac - t_train,
                              "svd": t_svd - t_jac, "total": t_svd - t_start}
    summary["warnings"] = _warnings(dec, metrics, dt)
    with stage("saving arrays and figures", progress):
        return folder.finish(summary, arrays=arrays, figures=figs, captions=CAPTIONS)


def _engine_summary(recipe: TrainingMap, theta0: np.ndarray, dt: np.dtype, mode: str, primal: str,
                    chunk_size: int | None, memory_budget_gb: float) -> dict:
    """How the exact engine computed J (its plan is cached with the recipe: nothing is recompiled)."""
    with precision_context(dt):
        plan = plan_engine(recipe, jnp.asarray(theta0, dt), mode=mode, primal=primal, chunk_size=chunk_size,
                           memory_budget_gb=memory_budget_gb)
    return {"mode": plan.mode, "primal": plan.primal, "rules": plan.rules, "chunk_size": plan.chunk,
            "devices": plan.n_devices, "activation": plan.mlp.activation if plan.mlp is not None else None}


def check_engine_options(chunk_size: int | None, memory_budget_gb: float, mode: str, primal: str) -> None:
    """Validate the exact engine's options before anything is trained or written."""
    from trainmap.jacobian.exact.plan import MODES, PRIMALS

    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size (--chunk-size) must be >= 1, or None for automatic; got {chunk_size}")
    if not memory_budget_gb > 0:
        raise ValueError(f"memory_budget_gb (--memory-gb) must be > 0, got {memory_budget_gb}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if primal not in PRIMALS:
        raise ValueError(f"primal must be one of {PRIMALS}, got {primal!r}")


def _warnings(dec: JacobianSVD, metrics: dict, dtype: np.dtype) -> list[str]:
    out = []
    if dtype == np.float32:
        eps = 1e-6 * max(float(dec.S[0]), 1.0)
        near = np.abs(np.abs(dec.S - 1.0) - (dec.thresholds.high - 1.0)) < 10 * eps
        if near.any():
            out.append(f"{int(near.sum())} singular values lie within float32 resolution of a region "
                       "boundary; rerun with --dtype float64 if their labels matter")
    for name, m in metrics.items():
        if m["after"]["loss"] > m["before"]["loss"]:
            out.append(f"{name} loss increased during training ({m['before']['loss']:.3g} -> "
                       f"{m['after']['loss']:.3g}); check the learning rate")
    return out
