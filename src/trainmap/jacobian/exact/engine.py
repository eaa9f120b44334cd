"""The shared-primal engine behind :func:`~trainmap.jacobian.exact.exact_jacobian`.

Training is a recursion s_{t+1} = step_t(s_t) on the state s = (θ, optimizer state). Its
Jacobian is the product of the step Jacobians, so every column (forward mode) or row (reverse
mode) of J = ∂θ_T/∂θ₀ comes from a *linear* recursion that only needs, per step, the data that
the step's linearisation keeps (activations, activation derivatives, learning rate, ...):

1. **Primal pass, once.** A ``lax.scan`` over the T steps runs training and, at each step,
   ``jax.linearize`` of the step; the linearisation's residual arrays are stacked over steps,
   ``(T, ...)`` each, and kept on the device.
2. **Tangent pass, per chunk of K directions.** A second ``lax.scan`` applies the K-batched
   (``vmap``) linear step — forward: ``(dθ, ds) -> lin_t(dθ, ds)`` from step 0 to T−1;
   reverse: its transpose from step T−1 down to 0 — reading the stored residuals. Nothing of
   the primal (forward pass, activation functions, softmax, optimizer bookkeeping) is recomputed
   per chunk, and XLA cannot fuse it into the K-batched loops (where it would be recomputed K
   times, once per direction).

The chunk's K directions can be split over several JAX devices (``shard_map`` over a 1-D mesh,
axis ``"k"``); every device runs the same program on K/n directions and no data moves between
devices until the chunk's rows are gathered.

Shapes: P parameters, T steps, K directions per chunk, S float leaves of the optimizer state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from trainmap.protocol import TrainingMap
from trainmap.recipe import StateLayout

#: Tangent bytes per device that set the default chunk size. On the reference MLP on an idle 2-core
#: CPU, K = 128 (4.9 MiB of tangents) ran 54 s for all columns against 56-62 s for K = 64 and
#: 66 s for K = 256; much larger chunks (jacfwd uses K = P) are slower per direction.
CACHE_BYTES = 8 * 2**20


@dataclass
class SharedPrimal:
    """The stored linearisation of every training step.

    Attributes:
        residuals: list of arrays, each (T, ...): the residuals of step t's linearisation at row t.
        lin_treedef: pytree structure that turns one step's residuals back into its linear map
            ``(dθ: (P,), ds: list of float state leaves) -> (dθ', ds')``.
        layout: the optimizer state's layout.
        num_params: P.
        dtype: the computation's float dtype.
    """

    residuals: list
    lin_treedef: Any
    layout: StateLayout
    num_params: int
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(sum(r.nbytes for r in self.residuals))


def residual_bytes(recipe: TrainingMap, theta0: jax.Array) -> int:
    """Bytes the stored linearisations of all T steps would take (no computation is run)."""
    primal, _ = recipe.linearized_steps(theta0)
    shapes = jax.tree_util.tree_leaves(jax.eval_shape(primal, theta0))
    return int(sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in shapes))


def shared_primal(recipe: TrainingMap, theta0: jax.Array) -> SharedPrimal:
    """Run training once and store the linearisation of every step.

    Args:
        recipe: the training run.
        theta0: (P,) initial parameters (their dtype sets the computation's dtype).

    Returns:
        A :class:`SharedPrimal`; its memory is about ``residual_bytes(recipe, theta0)``.
    """
    primal, layout = recipe.linearized_steps(theta0)
    leaves, treedef = jax.tree_util.tree_flatten(jax.jit(primal)(theta0))
    return SharedPrimal(leaves, treedef, layout, recipe.num_params, np.dtype(theta0.dtype))


def _tangent_zeros(sp: SharedPrimal, k: int) -> list:
    return [jnp.zeros((k, *s), sp.dtype) for s in sp.layout.float_shapes]


def forward_columns(sp: SharedPrimal, k: int) -> Callable[[list, jax.Array], jax.Array]:
    """``f(residuals, V) -> (k, P)``: row r is J V[r] for the (k, P) tangents V (a basis vector
    e_j gives column j of J)."""
    treedef = sp.lin_treedef

    def columns(res: list, V: jax.Array) -> jax.Array:
        dtheta = V

        def body(carry: tuple, r: list) -> tuple[tuple, None]:
            lin = jax.tree_util.tree_unflatten(treedef, r)
            return jax.vmap(lin)(*carry), None

        (dtheta, _), _ = jax.lax.scan(body, (dtheta, _tangent_zeros(sp, k)), res)
        return dtheta

    return columns


def reverse_rows(sp: SharedPrimal, k: int) -> Callable[[list, jax.Array], jax.Array]:
    """``f(residuals, V) -> (k, P)``: row r is V[r] J for the (k, P) cotangents V (a basis vector
    e_i gives row i of J).

    Cotangents run backwards through the transposed step linearisations.
    """
    P, treedef = sp.num_params, sp.lin_treedef
    theta_aval = jax.ShapeDtypeStruct((P,), sp.dtype)
    float_avals = [jax.ShapeDtypeStruct(s, sp.dtype) for s in sp.layout.float_shapes]

    def rows(res: list, V: jax.Array) -> jax.Array:
        ct = V

        def body(carry: tuple, r: list) -> tuple[tuple, None]:
            lin = jax.tree_util.tree_unflatten(treedef, r)
            lin_t = jax.linear_transpose(lin, theta_aval, float_avals)
            out = jax.vmap(lambda a, b: lin_t((a, b)))(*carry)
            return (out[0], list(out[1])), None

        (ct, _), _ = jax.lax.scan(body, (ct, _tangent_zeros(sp, k)), res, reverse=True)
        return ct

    return rows


def resolve_devices(devices: int | Sequence[Any] | None) -> list:
    """The devices a chunk is split over: None → all devices of the default backend; an int n →
    the first n of them; or an explicit list of ``jax.Device``."""
    if devices is None:
        return list(jax.devices())
    if isinstance(devices, int):
        avail = jax.devices()
        if not 1 <= devices <= len(avail):
            raise ValueError(f"devices={devices} but this process has {len(avail)} JAX devices; "
                             "on a CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                             "before importing jax to get N devices")
        return list(avail[:devices])
    devs = list(devices)
    if not devs:
        raise ValueError("devices is an empty list; pass None to use every device")
    return devs


def sharded(local: Callable[[int], Callable], k: int, devices: Sequence[Any]) -> Callable:
    """A jitted chunk program of ``k`` directions split evenly over ``devices``.

    Args:
        local: ``local(k_dev)`` builds the per-device program ``f(residuals, V) -> (k_dev, P)`` of
            ``k_dev`` directions ``V`` (k_dev, P).
        k: directions per chunk, a multiple of ``len(devices)``.
        devices: the devices (a 1-D mesh, axis ``"k"``); residuals are replicated on each, the
            directions split in order.

    Returns:
        ``f(residuals, V) -> (k, P)`` for directions V (k, P), rows in direction order.
    """
    n = len(devices)
    if k % n:
        raise ValueError(f"chunk size {k} is not a multiple of the {n} devices")
    if n == 1:
        return jax.jit(local(k))
    mesh = Mesh(np.asarray(devices), ("k",))
    return jax.jit(jax.shard_map(local(k // n), mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec("k")),
                                 out_specs=PartitionSpec("k"), check_vma=False))


def cache_chunk(num_params: int, state_floats: int, itemsize: int, n_devices: int = 1,
                cap: int = 128) -> int:
    """A chunk size whose tangents (θ and optimizer state) take about :data:`CACHE_BYTES` per device.

    Returns a power of two in [8, cap] per device, times ``n_devices``.
    """
    per = max((num_params + state_floats) * itemsize, 1)
    k = int(2 ** np.floor(np.log2(max(CACHE_BYTES / per, 1.0))))
    return int(min(max(k, 8), cap)) * n_devices
