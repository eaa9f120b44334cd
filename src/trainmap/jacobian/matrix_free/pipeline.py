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

import contextlib
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from trainmap._io import atomic_save_npy, atomic_write_json, load_npy, read_json
from trainmap._progress import _reset_peak_rss, peak_rss_mib
from trainmap._progress import progress as _progress
from trainmap.jacobian.exact.checkpoint import CheckpointError, fingerprint
from trainmap.jacobian.exact.checkpoint import array_sha256 as _sha
from trainmap.jacobian.matrix_free.basis import DiskBlocks, HalfBlocks, MemoryBlocks, WindowBlocks, max_overlap
from trainmap.jacobian.matrix_free.distributed import ProductDriver, handshake, serve_products
from trainmap.jacobian.matrix_free.lanczos import (
    BlockLanczosState,
    block_lanczos_step,
    extreme_triplets,
    orthogonality_loss,
    rademacher,
    verified,
    without_side,
)
from trainmap.jacobian.matrix_free.operator import TrainingOperator
from trainmap.jacobian.matrix_free.slq import quadrature, region_counts, spectral_density
from trainmap.jacobian.precision import check_dtype, precision_context
from trainmap.jacobian.regions import REGIONS, Thresholds
from trainmap.protocol import TrainingMap, is_traceable
from trainmap.results import mode_of, open_results

METHODS = ("lanczos", "slq")
FULL_BASES = ("auto", "memory", "disk")  # every block at full precision, with J Q
BASES = (*FULL_BASES, "half", "none")
WINDOW = 2  # blocks a run without a stored basis keeps (the block three-term recurrence's)
HALF_BOUND_WARN = 1e-2  # a float16 basis whose orthogonality bound exceeds this gets a warning
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
    """Peak resident memory of this process so far (MiB): VmHWM, or ru_maxrss off Linux."""
    hwm = peak_rss_mib()
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def default_steps(method: str, rank: int, probes: int) -> int:
    """Block steps m: 30 for ``slq``; for ``lanczos`` at least 5·rank / probes (and 30)."""
    return 30 if method == "slq" else max(30, -(-5 * rank // probes))


# ----------------------------------------------------------------------------- checkpoints
class LanczosCheckpoint:
    """Append-only files of a block Lanczos run: one set of ``.npy`` files per finished step.

    ``Q_0000.npy`` is the orthonormalised probe block. Step j writes ``side_j.npy`` (J Q_j),
    ``coeff_j.npy``, ``Q_{j+1}.npy`` and ``R_{j+1}.npy``, then ``progress.json`` (atomically,
    last, with the SHA-256 of every array), so a killed run loses at most the step in flight and
    an edited file is refused on resume. The ``Q`` and ``side`` files are also the on-disk Krylov
    basis (:class:`~trainmap.jacobian.matrix_free.basis.DiskBlocks`) when it does not fit the
    memory budget. With ``window`` (a run that does not store its basis,
    :class:`~trainmap.jacobian.matrix_free.basis.WindowBlocks`) only the last ``window`` blocks and
    the next one stay on disk: older ``Q`` files are deleted as the run goes. With ``half`` too
    (:class:`~trainmap.jacobian.matrix_free.basis.HalfBlocks`), each block that leaves the window
    is written as ``Qh_j.npy`` in float16 before its ``Q_j.npy`` is deleted, and no ``side`` files
    are written.
    """

    def __init__(self, folder: Path, key: str, window: int | None = None, half: bool = False) -> None:
        if half and window is None:
            raise ValueError("a half-precision basis keeps a window of exact blocks: pass window")
        self.folder, self.key, self.window, self.half = folder, key, window, half
        self._sums: dict[str, str] = {}
        self._rounding = 0.0
        #: float32 blocks recomputed in float64 by the runs before this one (kept across resumes)
        self.float64_retries_before = 0

    def _progress_path(self) -> Path:
        return self.folder / "progress.json"

    def load(self, probes: np.ndarray, resume: bool, on_disk: bool = False,
             capacity: int = 0) -> tuple[BlockLanczosState, float]:
        """The saved state (or a fresh one) and the compute seconds already spent.

        Args:
            probes: (b, P) starting block.
            resume: continue the saved steps (else start over).
            on_disk: keep the basis in this folder's files instead of memory.
            capacity: blocks to reserve memory for (the planned steps).
        """
        b = probes.shape[0]
        stores: dict[str, Any] = {"blocks": MemoryBlocks(capacity), "side": MemoryBlocks(capacity)}
        if self.window is not None:
            stores = {"blocks": HalfBlocks(self.window, capacity_blocks=capacity) if self.half
                      else WindowBlocks(self.window)}
        elif on_disk:
            stores = {"blocks": DiskBlocks(self.folder, "Q", b), "side": DiskBlocks(self.folder, "side", b)}
        fresh = not resume or not self._progress_path().exists()
        if fresh:
            if self.folder.exists():
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True)
        state = BlockLanczosState.start(probes, **stores)
        if fresh:
            self._write("Q_0000.npy", state.next_block)  # type: ignore[arg-type]
            self._write_progress(0, 0.0)
            return state, 0.0
        prog = read_json(self._progress_path())
        if prog.get("key") != self.key:
            raise CheckpointError(f"{self.folder} belongs to a different run (recipe, θ₀, probes or "
                                  "dtype changed); rerun without --resume or with --overwrite")
        self._sums = dict(prog.get("checksums", {}))
        self._rounding = float(prog.get("half_rounding", 0.0))
        self.float64_retries_before = int(prog.get("float64_retries", 0))
        steps = int(prog["steps"])
        self._drop_unfinished(steps)
        if self.window is None and "Q_0000.npy" not in self._sums:  # written by an earlier version: Q_0 is the probes' QR
            self._write("Q_0000.npy", state.next_block)  # type: ignore[arg-type]
        if self.window is not None:  # only the last blocks were kept exactly, and no J Q
            first = max(steps - self.window, 0)
            last = [self._read(self.folder / f"Q_{j:04d}.npy") for j in range(first, steps)]
            if self.half:
                state.blocks = HalfBlocks(self.window, blocks=last, capacity_blocks=capacity, half=[
                    self._read(self.folder / f"Qh_{j:04d}.npy") for j in range(first)])
                state.blocks.rounding = self._rounding
            else:
                state.blocks = WindowBlocks(self.window, count=first, blocks=last)
        for j in range(steps):
            if self.window is None:
                state.blocks.append(self._read(self.folder / f"Q_{j:04d}.npy"))
                side = self.folder / f"side_{j:04d}.npy"
                if side.exists():
                    state.side.append(self._read(side))
            state.coeffs.append(self._read(self.folder / f"coeff_{j:04d}.npy"))
        if steps:
            state.next_block = self._read(self.folder / f"Q_{steps:04d}.npy")
            state.next_R = self._read(self.folder / f"R_{steps:04d}.npy")
        return state, float(prog.get("compute_s", 0.0))

    def _drop_unfinished(self, steps: int) -> None:
        """Delete the files of a step that was in flight when the run stopped."""
        for f in self.folder.glob("*.npy"):
            name, _, idx = f.stem.rpartition("_")
            last = steps - 1 if name in ("side", "coeff") else steps
            if idx.isdigit() and int(idx) > last:
                f.unlink()

    def _read(self, path: Path) -> np.ndarray:
        a = load_npy(path)
        want = self._sums.get(path.name)
        if want is not None and _sha(a) != want:
            raise CheckpointError(f"{path} fails its checksum (edited or corrupt); the Lanczos steps cannot "
                                  "be trusted: rerun with --overwrite to recompute them")
        return a

    def _write(self, name: str, a: np.ndarray) -> None:
        """Save ``a`` unless a disk basis has already written it; record its checksum."""
        a = np.asarray(a)
        if not (self.folder / name).exists():
            atomic_save_npy(self.folder / name, a)
        self._sums[name] = _sha(a)

    def save_step(self, state: BlockLanczosState, compute_s: float, float64_retries: int = 0) -> None:
        """Record the step just finished; ``float64_retries``: this run's retried blocks so far."""
        j = state.steps - 1
        if state.side:
            self._write(f"side_{j:04d}.npy", state.side[-1])
        self._write(f"coeff_{j:04d}.npy", state.coeffs[-1])
        self._write(f"Q_{j + 1:04d}.npy", state.next_block)  # type: ignore[arg-type]
        self._write(f"R_{j + 1:04d}.npy", state.next_R)  # type: ignore[arg-type]
        old = range(j + 1 - self.window) if self.window is not None else range(0)
        if self.half:  # the blocks that left the window, as the store rounded them
            blocks = state.blocks
            assert isinstance(blocks, HalfBlocks)
            for i in old:
                if f"Qh_{i:04d}.npy" not in self._sums:
                    self._write(f"Qh_{i:04d}.npy", blocks.half_block(i))
            self._rounding = blocks.rounding
        stale = [f"{kind}_{i:04d}.npy" for i in old for kind in ("Q", "R")]
        for name in stale:
            self._sums.pop(name, None)
        self._write_progress(state.steps, compute_s, float64_retries)
        for name in stale:  # after the progress file: a resumed run never needs these
            (self.folder / name).unlink(missing_ok=True)

    def _write_progress(self, steps: int, compute_s: float, float64_retries: int = 0) -> None:
        prog = {"key": self.key, "steps": steps, "compute_s": compute_s, "checksums": self._sums,
                "float64_retries": self.float64_retries_before + float64_retries}
        if self.half:
            prog["half_rounding"] = self._rounding
        atomic_write_json(self._progress_path(), prog)

    def on_disk(self, state: BlockLanczosState) -> BlockLanczosState:
        """The same state with its basis read from this folder's files instead of memory."""
        b = state.block_size
        state.blocks = DiskBlocks(self.folder, "Q", b, count=len(state.blocks))
        state.side = DiskBlocks(self.folder, "side", b, count=len(state.side))
        return state


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
    memory_gb: float | None = None,
    basis: str = "auto",
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
        memory_gb: budget for the process's peak resident memory (GiB; None: 80% of the
            machine's memory). The Krylov basis stays in memory while the measured peak plus the
            basis still to come plus the read-off fits, and moves to disk (the checkpoint files)
            when it would not; a run whose products alone exceed the budget stops with an error
            after saving its steps (``--resume`` with a larger budget continues).
        basis: ``"auto"`` (as above), ``"memory"``, ``"disk"`` (from the first step), ``"half"`` or
            ``"none"`` (these two: ``method="slq"`` only). ``"half"`` keeps the last two blocks
            exactly and every older one in float16, in memory, and no J Q (2 bytes per basis
            entry instead of 8; it must fit ``memory_gb``): the loss of orthogonality stays at the
            rounding (≈ 2⁻¹¹), bounded and reported in ``lanczos.orthogonality``, the counts and σ
            are the full basis's, and the top vectors' residuals (and U = J V / σ) are measured
            by ⌈rank / probes⌉ more block products. ``"none"`` does not store the basis at all:
            each block is orthogonalised against its two neighbours only, so memory and disk
            hold three blocks for any number of steps, but the basis loses orthogonality along
            converged Ritz vectors and the counts can then be biased (measured at 1M parameters,
            and why: docs/jacobian_scale.md). The summary reports Paige's estimate of that loss
            (:func:`~trainmap.jacobian.matrix_free.lanczos.orthogonality_loss`) and the repeated
            Ritz values it causes, which are dropped from the top list; no singular vectors are
            written.
        config: extra JSON-able settings recorded in config.json.

    Returns:
        The summary dictionary (also written to ``summary.json``).
    """
    from trainmap.jacobian.analysis import train_and_record

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS} (or 'exact' via analyze)")
    if rank < 1 or probes < 1:
        raise ValueError(f"rank and probes must be >= 1, got rank={rank}, probes={probes}")
    if basis in ("none", "half") and method != "slq":
        raise ValueError(f"basis={basis!r} serves the slq method only; the lanczos method's stable-end triplets "
                         "need the whole basis at full precision: use --basis auto, memory or disk")
    stored = basis != "none"  # Ritz vectors can be formed
    full, half = basis in FULL_BASES, basis == "half"
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
    run_key = _run_key(recipe, th0_np, dt, probes, seed)
    key = run_key + ("" if full else f"|basis={basis}")  # the checkpoint's: the basis layout too
    ckpt = LanczosCheckpoint(folder.dir("checkpoint"), key, window=None if full else WINDOW, half=half)
    memory = MemoryBudget(memory_gb, basis, P * dt.itemsize, probes, rank * (4 if method == "lanczos" else 2),
                          itemsize=dt.itemsize)
    memory.check_start(m)  # a basis that cannot fit (e.g. a resumed long run) is never loaded into memory
    state, spent = ckpt.load(V0, folder.resumed, on_disk=memory.on_disk, capacity=m)
    done_before, spent_before = state.steps, spent
    budget_hit = False
    new = 0
    driver = None
    if jax.process_count() > 1:  # process 0 of a jax.distributed job: the others serve_scale()
        if not is_traceable(recipe):
            raise ValueError("several processes need a JAX training map (the products are JAX collectives); "
                             "run a torch recipe in one process")
        with precision_context(dt):
            handshake(run_key)
        driver = ProductDriver(op.block_operator(), dt)
    apply = timed(driver or op.block_operator())
    step_apply = apply if full else without_side(apply)  # J Q is not kept either
    with _progress(progress, max(m - state.steps, 0),
                   f"block Lanczos on JᵀJ ({P:,} params, {probes} probes)") as advance, \
            _released(driver), precision_context(dt):
        while state.steps < m:
            if time_budget_s is not None and spent >= time_budget_s:
                budget_hit = True
                break
            if stop_after is not None and new >= stop_after:
                raise KeyboardInterrupt(f"stopped after {new} block steps (stop_after)")
            t0 = time.perf_counter()
            block_lanczos_step(state, step_apply, seed)
            ckpt.save_step(state, spent + time.perf_counter() - t0, op.float64_retries)
            spent += time.perf_counter() - t0
            new += 1
            if memory.check(state.steps, m):
                state = ckpt.on_disk(state)
            advance()
        product_s, products = apply.seconds, apply.calls  # the Lanczos steps' products
        bookkeeping_s = (spent - spent_before) - product_s  # this run's steps outside the products
        n = state.steps * probes
        k = min(rank, n)
        top = extreme_triplets(state, k, "top", vectors=stored, distinct=not stored)
        if half:  # V carries the float16 rounding: measure its residuals, and get U, by products
            top = verified(top, apply, probes)
    t_lanczos = time.perf_counter()

    # ------------------------------------------------------------------ read-off
    q = quadrature(state)
    counts = region_counts(q, thresholds)
    grid = np.linspace(np.log10(max(float(np.sqrt(max(q.nodes.min(), 0))), 1e-6)) - 0.3,
                       np.log10(max(float(top.sigma[0]), 1.0)) + 0.3, 600)
    dens = spectral_density(q, grid)
    per_probe = np.stack([spectral_density(_single(q, j), grid) for j in range(q.num_probes)])
    arrays = {"slq_nodes": q.nodes, "slq_weights": q.weights, "density_grid": grid, "density": dens,
              "density_per_probe": per_probe, "top_sigma": top.sigma, "top_residuals": top.residuals}
    if stored:
        arrays["top_V"] = top.V
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
                          "compute_s": spent, "segment": segment, "devices": op.num_devices,
                          "product_s": product_s, "products_timed": products,
                          "bookkeeping_s": bookkeeping_s,
                          "bookkeeping_fraction_of_products": bookkeeping_s / product_s if product_s else None,
                          "float64_retries": ckpt.float64_retries_before + op.float64_retries,
                          "basis": memory.describe()}
    if not stored:
        summary["lanczos"]["orthogonality"] = {
            "basis_stored": False, "paige_estimate": orthogonality_loss(state),
            "repeated_ritz_values_dropped": top.repeats}
    if half:
        assert isinstance(state.blocks, HalfBlocks)
        measured = max_overlap(state.next_block, state.blocks) if state.next_block is not None else 0.0
        summary["lanczos"]["orthogonality"] = {
            "basis_stored": "float16 (all but the last two blocks)", "rounding": state.blocks.rounding,
            "next_block_overlap": measured, "bound": measured + state.blocks.rounding,
            "top_residuals": "measured by products (the Ritz vectors carry the float16 rounding)",
            "verification_products": apply.calls - products, "verification_s": apply.seconds - product_s}
    summary["metrics"] = metrics
    summary["change_norm"] = float(np.linalg.norm(thT_np - th0_np))
    summary["wall_time_s"] = {"train_check": t_train - t_start, "lanczos": t_lanczos - t_train,
                              "readoff": t_end - t_lanczos, "total": t_end - t_start,
                              "lanczos_compute_all_runs": spent}
    summary["peak_memory_mb"] = memory.peak_mb()
    summary["memory_budget_mb"] = memory.budget / 2**20
    summary["warnings"] = _warnings(summary, top, bottom, budget_hit)
    if not keep_checkpoint:
        shutil.rmtree(folder.path / "checkpoint", ignore_errors=True)
    return folder.finish(summary, arrays=arrays, figures=figs, captions=CAPTIONS)


def serve_scale(recipe: TrainingMap, theta0: Any, *, probes: int = 8, seed: int = 0,
                dtype: Any = np.float32, segment: int | None = None) -> int:
    """A process other than 0 of a ``jax.distributed`` job: compute its rows of every product.

    Call it with the same run and the same ``probes``, ``seed``, ``dtype`` and ``segment`` that
    process 0 passes to :func:`analyze_scale`; it returns (the number of blocks computed) when
    process 0's Lanczos iteration ends. One error, on every process, if the runs differ.
    """
    dt = check_dtype(dtype)
    with precision_context(dt):
        th0 = np.asarray(recipe.check_theta(jnp.asarray(theta0, dtype=dt)))
        op = TrainingOperator(recipe, th0, dtype=dt, segment=segment)
        handshake(_run_key(recipe, th0, dt, probes, seed))
        return serve_products(op.block_operator(), recipe.num_params, dt)


def _run_key(recipe: TrainingMap, theta0: np.ndarray, dtype: np.dtype, probes: int, seed: int) -> str:
    """What every process of a run must share: the run (recipe, θ₀, dtype), the probes and their seed."""
    return fingerprint(recipe, theta0, dtype, probes) + f"|seed={seed}"


@contextlib.contextmanager
def _released(driver: ProductDriver | None) -> Iterator[None]:
    """Stop the other processes' product loop however the iteration ends."""
    try:
        yield
    finally:
        if driver is not None:
            driver.stop()


class timed:
    """A block operator that sums the seconds spent inside it (the products, nothing else)."""

    def __init__(self, apply: Any) -> None:
        self.apply, self.seconds, self.calls = apply, 0.0, 0

    def __call__(self, X: np.ndarray) -> Any:
        t0 = time.perf_counter()
        out = self.apply(X)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


class MemoryBudgetError(MemoryError):
    """The products of a matrix-free run need more memory than its budget."""


def _machine_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return 16 * 2**30


class MemoryBudget:
    """Where the Krylov basis lives under a peak-memory budget (see :func:`analyze_scale`).

    Args:
        memory_gb: the budget (GiB) for the process's peak resident memory; None: 80% of the machine.
        basis: "auto", "memory", "disk", "half" (in memory, a quarter of the size: it must fit,
            or the run stops with an error) or "none" (never stored: nothing moves).
        row_bytes: bytes of one basis row (P · itemsize).
        block: rows per block (the probes).
        readoff_rows: rows the read-off holds at once (Ritz vectors V and U at each end).
        itemsize: bytes per entry of the operator's dtype.
    """

    def __init__(self, memory_gb: float | None, basis: str, row_bytes: int, block: int, readoff_rows: int,
                 itemsize: int = 4) -> None:
        if basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
        if memory_gb is not None and memory_gb <= 0:
            raise ValueError(f"memory_gb must be > 0, got {memory_gb}")
        self.budget = int(memory_gb * 2**30) if memory_gb is not None else int(0.8 * _machine_memory_bytes())
        self.mode, self.row_bytes, self.block, self.readoff = basis, row_bytes, block, readoff_rows * row_bytes
        self.on_disk = basis == "disk"
        self.moved_at: int | None = 0 if self.on_disk else None
        # memory one more block step adds: Q_j and J Q_j, or Q_j in float16, or nothing
        self.step_bytes = {"half": block * (row_bytes // itemsize) * 2, "none": 0}.get(basis, 2 * block * row_bytes)
        self._before_move = 0.0  # MiB: the peak up to the move (the high-water mark is reset there)

    def peak_mb(self) -> float:
        """The process's peak resident memory so far (MiB), across a move to disk."""
        return max(self._before_move, peak_memory_mb())

    @staticmethod
    def _peak(peak_bytes: int | None) -> int:
        return int(peak_memory_mb() * 2**20) if peak_bytes is None else int(peak_bytes)

    def check_start(self, total_steps: int, peak_bytes: int | None = None) -> bool:
        """Before the first step: the basis starts on disk when all of it could never fit (auto mode)."""
        peak = self._peak(peak_bytes)
        whole = total_steps * self.step_bytes
        if self.mode == "auto" and not self.on_disk and peak + whole + self.readoff > self.budget:
            self.on_disk, self.moved_at = True, 0
        if self.mode == "half":
            self._half_fits(peak, whole, total_steps)
        return self.on_disk

    def _half_fits(self, peak: int, to_come: int, steps: int) -> None:
        if peak + to_come + self.readoff > self.budget:
            raise MemoryBudgetError(
                f"the float16 Krylov basis of {steps} more block steps needs {to_come / 2**30:.2f} GiB on top of "
                f"{peak / 2**30:.2f} GiB in use, over the budget of {self.budget / 2**30:.2f} GiB; use --basis disk "
                "(or auto), fewer --lanczos-steps, or raise --memory-gb (the steps are saved: add --resume)")

    def check(self, steps: int, total_steps: int, peak_bytes: int | None = None) -> bool:
        """After a step: True when the basis must move to disk now; raises when nothing fits.

        Args:
            steps: block steps done; total_steps: planned.
            peak_bytes: the peak resident memory to judge by (default: measured now).
        """
        peak = self._peak(peak_bytes)
        if self.mode == "half":
            self._half_fits(peak, (total_steps - steps) * self.step_bytes, total_steps - steps)
            return False
        if not self.on_disk and self.mode != "none":  # a basis that is not stored cannot move
            to_come = (total_steps - steps) * self.step_bytes  # Q_j and J Q_j
            if self.mode == "auto" and peak + to_come + self.readoff > self.budget:
                self.on_disk, self.moved_at = True, steps
                self._before_move = self.peak_mb()
                _reset_peak_rss()  # from here on the peak is that of a run with its basis on disk
                return True
            return False
        need = peak + self.readoff + 2 * self.block * self.row_bytes
        if need > self.budget:
            where = "not stored" if self.mode == "none" else "already on disk"
            raise MemoryBudgetError(
                f"the products need {peak / 2**30:.2f} GiB of peak memory (measured) and the read-off "
                f"{self.readoff / 2**30:.2f} GiB more, over the budget of {self.budget / 2**30:.2f} GiB "
                f"with the Krylov basis {where}; raise --memory-gb (the steps are saved: add --resume) "
                "or use fewer --probes")
        return False

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "on_disk": self.on_disk, "moved_to_disk_after_step": self.moved_at,
                "budget_mb": self.budget / 2**20}


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
    retries = s["lanczos"].get("float64_retries", 0)
    if retries:
        out.append(f"{retries} block product(s) were recomputed in float64: a float32 row failed "
                   "vᵀ(JᵀJ v) = ‖J v‖² (the reverse pass broke down); the run's time includes them, and "
                   "--dtype float64 avoids the float32 attempts")
    if budget_hit:
        out.append(f"stopped by the time budget after {s['lanczos']['steps']} of "
                   f"{s['lanczos']['steps_requested']} block steps; --resume continues")
    o = s["lanczos"].get("orthogonality")
    if o is not None and o["basis_stored"] is False:
        out.append(
            f"the Krylov basis was not stored (--basis none): its estimated loss of orthogonality is "
            f"{o['paige_estimate']:.1e} (Paige), and {o['repeated_ritz_values_dropped']} repeated Ritz values "
            "were dropped from the top list; no singular vectors are written. With a loss near 1 the counts "
            "can be biased beyond their error bars (1M-parameter MLP, 48 steps: chaotic 52k ± 12k against "
            "17.9k ± 0.7k with the basis stored): use --basis half for counts at a quarter of the basis's memory")
    elif o is not None and o["bound"] > HALF_BOUND_WARN:
        out.append(f"the float16 basis's loss of orthogonality reached {o['bound']:.1e} (bound), above "
                   f"{HALF_BOUND_WARN:g}: compare the counts with a run at full precision (--basis auto)")
    return out
