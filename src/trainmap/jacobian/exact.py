"""The exact training Jacobian J = ∂θ_T/∂θ₀, in resumable chunks of columns (or rows).

Column j of J is the Jacobian-vector product of the whole training run with the basis vector
e_j. By default training runs once and the linearisation of every step is stored
(:mod:`trainmap.jacobian.engine`); each chunk of K directions then runs only the linear tangent
recursion through the stored steps, split over all JAX devices. When the stored steps would not
fit the memory budget, each chunk is a compiled ``vmap`` of ``jvp`` through the whole ``lax.scan``
training loop instead (the primal is then recomputed per chunk). Each finished chunk is written to
disk with a checksum, so an interrupted computation resumes where it stopped and — since every
chunk is recomputed by the same compiled program — yields the bit-identical matrix.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trainmap._io import (NpyStreamWriter, atomic_save_npy, atomic_write_json, load_npy, read_json,
                          release_memory)
from trainmap._progress import progress as _progress
from trainmap.jacobian import engine as _engine
from trainmap.recipe import Recipe, TrainingDivergedError

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint folder is corrupt or belongs to a different computation."""


# ----------------------------------------------------------------------------- dtypes
def precision_context(dtype: Any) -> Any:
    """A context enabling 64-bit JAX when ``dtype`` is float64 (a no-op for float32)."""
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else nullcontext()


def _check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


# ----------------------------------------------------------------------------- kernels
def jvp_columns_fn(train: Callable[[jax.Array], jax.Array], num_params: int, chunk: int) -> Callable:
    """A jitted ``f(theta0, start) -> (chunk, P)`` whose row r is column ``start + r`` of J.

    Rows past P (the padded tail of the last chunk) are zero: their tangent is the zero vector.
    ``start`` is a traced scalar, so every chunk reuses one compiled program.
    """

    def columns(theta0: jax.Array, start: jax.Array) -> jax.Array:
        idx = start + jnp.arange(chunk)
        tangents = jax.nn.one_hot(idx, num_params, dtype=theta0.dtype)  # (chunk, P); zero rows past P

        def one(t: jax.Array) -> jax.Array:
            return jax.jvp(train, (theta0,), (t,))[1]

        return jax.vmap(one)(tangents)

    return jax.jit(columns)


def bytes_per_chunk(train: Callable, theta0: jax.Array, chunk: int) -> int:
    """XLA's estimate of the memory (bytes) of one compiled chunk of ``chunk`` tangents."""
    fn = jvp_columns_fn(train, theta0.shape[0], chunk)
    compiled = fn.lower(theta0, jnp.asarray(0, jnp.int32)).compile()
    mem = compiled.memory_analysis()
    if mem is None:  # some backends do not report; fall back to a crude estimate
        return int(8 * chunk * theta0.shape[0] * theta0.dtype.itemsize)
    return int(mem.temp_size_in_bytes + mem.output_size_in_bytes + mem.argument_size_in_bytes)


def choose_chunk_size(
    train: Callable, theta0: jax.Array, memory_budget_bytes: float, max_chunk: int = 128
) -> int:
    """The largest chunk (≤ ``max_chunk`` and ≤ P) whose compiled working set fits the budget.

    The working set is measured by XLA at two small chunk sizes and extrapolated linearly
    (memory is affine in the number of tangents).
    """
    P = int(theta0.shape[0])
    k1, k2 = 8, 32
    m1, m2 = bytes_per_chunk(train, theta0, k1), bytes_per_chunk(train, theta0, k2)
    per_tangent = max((m2 - m1) / (k2 - k1), 1.0)
    fixed = max(m1 - per_tangent * k1, 0.0)
    fit = int((memory_budget_bytes - fixed) // per_tangent)
    if fit < 1:
        raise MemoryError(
            f"one tangent needs about {per_tangent / 2**20:.1f} MiB beyond a fixed "
            f"{fixed / 2**20:.1f} MiB, over the memory budget of {memory_budget_bytes / 2**20:.0f} MiB; "
            "raise the budget (--memory-gb) or train on smaller batches"
        )
    return int(max(1, min(fit, max_chunk, P)))


# ----------------------------------------------------------------------------- checkpoints
def fingerprint(recipe: Recipe, theta0: np.ndarray, dtype: np.dtype, chunk: int, engine: str = "") -> str:
    """A hash of everything that determines the chunks: θ₀, data order, data, config, dtype, K
    and (``engine``) the program that computes them (mode, primal sharing, device count)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(theta0).tobytes())
    h.update(np.ascontiguousarray(np.asarray(recipe.batches)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(recipe.x)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(recipe.y)).tobytes())
    h.update(repr(sorted(recipe.config.items())).encode())
    h.update(f"{dtype.str}|{chunk}|{recipe.num_params}".encode())
    if engine:
        h.update(engine.encode())
    return h.hexdigest()


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@dataclass
class ChunkStore:
    """Finished chunks of J's columns on disk: ``chunk_00000.npy`` ... plus ``manifest.json``.

    Chunk i holds the (K_i, P) array whose rows are columns [i·K, i·K + K_i) of J (forward mode)
    or rows [i·K, i·K + K_i) of J (reverse mode; the fingerprint records the mode).
    """

    folder: Path
    num_params: int
    chunk: int
    dtype: np.dtype
    fp: str

    @property
    def n_chunks(self) -> int:
        return -(-self.num_params // self.chunk)

    def path(self, i: int) -> Path:
        return self.folder / f"chunk_{i:05d}.npy"

    def _manifest(self) -> dict:
        return read_json(self.folder / MANIFEST)

    def open(self, resume: bool) -> None:
        """Create the folder, or check that an existing one belongs to this computation."""
        man_path = self.folder / MANIFEST
        if man_path.exists():
            man = self._manifest()
            if not resume:
                raise CheckpointError(
                    f"{self.folder} already holds {len(man.get('checksums', {}))} finished chunks "
                    "of a Jacobian; pass resume=True (CLI: --resume) to continue it, or remove the "
                    "folder (CLI: --overwrite) to start over"
                )
            if man.get("fingerprint") != self.fp:
                raise CheckpointError(
                    f"the checkpoint in {self.folder} belongs to a different run (other recipe, θ₀, "
                    "dtype or chunk size); use another output folder or --overwrite"
                )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(man_path, dict(fingerprint=self.fp, num_params=self.num_params,
                                         chunk=self.chunk, dtype=self.dtype.name, checksums={}))

    def done(self) -> dict[int, str]:
        return {int(k): v for k, v in self._manifest().get("checksums", {}).items()}

    def save(self, i: int, block: np.ndarray) -> None:
        atomic_save_npy(self.path(i), block)
        man = self._manifest()
        man["checksums"][str(i)] = _sha(block)
        atomic_write_json(self.folder / MANIFEST, man)

    def load(self, i: int, checksum: str) -> np.ndarray:
        p = self.path(i)
        rows = min(self.chunk, self.num_params - i * self.chunk)
        hint = f"delete {p.name} (the other chunks are kept) and resume to recompute it"
        if not p.exists():
            raise CheckpointError(f"chunk file {p} is listed as finished but missing; {hint}")
        try:
            block = load_npy(p)
        except ValueError as exc:
            raise CheckpointError(f"{exc}; {hint}") from exc
        if block.shape != (rows, self.num_params) or block.dtype != self.dtype:
            raise CheckpointError(
                f"chunk file {p} has shape {block.shape} and dtype {block.dtype}, expected "
                f"{(rows, self.num_params)} {self.dtype}; it is corrupt: {hint}"
            )
        if _sha(block) != checksum:
            raise CheckpointError(f"chunk file {p} fails its checksum; it is corrupt: {hint}")
        return block

    def forget(self, i: int) -> None:
        """Drop chunk i from the manifest (used when its file was deleted by the user)."""
        man = self._manifest()
        man["checksums"].pop(str(i), None)
        atomic_write_json(self.folder / MANIFEST, man)


# ----------------------------------------------------------------------------- engine
MODES = ("auto", "forward", "reverse")
PRIMALS = ("auto", "shared", "per_chunk")


@dataclass(frozen=True)
class EnginePlan:
    """How :func:`exact_jacobian` computes J (see :func:`plan_engine`).

    Attributes:
        mode: ``"forward"`` (chunks of columns, Jacobian-vector products) or ``"reverse"``
            (chunks of rows, vector-Jacobian products through the stored steps).
        primal: ``"shared"`` (training runs once; its step linearisations are stored) or
            ``"per_chunk"`` (each chunk differentiates the whole training run, primal included).
        chunk: K, directions per chunk (a multiple of the device count).
        n_devices: devices each chunk is split over.
        residual_bytes: memory of the stored step linearisations (0 for ``per_chunk``).
        rules: ``"mlp"`` (hand-derived tangent rules of :mod:`~trainmap.jacobian.fast_mlp`, for
            recognised MLP recipes, forward mode with shared primal) or ``"autodiff"`` (JAX's
            linearisation of the recipe's step).
        mlp: the recognised MLP (``rules == "mlp"``), else None.
    """

    mode: str
    primal: str
    chunk: int
    n_devices: int
    residual_bytes: int
    rules: str = "autodiff"
    mlp: Any = None

    @property
    def signature(self) -> str:
        """What, besides the inputs, determines a chunk's bits (part of the checkpoint fingerprint)."""
        return f"engine={self.mode}|{self.primal}|{self.rules}|devices={self.n_devices}"


def _jvp_columns(train: Callable[[jax.Array], jax.Array], num_params: int, chunk: int) -> Callable:
    inner = jvp_columns_fn(train, num_params, chunk)
    return lambda theta0, start: inner(theta0, start)


def plan_engine(
    recipe: Recipe,
    theta0: jax.Array,
    *,
    mode: str = "auto",
    primal: str = "auto",
    chunk_size: int | None = None,
    memory_budget_gb: float = 2.0,
    devices: int | Sequence[Any] | None = None,
    specialize: bool = True,
) -> EnginePlan:
    """Choose mode, primal sharing, tangent rules and chunk size (no Jacobian is computed).

    * ``mode="auto"`` picks forward mode: J is square (P×P), so forward and reverse need the same
      number of directions, and forward mode needs no transposed steps.
    * ``primal="auto"`` stores the step linearisations (those of the MLP rules when the recipe is
      recognised) when they take at most half of
      ``memory_budget_gb``, else recomputes the primal per chunk (reverse mode needs them stored).
    * The default chunk keeps each device's tangents near :data:`engine.CACHE_BYTES` (at most 128
      per device) for the shared primal, or is the largest that fits the budget (at most 128)
      otherwise; either way it is rounded up to a multiple of the device count.
    * With ``specialize`` (default), forward mode with a shared primal uses the hand-derived MLP
      tangent rules when :func:`~trainmap.jacobian.fast_mlp.detect_mlp` recognises the recipe.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if primal not in PRIMALS:
        raise ValueError(f"primal must be one of {PRIMALS}, got {primal!r}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    budget = memory_budget_gb * 2**30
    n = len(_engine.resolve_devices(devices))
    P = recipe.num_params
    mode = "forward" if mode == "auto" else mode
    spec = None
    if specialize and mode == "forward" and primal != "per_chunk":
        from trainmap.jacobian import fast_mlp

        spec = fast_mlp.detect_mlp(recipe, theta0)
    rb = 0
    if primal != "per_chunk":
        rb = (fast_mlp.residual_bytes(recipe, spec, theta0) if spec is not None
              else _engine.residual_bytes(recipe, theta0))
        if primal == "auto":
            primal = "shared" if rb <= budget / 2 else "per_chunk"
    if mode == "reverse" and primal != "shared":
        raise ValueError("reverse mode runs through the stored step linearisations (primal='shared'); "
                         f"they need {rb / 2**20:.0f} MiB: raise memory_budget_gb or use mode='forward'")
    if primal == "per_chunk":
        rb, spec = 0, None
    if chunk_size:
        K = min(int(chunk_size), P)
    elif primal == "shared":
        floats = sum(int(np.prod(jnp.shape(x))) for x in jax.tree_util.tree_leaves(
            recipe._init_state(theta0)) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact))
        K = min(_engine.cache_chunk(P, floats, theta0.dtype.itemsize, n), P)
    else:
        K = choose_chunk_size(recipe.train, theta0, budget)
    K = -(-K // n) * n
    release_memory()  # tracing and the detection's compilations leave freed heap behind
    return EnginePlan(mode, primal, K, n, rb, "mlp" if spec is not None else "autodiff", spec)


def exact_jacobian(
    recipe: Recipe,
    theta0: Any,
    *,
    dtype: Any = np.float32,
    chunk_size: int | None = None,
    memory_budget_gb: float = 2.0,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    keep_checkpoint: bool = False,
    mode: str = "auto",
    primal: str = "auto",
    devices: int | Sequence[Any] | None = None,
    specialize: bool = True,
    out: str | os.PathLike | None = None,
) -> np.ndarray:
    """The exact training Jacobian J[i, j] = ∂θ_T[i] / ∂θ₀[j].

    Args:
        recipe: the training run.
        theta0: (P,) initial flat parameters.
        dtype: float32 (default) or float64; float64 enables JAX's x64 mode for this call only.
        chunk_size: directions per compiled chunk (K), rounded up to a multiple of the device
            count; default: see :func:`plan_engine`.
        memory_budget_gb: budget, in GiB, for the stored step linearisations plus one chunk.
        checkpoint_dir: folder for finished chunks; None keeps everything in memory.
        resume: continue the chunks already in ``checkpoint_dir`` (must be the same computation,
            engine settings included).
        progress: show a progress bar over chunks.
        stop_after: compute at most this many new chunks, then raise ``KeyboardInterrupt`` as a
            user's Ctrl-C would (used to test resumption).
        keep_checkpoint: keep the chunk files after success (default: delete them).
        mode: ``"auto"`` (forward), ``"forward"`` (chunks of columns) or ``"reverse"`` (chunks of
            rows through the transposed steps).
        primal: ``"auto"``, ``"shared"`` (train once, store every step's linearisation, run only
            the tangent recursion per chunk) or ``"per_chunk"`` (``vmap(jvp(train))`` per chunk).
        devices: split each chunk's directions over these JAX devices: None (all devices of the
            default backend), a count, or a list of devices.
        specialize: use hand-derived tangent rules for recognised MLP recipes (forward mode,
            shared primal); False always uses JAX's linearisation of the training step.
        out: stream J into this ``.npy`` file as chunks finish instead of holding it in memory
            (Fortran order in forward mode, so each chunk is one contiguous write; the file
            appears under its name only when complete). Use it when J is large next to RAM.

    Returns:
        J: (P, P) NumPy array of ``dtype``; with ``out``, a read-only memory map of the file.

    Raises:
        TrainingDivergedError: a chunk contains NaN/inf (training is not differentiable there).
        CheckpointError: a corrupt chunk or a checkpoint of another run; finished chunks stay.
    """
    dt = _check_dtype(dtype)
    with precision_context(dt):
        theta0 = recipe._check_theta(jnp.asarray(theta0, dtype=dt))
        P = recipe.num_params
        plan = plan_engine(recipe, theta0, mode=mode, primal=primal, chunk_size=chunk_size,
                           memory_budget_gb=memory_budget_gb, devices=devices,
                           specialize=specialize)
        K = plan.chunk
        store = None
        if checkpoint_dir is not None:
            store = ChunkStore(Path(checkpoint_dir), P, K, dt,
                               fingerprint(recipe, np.asarray(theta0), dt, K, plan.signature))
            store.open(resume)
            if resume:  # a resumed run keeps the chunk size it started with
                K = store.chunk
        n_chunks = -(-P // K)
        rows_of_J = plan.mode == "reverse"
        with _Assembler(P, dt, rows_of_J, out) as asm:
            done = store.done() if store is not None else {}
            for i, checksum in sorted(done.items()):
                asm.put(i * K, store.load(i, checksum))  # type: ignore[union-attr]
            todo = [i for i in range(n_chunks) if i not in done]
            if todo:
                _compute_chunks(recipe, theta0, plan, K, todo, asm, store, devices, progress,
                                stop_after)
            J = asm.finish()
        if store is not None and not keep_checkpoint:
            shutil.rmtree(store.folder, ignore_errors=True)
        return J


class _Assembler:
    """Collects chunks of J: rows (reverse mode) or columns (forward mode), in memory or in ``out``."""

    def __init__(self, P: int, dtype: np.dtype, rows_of_J: bool, out: str | os.PathLike | None) -> None:
        self.rows_of_J = rows_of_J
        self.writer = NpyStreamWriter(out, (P, P), dtype, fortran_order=not rows_of_J) if out else None
        self.J = None if out else np.empty((P, P), dtype=dtype)

    def put(self, start: int, block: np.ndarray) -> None:
        """Store ``block`` (n, P): rows (reverse) or columns (forward) ``start .. start + n`` of J."""
        if self.writer is not None:
            self.writer.write(start, block)
        elif self.rows_of_J:
            self.J[start: start + block.shape[0], :] = block
        else:
            self.J[:, start: start + block.shape[0]] = block.T

    def finish(self) -> np.ndarray:
        if self.writer is None:
            return self.J
        return load_npy(self.writer.commit(), mmap=True)

    def __enter__(self) -> "_Assembler":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.writer is not None:
            self.writer.close()


def _compute_chunks(recipe: Recipe, theta0: jax.Array, plan: EnginePlan, K: int, todo: list[int],
                    asm: _Assembler, store: ChunkStore | None, devices: Any, progress: bool,
                    stop_after: int | None) -> None:
    """Run the chunks ``todo`` of ``plan``, saving each to ``store`` (if any) and ``asm``."""
    P, rows_of_J = recipe.num_params, asm.rows_of_J
    devs = _engine.resolve_devices(devices)
    if plan.rules == "mlp":
        from trainmap.jacobian import fast_mlp

        # compile both programs before the residuals exist and trim the heap after each stage,
        # so that compiler memory never adds to the residuals' (multi-device chunk programs
        # compile on their first call)
        shapes, compile_primal = fast_mlp.planned_primal(recipe, plan.mlp, theta0)
        program = _engine.sharded(lambda k: fast_mlp.forward_columns(shapes, k), K, devs)
        if len(devs) == 1:
            program = program.lower(shapes.args, jax.ShapeDtypeStruct((), jnp.int32)).compile()
            release_memory()
        run_primal = compile_primal()
        release_memory()
        arg = run_primal().args
    elif plan.primal == "shared":
        sp = _engine.shared_primal(recipe, theta0)
        local = (lambda k: _engine.reverse_rows(sp, k)) if rows_of_J else \
            (lambda k: _engine.forward_columns(sp, k))
        program, arg = _engine.sharded(local, K, devs), sp.residuals
    else:
        program = _engine.sharded(lambda k: _jvp_columns(recipe.train, P, k), K, devs)
        arg = theta0
    # wait for the primal pass (dispatch is asynchronous) so that its working memory is freed
    # before the chunk program compiles, instead of both peaking together
    jax.block_until_ready(arg)
    release_memory()

    def launch(i: int) -> jax.Array:  # asynchronous: returns before the chunk is computed
        return program(arg, jnp.asarray(i * K, jnp.int32))

    what = "rows" if rows_of_J else "columns"
    computed = 0
    label = (f"Jacobian {what} ({P} params, {K}/chunk, {plan.mode}, {plan.primal} primal, "
             f"{plan.rules} rules, {len(devs)} device(s))")
    with _progress(progress, len(todo), label) as advance:
        pending = launch(todo[0])
        for n_i, i in enumerate(todo):
            if stop_after is not None and computed >= stop_after:
                raise KeyboardInterrupt(f"stopped after {computed} chunks (stop_after)")
            current = pending
            if n_i + 1 < len(todo) and (stop_after is None or computed + 1 < stop_after):
                pending = launch(todo[n_i + 1])  # queue the next chunk before reading this one
            rows = min(K, P - i * K)
            block = np.asarray(current)[:rows]
            if not np.all(np.isfinite(block)):
                raise TrainingDivergedError(
                    f"{what} {i * K}..{i * K + rows - 1} of J contain NaN/inf: training is not "
                    "differentiable along those directions (diverged or overflowed). Lower the "
                    "learning rate or use float64. With Adam-like optimizers, parameters whose "
                    "gradient is exactly 0 make sqrt(v) non-differentiable: pass eps_root > 0, "
                    "e.g. optax.adam(lr, eps_root=1e-16). Finished chunks are kept."
                )
            if store is not None:
                store.save(i, block)
            asm.put(i * K, block)
            # the first chunk ends the compilation; later ones leave their freed working memory
            # in the arenas of whichever XLA threads ran them (trimming every chunk cost ~5%)
            if computed % 8 == 0:
                release_memory(collect=computed == 0)
            computed += 1
            advance()

