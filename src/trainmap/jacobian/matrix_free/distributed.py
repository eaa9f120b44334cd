"""Sharding of a block of vectors (the tangent / probe axis) over every JAX device.

Matrix-free products act on blocks of vectors ``V: (k, P)`` that are independent of one another,
so the rows of a block can be split across devices while θ₀ and the data are replicated: every
device runs the whole training run for its own rows. :func:`shard_rows` wraps a block function
``f(theta0, V) -> (k, ...)`` in ``jax.shard_map`` over a one-axis mesh of all devices
(``jax.devices()``, which spans every host under ``jax.distributed``); blocks whose row count is
not a multiple of the device count are padded with zero rows, which are dropped from the output.

To try it on a CPU, set ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` *before* JAX is
imported; the results equal the single-device ones (each row is computed by the same program).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

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


def shard_rows(fn: Callable[[jax.Array, jax.Array], Any], mesh: Mesh) -> Callable[[Any, np.ndarray], Any]:
    """Distribute the rows of the second argument of ``fn`` over ``mesh``.

    Args:
        fn: ``fn(theta0 (P,), V (k, P)) -> pytree of arrays with leading axis k``; must treat the
            rows of V independently (e.g. a ``vmap``).
        mesh: from :func:`vector_mesh`.

    Returns:
        ``g(theta0, V)`` with the same outputs as ``fn`` (as NumPy arrays), computed with each
        device holding k / n_devices rows. Single-device meshes call a plain ``jit(fn)``.
    """
    if mesh.size == 1:
        jfn = jax.jit(fn)

        def single(theta0: Any, V: np.ndarray) -> Any:
            return jax.tree_util.tree_map(np.asarray, jfn(jnp.asarray(theta0), jnp.asarray(V)))

        return single

    sharded = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(PS(), PS(AXIS)), out_specs=PS(AXIS),
                                    check_vma=False))
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
