"""The exact training Jacobian J = ∂θ_T/∂θ₀, in resumable chunks of columns (or rows).

Column j of J is the Jacobian-vector product of the whole training run with the basis vector
e_j. By default training runs once and the linearisation of every step is stored
(:mod:`trainmap.jacobian.exact.engine`); each chunk of K directions then runs only the linear tangent
recursion through the stored steps, split over all JAX devices. When the stored steps would not
fit the memory budget, each chunk is a compiled ``vmap`` of ``jvp`` through the whole ``lax.scan``
training loop instead (the primal is then recomputed per chunk). Each finished chunk is written to
disk with a checksum, so an interrupted computation resumes where it stopped and — since every
chunk is recomputed by the same compiled program — yields the bit-identical matrix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trainmap._io import NpyStreamWriter, load_npy, release_memory
from trainmap._progress import progress as _progress
from trainmap.jacobian.exact import engine as _engine
from trainmap.jacobian.exact.checkpoint import ChunkStore, fingerprint
from trainmap.jacobian.exact.plan import EnginePlan, _jvp_columns, plan_engine
from trainmap.jacobian.precision import check_dtype, precision_context
from trainmap.protocol import TrainingMap, is_traceable
from trainmap.recipe import TrainingDivergedError


def exact_jacobian(
    recipe: TrainingMap,
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
    dt = check_dtype(dtype)
    with precision_context(dt):
        theta0 = recipe.check_theta(jnp.asarray(theta0, dtype=dt))
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
                block = store.load(i, checksum)  # type: ignore[union-attr]
                if block is None:  # deleted by the user after a checksum failure: recompute it
                    del done[i]
                else:
                    asm.put(i * K, block)
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


def _compute_chunks(recipe: TrainingMap, theta0: jax.Array, plan: EnginePlan, K: int, todo: list[int],
                    asm: _Assembler, store: ChunkStore | None, devices: Any, progress: bool,
                    stop_after: int | None) -> None:
    """Run the chunks ``todo`` of ``plan``, saving each to ``store`` (if any) and ``asm``."""
    P, rows_of_J = recipe.num_params, asm.rows_of_J
    devs = _engine.resolve_devices(devices)
    if plan.rules == "mlp":
        from trainmap.jacobian.exact import mlp_rules

        # compile both programs before the residuals exist and trim the heap after each stage,
        # so that compiler memory never adds to the residuals' (multi-device chunk programs
        # compile on their first call)
        shapes, compile_primal = mlp_rules.planned_primal(recipe, plan.mlp, theta0)
        program = _engine.sharded(lambda k: mlp_rules.forward_columns(shapes, k), K, devs)
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
    elif not is_traceable(recipe):  # another backend: its own jvp on chunks of basis vectors
        dt = np.dtype(theta0.dtype)

        def program(th: Any, start: Any) -> np.ndarray:
            V = np.zeros((K, P), dtype=dt)
            s0 = int(start)
            n = min(K, P - s0)
            V[np.arange(n), s0 + np.arange(n)] = 1
            return recipe.jvp(th, V)

        arg = np.asarray(theta0)
    else:
        program = _engine.sharded(lambda k: _jvp_columns(recipe.train, P, k), K, devs)
        arg = theta0
    # wait for the primal pass (dispatch is asynchronous) so that its working memory is freed
    # before the chunk program compiles, instead of both peaking together
    jax.block_until_ready(arg)
    release_memory(full=True)

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

