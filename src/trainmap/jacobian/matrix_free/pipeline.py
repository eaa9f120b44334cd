"""Training-Jacobian spectra at scale: the matrix-free pipeline behind ``--method lanczos|slq``.

``analyze_scale(recipe, theta0, out_dir, method=...)`` never forms J. It runs one block Lanczos
on JᵀJ (:mod:`lanczos`) started from ``probes`` Rademacher vectors, each step one compiled
forward + reverse pass through training for the whole block (:mod:`matrix_free`), and reads off

* extreme singular triplets (top-k chaotic, bottom-k stable) with residual norms;
* the spectral density and the region counts by stochastic Lanczos quadrature (:mod:`slq`),
  with error bars (std over probes / √b) and the quadrature's own range.

``method="slq"`` writes the density, counts and the top-k chaotic directions; ``method="lanczos"``
also writes the bottom-k (stable) triplets and, by default, runs enough steps for k triplets
(steps · probes ≥ 5k). Every finished block step is saved under ``checkpoint/`` so that an
interrupted run resumes (``resume=True``) and can be extended with more steps.

Results folder (same layout as :func:`~trainmap.jacobian.analysis.analyze`):

* ``config.json``, ``summary.json`` (estimated counts with ``std_err`` and
  ``quadrature_range``, σ_max estimate, top/bottom σ with relative residuals, metrics, wall time,
  peak memory, warnings for non-converged estimates), ``captions.json``, ``report.html``;
* arrays — ``slq_nodes.npy`` (n,) Ritz values of JᵀJ, ``slq_weights.npy`` (n, b),
  ``density_grid.npy``/``density.npy`` (g,) (log10 σ), ``top_sigma.npy`` (k,), ``top_V.npy``
  (k, P) right singular vectors as rows, ``top_U.npy`` (k, P) left singular vectors,
  ``top_residuals.npy`` (k,), the same ``bottom_*`` for ``lanczos``, ``theta0.npy``,
  ``thetaT.npy``, ``train_losses.npy`` (T,);
* figures — ``density.png`` (estimated spectral density with region boundaries),
  ``extreme_sigma.png`` (extreme singular values with residuals).
"""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from trainmap._io import atomic_save_npy, atomic_write_json, load_npy, read_json
from trainmap._progress import progress as _progress
from trainmap.jacobian.exact.checkpoint import CheckpointError, fingerprint
from trainmap.jacobian.exact.checkpoint import array_sha256 as _sha
from trainmap.jacobian.matrix_free.lanczos import BlockLanczosState, block_lanczos_step, extreme_triplets, rademacher
from trainmap.jacobian.matrix_free.operator import TrainingOperator
from trainmap.jacobian.matrix_free.slq import quadrature, region_counts, spectral_density
from trainmap.jacobian.precision import check_dtype
from trainmap.jacobian.regions import REGIONS, Thresholds
from trainmap.protocol import TrainingMap
from trainmap.results import mode_of, open_results

METHODS = ("lanczos", "slq")
CONVERGED_RTOL = 1e-3  # a Ritz pair counts as converged when ‖JᵀJv − σ²v‖ / max(σ², 1) < this

CAPTIONS = {
    "density.png": "Estimated density of singular values of J (stochastic Lanczos quadrature, "
                   "averaged over probes; thin lines: single probes), with the region boundaries "
                   "σ = 0.9 and 1.1. Look for the tall bulk at σ ≈ 1 between the shaded chaotic "
                   "and stable regions.",
    "extreme_sigma.png": "Extreme singular values from block Lanczos (top: chaotic end, bottom: "
                         "stable end); hollow markers did not converge (relative residual above "
                         f"{CONVERGED_RTOL:g}).",
    "training_loss.png": "The batch loss of every step: a run that did not train (or diverged) makes "
                         "its Jacobian hard to read.",
}


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (MiB; Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def default_steps(method: str, rank: int, probes: int) -> int:
    """Block steps m: 30 for ``slq``; for ``lanczos`` at least 5·rank / probes (and 30)."""
    return 30 if method == "slq" else max(30, -(-5 * rank // probes))


# ----------------------------------------------------------------------------- checkpoints
class LanczosCheckpoint:
    """Append-only files of a block Lanczos run: one set of ``.npy`` files per finished step.

    Step j writes ``side_j.npy`` (J Q_j), ``coeff_j.npy``, ``Q_{j+1}.npy`` and ``R_{j+1}.npy``,
    then ``progress.json`` (atomically, last, with the SHA-256 of every array), so a killed run
    loses at most the step in flight and an edited file is refused on resume.
    """

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = folder, key
        self._sums: dict[str, str] = {}

    def _progress_path(self) -> Path:
        return self.folder / "progress.json"

    def load(self, probes: np.ndarray, resume: bool) -> tuple[BlockLanczosState, float]:
        """The saved state (or a fresh one) and the compute seconds already spent."""
        state = BlockLanczosState.start(probes)
        if not resume or not self._progress_path().exists():
            if self.folder.exists():
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True)
            atomic_write_json(self._progress_path(), {"key": self.key, "steps": 0, "compute_s": 0.0})
            return state, 0.0
        prog = read_json(self._progress_path())
        if prog.get("key") != self.key:
            raise CheckpointError(f"{self.folder} belongs to a different run (recipe, θ₀, probes or "
                                  "dtype changed); rerun without --resume or with --overwrite")
        self._sums = dict(prog.get("checksums", {}))
        for j in range(int(prog["steps"])):
            state.blocks.append(state.next_block)  # type: ignore[arg-type]
            side = self.folder / f"side_{j:04d}.npy"
            if side.exists():
                state.side.append(self._read(side))
            state.coeffs.append(self._read(self.folder / f"coeff_{j:04d}.npy"))
            state.next_block = self._read(self.folder / f"Q_{j + 1:04d}.npy")
            state.next_R = self._read(self.folder / f"R_{j + 1:04d}.npy")
        return state, float(prog.get("compute_s", 0.0))

    def _read(self, path: Path) -> np.ndarray:
        a = load_npy(path)
        want = self._sums.get(path.name)
        if want is not None and _sha(a) != want:
            raise CheckpointError(f"{path} fails its checksum (edited or corrupt); the Lanczos steps cannot "
                                  "be trusted: rerun with --overwrite to recompute them")
        return a

    def _write(self, name: str, a: np.ndarray) -> None:
        atomic_save_npy(self.folder / name, a)
        self._sums[name] = _sha(np.asarray(a))

    def save_step(self, state: BlockLanczosState, compute_s: float) -> None:
        j = state.steps - 1
        if state.side:
            self._write(f"side_{j:04d}.npy", state.side[-1])
        self._write(f"coeff_{j:04d}.npy", state.coeffs[-1])
        self._write(f"Q_{j + 1:04d}.npy", state.next_block)  # type: ignore[arg-type]
        self._write(f"R_{j + 1:04d}.npy", state.next_R)  # type: ignore[arg-type]
        atomic_write_json(self._progress_path(), {"key": self.key, "steps": state.steps,
                                                  "compute_s": compute_s, "checksums": self._sums})


# ----------------------------------------------------------------------------- pipeline
def analyze_scale(
    recipe: TrainingMap,
    theta0: Any,
    out_dir: str | Path,
    *,
    method: str = "slq",
    rank: int = 20,
    probes: int = 8,
    steps: int | None = None,
    seed: int = 0,
    dtype: Any = np.float32,
    thresholds: Thresholds = Thresholds(),
    segment: int | None = None,
    devices: Any = None,
    eval_sets: Mapping[str, tuple[Any, Any]] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    time_budget_s: float | None = None,
    stop_after: int | None = None,
    keep_checkpoint: bool = True,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Estimate the training-Jacobian spectrum of ``recipe`` matrix-free and write a results folder.

    Args:
        recipe: the training run (any :class:`~trainmap.recipe.Recipe`).
        theta0: (P,) initial flat parameters.
        out_dir: results folder (created).
        method: ``"slq"`` (density, counts, top-k chaotic directions) or ``"lanczos"`` (also the
            bottom-k stable triplets; more steps by default).
        rank: k, the number of extreme singular triplets reported at each end.
        probes: b, Rademacher probe vectors = the Lanczos block size (≥ 2 for error bars).
        steps: block Lanczos steps m (default :func:`default_steps`); cost ≈ m · b forward +
            reverse passes through training.
        seed: seed of the probes.
        dtype: float32 or float64 for the products (the projected problem is always float64).
        thresholds: region boundaries on σ.
        segment: steps per rematerialised segment of the reverse pass (None: ⌈√T⌉).
        devices: devices to shard the probe block over (None: all JAX devices).
        eval_sets: ``{"name": (x, y)}`` sets for loss/accuracy before and after training.
        resume: continue the checkpointed steps in ``out_dir`` (more ``steps`` extend the run).
        overwrite: delete a previous trainmap results folder at ``out_dir`` first.
        progress: show a progress bar over block steps.
        time_budget_s: stop the Lanczos iteration after this many compute seconds (counting
            earlier interrupted runs) and report what was reached (recorded in the summary).
        stop_after: stop after this many new steps by raising ``KeyboardInterrupt`` (tests).
        keep_checkpoint: keep ``checkpoint/`` after success (needed to extend the run later).
        config: extra JSON-able settings recorded in config.json.

    Returns:
        The summary dictionary (also written to ``summary.json``).
    """
    from trainmap.jacobian.analysis import train_and_record

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS} (or 'exact' via analyze)")
    if rank < 1 or probes < 1:
        raise ValueError(f"rank and probes must be >= 1, got rank={rank}, probes={probes}")
    t_start = time.perf_counter()
    dt = check_dtype(dtype)
    P = recipe.num_params
    m = int(steps) if steps else default_steps(method, rank, probes)
    if m * probes > P:
        m = P // probes
    if m * probes < rank:
        raise ValueError(f"steps·probes = {m * probes} < rank = {rank}: the Krylov space is too small; "
                         "raise --lanczos-steps or --probes")
    cfg = {**recipe.config, **(config or {}), "method": method, "rank": rank, "probes": probes,
           "steps": m, "seed": seed, "dtype": dt.name, "segment": segment,
           "num_params": P, "num_steps": recipe.num_steps,
           "thresholds": {"stable_below": thresholds.low, "chaotic_above": thresholds.high},
           "recipe_fingerprint": recipe.fingerprint()}
    folder = open_results(out_dir, mode_of(resume, overwrite), kind="jacobian-matrix-free", config=cfg,
                          may_change=("steps",))
    th0_np, thT_np, metrics = train_and_record(recipe, theta0, folder, dt, eval_sets)
    t_train = time.perf_counter()

    # ------------------------------------------------------------------ block Lanczos
    op = TrainingOperator(recipe, th0_np, dtype=dt, segment=segment, devices=devices)
    V0 = rademacher(probes, P, seed, dt)
    key = fingerprint(recipe, th0_np, dt, probes) + f"|seed={seed}"
    ckpt = LanczosCheckpoint(folder.dir("checkpoint"), key)
    state, spent = ckpt.load(V0, folder.resumed)
    done_before = state.steps
    budget_hit = False
    new = 0
    with _progress(progress, max(m - state.steps, 0),
                   f"block Lanczos on JᵀJ ({P:,} params, {probes} probes)") as advance:
        while state.steps < m:
            if time_budget_s is not None and spent >= time_budget_s:
                budget_hit = True
                break
            if stop_after is not None and new >= stop_after:
                raise KeyboardInterrupt(f"stopped after {new} block steps (stop_after)")
            t0 = time.perf_counter()
            block_lanczos_step(state, op.block_operator(), seed)
            spent += time.perf_counter() - t0
            ckpt.save_step(state, spent)
            new += 1
            advance()
    t_lanczos = time.perf_counter()

    # ------------------------------------------------------------------ read-off
    n = state.steps * probes
    k = min(rank, n)
    top = extreme_triplets(state, k, "top", vectors=True)
    q = quadrature(state)
    counts = region_counts(q, thresholds)
    grid = np.linspace(np.log10(max(float(np.sqrt(max(q.nodes.min(), 0))), 1e-6)) - 0.3,
                       np.log10(max(float(top.sigma[0]), 1.0)) + 0.3, 600)
    dens = spectral_density(q, grid)
    per_probe = np.stack([spectral_density(_single(q, j), grid) for j in range(q.num_probes)])
    arrays = {"slq_nodes": q.nodes, "slq_weights": q.weights, "density_grid": grid, "density": dens,
              "density_per_probe": per_probe, "top_sigma": top.sigma, "top_V": top.V,
              "top_residuals": top.residuals}
    if top.U is not None:
        arrays["top_U"] = top.U
    bottom = None
    if method == "lanczos":
        bottom = extreme_triplets(state, k, "bottom", vectors=True)
        arrays.update({"bottom_sigma": bottom.sigma, "bottom_V": bottom.V,
                       "bottom_residuals": bottom.residuals})
        if bottom.U is not None:
            arrays["bottom_U"] = bottom.U
    arrays = {name: np.asarray(arr, dtype=np.float64 if arr.ndim < 2 or arr.shape[1] != P else dt)
              for name, arr in arrays.items()}
    from trainmap.jacobian.matrix_free import figures as scale_figures

    figs = {"density.png": scale_figures.density_figure(grid, dens, per_probe, thresholds, counts),
            "extreme_sigma.png": scale_figures.extreme_figure(top, bottom, CONVERGED_RTOL, thresholds)}
    t_end = time.perf_counter()

    summary: dict[str, Any] = {
        "method": method, "num_params": P, "estimated": True,
        "sigma_max": float(top.sigma[0]),
        "thresholds": {"stable_below": thresholds.low, "chaotic_above": thresholds.high},
    }
    for r in REGIONS:
        summary[r] = counts[r]
    summary["top"] = _triplet_summary(top)
    if bottom is not None:
        summary["bottom"] = _triplet_summary(bottom)
        summary["sigma_min_estimate"] = float(bottom.sigma[0])
    summary["lanczos"] = {"block_size": probes, "steps": state.steps, "steps_requested": m,
                          "krylov_dim": n, "vector_products": state.steps * probes,
                          "steps_resumed": done_before, "stopped_by_time_budget": budget_hit,
                          "compute_s": spent, "segment": segment, "devices": op.num_devices}
    summary["metrics"] = metrics
    summary["change_norm"] = float(np.linalg.norm(thT_np - th0_np))
    summary["wall_time_s"] = {"train_check": t_train - t_start, "lanczos": t_lanczos - t_train,
                              "readoff": t_end - t_lanczos, "total": t_end - t_start,
                              "lanczos_compute_all_runs": spent}
    summary["peak_memory_mb"] = peak_memory_mb()
    summary["warnings"] = _warnings(summary, top, bottom, budget_hit)
    if not keep_checkpoint:
        shutil.rmtree(folder.path / "checkpoint", ignore_errors=True)
    return folder.finish(summary, arrays=arrays, figures=figs, captions=CAPTIONS)


def _single(q: Any, j: int) -> Any:
    from trainmap.jacobian.matrix_free.slq import Quadrature

    return Quadrature(q.nodes, q.weights[:, j:j + 1], q.dim)


def _triplet_summary(t: Any) -> dict[str, Any]:
    conv = t.rel_residuals < CONVERGED_RTOL
    return {"sigma": [float(s) for s in t.sigma], "rel_residual": [float(r) for r in t.rel_residuals],
            "converged": int(conv.sum()), "count": int(t.sigma.size),
            "max_rel_residual": float(t.rel_residuals.max())}


def _warnings(s: dict, top: Any, bottom: Any, budget_hit: bool) -> list[str]:
    out = []
    for name, t in (("top", top), ("bottom", bottom)):
        if t is None:
            continue
        bad = int((t.rel_residuals >= CONVERGED_RTOL).sum())
        if bad:
            out.append(f"{bad} of {t.sigma.size} {name} singular triplets have not converged (relative "
                       f"residual ≥ {CONVERGED_RTOL:g}, worst {t.rel_residuals.max():.2g}); raise "
                       "--lanczos-steps (or --probes) and --resume")
    for r in REGIONS:
        c = s[r]
        lo, hi = c["quadrature_range"]
        if hi - lo > 0.2 * max(c["count"], 1.0):
            out.append(f"{r} count {c['count']:.0f} ± {c['std_err']:.0f} (probes) has a wide quadrature "
                       f"range [{lo:.0f}, {hi:.0f}]: few Ritz values lie near the region boundaries; "
                       "more Lanczos steps narrow it")
    if budget_hit:
        out.append(f"stopped by the time budget after {s['lanczos']['steps']} of "
                   f"{s['lanczos']['steps_requested']} block steps; --resume continues")
    return out
