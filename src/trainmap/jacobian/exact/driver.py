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
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trainmap._io import NpyStreamWriter, load_npy, release_memory
from trainmap._progress import progress as _progress
from trainmap.jacobian.exact import engine as _engine
from trainmap.jacobian.exact.checkpoint import ChunkStore, fingerprint
from trainmap.jacobian.exact.plan import EnginePlan, jvp_columns_fn, plan_engine
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
        dirs = _Directions(P, K, np.asarray(plan.unit_columns, np.int64), dt)
        rows_of_J = plan.mode == "reverse"
        with _Assembler(P, dt, rows_of_J, out) as asm:
            done = store.done() if store is not None else {}
            for i, checksum in sorted(done.items()):
                block = store.load(i, checksum, dirs.rows(i))  # type: ignore[union-attr]
                if block is None:  # deleted by the user after a checksum failure: recompute it
                    del done[i]
                else:
                    dirs.absorb(i, block, asm)
            todo = [i for i in range(dirs.n_chunks(certified=True)) if i not in done]
            if todo or dirs.uncertified(done):
                _compute_chunks(recipe, theta0, plan, dirs, todo, done, asm, store, devices, progress,
                                stop_after)
            dirs.fill_units(asm)
            J = asm.finish()
        if store is not None and not keep_checkpoint:
            shutil.rmtree(store.folder, ignore_errors=True)
        return J


class _Directions:
    """The tangent directions of the chunks, in order, and the certificate of the unit columns.

    The directions are e_j for every column j (rows in reverse mode), except the planned unit
    columns (``EnginePlan.unit_columns``), which move to the end, and one probe in front: a fixed
    random combination r of the unit columns. If J r = r exactly (chunk 0 shows it), the unit
    columns' chunks are not computed and those columns are written as e_j. J r = r for a random
    r means (J − I) vanishes on the unit columns with probability 1; the structural reason
    (:func:`~trainmap.jacobian.exact.mlp_rules.dead_input_columns`) makes the result exact.
    Otherwise (e.g. weight decay rescales them) they are computed like the others.
    """

    def __init__(self, P: int, K: int, units: np.ndarray, dtype: np.dtype) -> None:
        self.P, self.K, self.units, self.dtype = P, K, units, dtype
        if len(units):
            live = np.setdiff1d(np.arange(P), units)
            self.order = np.concatenate([[-1], live, units])  # -1: the probe
            self.probe = np.zeros(P, dtype)
            self.probe[units] = np.random.default_rng(0).uniform(1.0, 2.0, len(units))
        else:
            self.order, self.probe = np.arange(P), None
        #: None until chunk 0's probe is read (and always None without unit columns)
        self.certified: bool | None = None

    def n_chunks(self, certified: bool) -> int:
        """Chunks needed when the unit columns are certified (skipped), or not."""
        n = len(self.order) - (len(self.units) if certified else 0)
        return -(-n // self.K)

    def uncertified(self, done: dict) -> list[int]:
        """The chunks of unit-column candidates still to compute once the probe has failed."""
        if self.certified is not False:
            return []
        return [i for i in range(self.n_chunks(certified=True), self.n_chunks(certified=False))
                if i not in done]

    def index(self, i: int) -> np.ndarray:
        """Chunk i's directions: column (row) indices, -1 for the probe."""
        return self.order[i * self.K: (i + 1) * self.K]

    def rows(self, i: int) -> int:
        """Rows of chunk i."""
        return len(self.index(i))

    def matrix(self, i: int) -> np.ndarray:
        """Chunk i's (K, P) directions (zero rows past the last)."""
        idx = self.index(i)
        V = np.zeros((self.K, self.P), self.dtype)
        unit = idx >= 0
        V[np.flatnonzero(unit), idx[unit]] = 1
        if not unit.all():
            V[np.flatnonzero(~unit)] = self.probe
        return V

    def absorb(self, i: int, block: np.ndarray, asm: "_Assembler") -> None:
        """Put chunk i's finished rows (``block``, (rows(i), P)) into ``asm``; check the probe."""
        idx = self.index(i)
        unit = idx >= 0
        if not unit.all():
            self.certified = bool(np.array_equal(block[~unit][0], self.probe))
        asm.put(idx[unit], block[unit])

    def fill_units(self, asm: "_Assembler") -> None:
        """Write e_j for the certified unit columns no chunk computed (those past the chunks that
        :meth:`n_chunks` counts when certified: only unit columns sit there)."""
        if not self.certified:
            return
        left = self.order[self.n_chunks(certified=True) * self.K:]
        for start in range(0, len(left), self.K):
            cols = left[start: start + self.K]
            block = np.zeros((len(cols), self.P), self.dtype)
            block[np.arange(len(cols)), cols] = 1
            asm.put(cols, block)


class _Assembler:
    """Collects chunks of J: rows (reverse mode) or columns (forward mode), in memory or in ``out``."""

    def __init__(self, P: int, dtype: np.dtype, rows_of_J: bool, out: str | os.PathLike | None) -> None:
        self.rows_of_J = rows_of_J
        self.writer = NpyStreamWriter(out, (P, P), dtype, fortran_order=not rows_of_J) if out else None
        self.J = None if out else np.empty((P, P), dtype=dtype)

    def put(self, index: np.ndarray, block: np.ndarray) -> None:
        """Store ``block`` (n, P) as rows (reverse) or columns (forward) ``index`` (n,) of J."""
        if self.writer is not None:
            # one write per run of consecutive indices
            cuts = np.flatnonzero(np.diff(index) != 1) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(index)]):
                self.writer.write(int(index[lo]), block[lo:hi])
        elif self.rows_of_J:
            self.J[index, :] = block
        else:
            self.J[:, index] = block.T

    def finish(self) -> np.ndarray:
        if self.writer is None:
            return self.J
        return load_npy(self.writer.commit(), mmap=True)

    def __enter__(self) -> "_Assembler":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.writer is not None:
            self.writer.close()


def _compute_chunks(recipe: TrainingMap, theta0: jax.Array, plan: EnginePlan, dirs: _Directions,
                    todo: list[int], done: dict, asm: _Assembler, store: ChunkStore | None, devices: Any,
                    progress: bool, stop_after: int | None) -> None:
    """Run the chunks ``todo`` of ``plan``, saving each to ``store`` (if any) and ``asm``; then,
    if chunk 0's probe shows that the unit columns are not unit vectors, their chunks too."""
    P, K, rows_of_J = recipe.num_params, dirs.K, asm.rows_of_J
    devs = _engine.resolve_devices(devices)
    V_aval = jax.ShapeDtypeStruct((K, P), theta0.dtype)
    as_input: Callable = jnp.asarray  # the chunk's directions, as the program takes them
    if plan.rules == "mlp":
        from trainmap.jacobian.exact import mlp_rules

        # compile both programs before the residuals exist and trim the heap after each stage,
        # so that compiler memory never adds to the residuals' (multi-device chunk programs
        # compile on their first call)
        shapes, compile_primal = mlp_rules.planned_primal(recipe, plan.mlp, theta0)
        program = _engine.sharded(lambda k: mlp_rules.forward_columns(shapes, k), K, devs)
        if len(devs) == 1:
            program = program.lower(shapes.args, V_aval).compile()
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
        program, arg, as_input = recipe.jvp, np.asarray(theta0), np.asarray
    else:
        program = _engine.sharded(lambda k: jvp_columns_fn(recipe.train), K, devs)
        arg = theta0
    # wait for the primal pass (dispatch is asynchronous) so that its working memory is freed
    # before the chunk program compiles, instead of both peaking together
    jax.block_until_ready(arg)
    release_memory(full=True)

    def launch(i: int) -> Any:  # asynchronous: returns before the chunk is computed
        return program(arg, as_input(dirs.matrix(i)))

    what = "rows" if rows_of_J else "columns"
    computed = 0

    def run(todo: list[int], label: str) -> None:
        nonlocal computed
        with _progress(progress, len(todo), label) as advance:
            pending = launch(todo[0])
            for n_i, i in enumerate(todo):
                if stop_after is not None and computed >= stop_after:
                    raise KeyboardInterrupt(f"stopped after {computed} chunks (stop_after)")
                current = pending
                if n_i + 1 < len(todo) and (stop_after is None or computed + 1 < stop_after):
                    pending = launch(todo[n_i + 1])  # queue the next chunk before reading this one
                block = np.asarray(current)[:dirs.rows(i)]
                if not np.all(np.isfinite(block)):
                    raise TrainingDivergedError(
                        f"chunk {i} of J's {what} contains NaN/inf: training is not "
                        "differentiable along those directions (diverged or overflowed). Lower the "
                        "learning rate or use float64. With Adam-like optimizers, parameters whose "
                        "gradient is exactly 0 make sqrt(v) non-differentiable: pass eps_root > 0, "
                        "e.g. optax.adam(lr, eps_root=1e-16). Finished chunks are kept."
                    )
                if store is not None:
                    store.save(i, block)
                dirs.absorb(i, block, asm)
                # the first chunk ends the compilation; later ones leave their freed working memory
                # in the arenas of whichever XLA threads ran them (trimming every chunk cost ~5%)
                if computed % 8 == 0:
                    release_memory(collect=computed == 0)
                computed += 1
                advance()

    label = (f"Jacobian {what} ({P} params, {K}/chunk, {plan.mode}, {plan.primal} primal, "
             f"{plan.rules} rules, {len(devs)} device(s))")
    if todo:
        run(todo, label)
    extra = dirs.uncertified(done)
    if extra:
        run(extra, f"{label}: the {len(dirs.units)} unit-vector candidates, not certified")
