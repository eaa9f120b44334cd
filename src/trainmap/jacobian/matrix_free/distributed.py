"""Sharding of a block of vectors (the tangent / probe axis) over every JAX device.

Matrix-free products act on blocks of vectors ``V: (k, P)`` that are independent of one another,
so the rows of a block can be split across devices while θ₀ and the data are replicated: every
device runs the whole training run for its own rows. :func:`shard_rows` wraps a block function
``f(theta0, V) -> (k, ...)`` in ``jax.shard_map`` over a one-axis mesh of all devices
(``jax.devices()``, which spans every host under ``jax.distributed``); blocks whose row count is
not a multiple of the device count are padded with zero rows, which are dropped from the output.

To try it on a CPU, set ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` *before* JAX is
imported; the results equal the single-device ones (each row is computed by the same program).

Several processes (JAX's multi-controller runtime, ``jax.distributed``; CPU collectives through
gloo): :func:`initialize` joins the processes, after which ``jax.devices()`` lists every process's
devices and the same mesh spans them. Process 0 drives the Lanczos iteration, its checkpoints and
the results folder; the others only compute their rows of each block. For every block, process 0
broadcasts it (:class:`ProductDriver`, ``multihost_utils.broadcast_one_to_all``), all processes run
the sharded product, and the rows come back to everyone by ``process_allgather``; the other
processes wait in :func:`serve_products`. Every transfer is one of JAX's collectives.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as PS

AXIS = "vectors"


def vector_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A one-dimensional mesh named ``"vectors"`` over ``devices`` (default: all devices)."""
    devs = list(devices) if devices is not None else jax.devices()
    if not devs:
        raise ValueError("no JAX devices to shard over")
    return Mesh(np.asarray(devs), (AXIS,))


def padded_rows(k: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh size that is >= k."""
    n = mesh.size
    return -(-k // n) * n


def shard_rows(fn: Callable[[jax.Array, jax.Array], Any], mesh: Mesh,
               compiler_options: Mapping[str, str] | None = None) -> Callable[[Any, np.ndarray], Any]:
    """Distribute the rows of the second argument of ``fn`` over ``mesh``.

    Args:
        fn: ``fn(theta0 (P,), V (k, P)) -> pytree of arrays with leading axis k``; must treat the
            rows of V independently (e.g. a ``vmap``).
        mesh: from :func:`vector_mesh`.
        compiler_options: XLA options for this program only (``jax.jit``'s ``compiler_options``).

    Returns:
        ``g(theta0, V)`` with the same outputs as ``fn`` (as NumPy arrays), computed with each
        device holding k / n_devices rows. Single-device meshes call a plain ``jit(fn)``.
    """
    if mesh.size == 1:
        jfn = jax.jit(fn, compiler_options=compiler_options)

        def single(theta0: Any, V: np.ndarray) -> Any:
            return jax.tree_util.tree_map(np.asarray, jfn(jnp.asarray(theta0), jnp.asarray(V)))

        return single

    sharded = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(PS(), PS(AXIS)), out_specs=PS(AXIS),
                                    check_vma=False), compiler_options=compiler_options)
    rows = NamedSharding(mesh, PS(AXIS))
    repl = NamedSharding(mesh, PS())

    def run(theta0: Any, V: np.ndarray) -> Any:
        V = np.asarray(V)
        k = V.shape[0]
        kp = padded_rows(k, mesh)
        if kp != k:
            V = np.concatenate([V, np.zeros((kp - k,) + V.shape[1:], V.dtype)])
        th = np.asarray(theta0)
        gV = jax.make_array_from_callback(V.shape, rows, lambda idx: V[idx])
        gth = jax.make_array_from_callback(th.shape, repl, lambda idx: th[idx])
        out = sharded(gth, gV)
        return jax.tree_util.tree_map(lambda a: _gather(a)[:k], out)

    return run


def _gather(a: jax.Array) -> np.ndarray:
    """A global array as one host NumPy array (all-gathers across processes under jax.distributed)."""
    if jax.process_count() > 1:  # pragma: no cover - needs several hosts
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


# ----------------------------------------------------------------------------- several processes
#: commands process 0 broadcasts before each collective step
STOP, GRAM = 0, 1


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join this process to a ``jax.distributed`` job (before any other JAX computation).

    With all three arguments None, JAX detects the job from its environment (SLURM, Open MPI, …).
    On CPU the collectives go through gloo (``jax_cpu_collectives_implementation``).

    Args:
        coordinator: ``host:port`` of process 0's coordination service.
        num_processes: processes in the job.
        process_id: this process's index, 0 … num_processes − 1.
    """
    given = [a is not None for a in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("give --coordinator, --num-processes and --process-id together (or none of them, "
                         "to let JAX detect the job, e.g. under SLURM)")
    if num_processes is not None and not 0 <= int(process_id) < int(num_processes):  # type: ignore[arg-type]
        raise ValueError(f"--process-id must be in 0..{int(num_processes) - 1}, got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def _digest(text: str) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint8).astype(np.int32)


def handshake(key: str) -> None:
    """Collective (every process): check that all processes built the same run.

    Args:
        key: a fingerprint of the run (recipe, θ₀, dtype, probes), e.g. from
            :func:`~trainmap.jacobian.exact.checkpoint.fingerprint`.

    Raises:
        RuntimeError: on every process, when some process built a different run.
    """
    from jax.experimental import multihost_utils

    mine = _digest(key)
    ref = np.asarray(multihost_utils.broadcast_one_to_all(mine))
    same = np.asarray(multihost_utils.process_allgather(np.array([int(np.array_equal(ref, mine))], np.int32)))
    if not same.all():
        bad = [int(i) for i in np.flatnonzero(same.ravel() == 0)]
        raise RuntimeError(f"process(es) {bad} built a different run than process 0 (recipe, θ₀, dtype or "
                           "probes); start every process with the same command")


class ProductDriver:
    """Process 0's block operator: broadcast each block, then run the collective product.

    Args:
        gram: the sharded ``X (b, P) -> (JᵀJ X, J X)`` (every process calls the same program).
        dtype: the blocks' dtype.
    """

    def __init__(self, gram: Callable[[np.ndarray], Any], dtype: Any) -> None:
        self.gram, self.dtype, self.stopped = gram, np.dtype(dtype), False

    def __call__(self, X: np.ndarray) -> Any:
        from jax.experimental import multihost_utils

        X = np.ascontiguousarray(X, dtype=self.dtype)
        multihost_utils.broadcast_one_to_all(np.array([GRAM, X.shape[0]], np.int32))
        X = np.asarray(multihost_utils.broadcast_one_to_all(X))
        return self.gram(X)

    def stop(self) -> None:
        """Release the other processes from :func:`serve_products` (idempotent)."""
        from jax.experimental import multihost_utils

        if not self.stopped:
            self.stopped = True
            multihost_utils.broadcast_one_to_all(np.array([STOP, 0], np.int32))


def serve_products(gram: Callable[[np.ndarray], Any], num_params: int, dtype: Any) -> int:
    """A process other than 0: take part in every product process 0 asks for, until it stops.

    Returns:
        The number of blocks computed.
    """
    from jax.experimental import multihost_utils

    done = 0
    while True:
        head = np.asarray(multihost_utils.broadcast_one_to_all(np.zeros(2, np.int32)))
        if int(head[0]) == STOP:
            return done
        X = np.asarray(multihost_utils.broadcast_one_to_all(np.zeros((int(head[1]), num_params), dtype)))
        gram(X)
        done += 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_local(num_processes: int, argv: Sequence[str], grace_s: float = 60.0) -> int:
    """Run ``python -m trainmap *argv`` as ``num_processes`` processes of one job on this machine.

    Each child gets ``--coordinator 127.0.0.1:PORT --num-processes N --process-id i``; process 0
    prints as usual, the others' output is shown only if they fail. Once process 0 has ended, the
    others get ``grace_s`` seconds to finish before they are stopped.

    Returns:
        The first non-zero exit status (process 0's first), else 0.
    """
    if num_processes < 1:
        raise ValueError(f"--local-processes must be >= 1, got {num_processes}")
    port = _free_port()
    procs, logs = [], []
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    for i in range(num_processes):
        cmd = [sys.executable, "-m", "trainmap", *argv, "--coordinator", f"127.0.0.1:{port}",
               "--num-processes", str(num_processes), "--process-id", str(i)]
        log = tempfile.TemporaryFile() if i else None  # a file, not a pipe: a chatty child never blocks
        logs.append(log)
        procs.append(subprocess.Popen(cmd, env=env, **({"stdout": log, "stderr": subprocess.STDOUT} if log else {})))
    try:
        codes = [procs[0].wait()]
        deadline = time.monotonic() + grace_s
        for p in procs[1:]:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            codes.append(p.returncode)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (log, rc) in enumerate(zip(logs, codes)):
        if log is not None:
            if rc:
                log.seek(0)
                out = log.read().decode(errors="replace")
                sys.stderr.write(f"process {i} exited with status {rc}:\n{out[-4000:]}\n")
            log.close()
    return next((rc for rc in codes if rc), 0)
