"""How the exact engine computes J: mode, primal sharing, tangent rules and chunk size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import numpy as np

from trainmap._io import release_memory
from trainmap.jacobian.exact import engine as _engine
from trainmap.protocol import TrainingMap, is_traceable


# ----------------------------------------------------------------------------- kernels
def jvp_columns_fn(train: Callable[[jax.Array], jax.Array]) -> Callable:
    """A jitted ``f(theta0, V) -> (k, P)`` whose row r is J V[r] for tangents V (k, P).

    A basis vector e_j gives column j of J, a zero row (the padded tail of the last chunk) a
    zero row; every chunk reuses one compiled program.
    """

    def columns(theta0: jax.Array, tangents: jax.Array) -> jax.Array:
        def one(t: jax.Array) -> jax.Array:
            return jax.jvp(train, (theta0,), (t,))[1]

        return jax.vmap(one)(tangents)

    return jax.jit(columns)


def bytes_per_chunk(train: Callable, theta0: jax.Array, chunk: int) -> int:
    """XLA's estimate of the memory (bytes) of one compiled chunk of ``chunk`` tangents."""
    fn = jvp_columns_fn(train)
    compiled = fn.lower(theta0, jax.ShapeDtypeStruct((chunk, theta0.shape[0]), theta0.dtype)).compile()
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


#: default chunk for backends that JAX cannot trace and that do not size their own chunks
#: (``recipe.default_chunk(memory_budget_bytes)``, which the torch backend has)
GENERIC_CHUNK = 128

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
        rules: ``"mlp"`` (hand-derived tangent rules of :mod:`~trainmap.jacobian.exact.mlp_rules`, for
            recognised MLP recipes, forward mode with shared primal) or ``"autodiff"`` (JAX's
            linearisation of the recipe's step).
        mlp: the recognised MLP (``rules == "mlp"``), else None.
        unit_columns: columns expected to be unit vectors e_j
            (:func:`~trainmap.jacobian.exact.mlp_rules.dead_input_columns`): the driver certifies
            them with one probe direction and then does not compute them.
    """

    mode: str
    primal: str
    chunk: int
    n_devices: int
    residual_bytes: int
    rules: str = "autodiff"
    mlp: Any = None
    unit_columns: tuple[int, ...] = ()

    @property
    def signature(self) -> str:
        """What, besides the inputs, determines a chunk's bits (part of the checkpoint fingerprint)."""
        sig = f"engine={self.mode}|{self.primal}|{self.rules}|devices={self.n_devices}"
        return sig + (f"|unit_columns={len(self.unit_columns)}" if self.unit_columns else "")


def plan_engine(
    recipe: TrainingMap,
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
      tangent rules when :func:`~trainmap.jacobian.exact.mlp_rules.detect_mlp` recognises the recipe;
      the first-layer weights of inputs that are 0 in every training example are then planned as
      unit columns (``unit_columns``), certified and skipped by the driver.
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
    if not is_traceable(recipe):
        # the engine calls recipe.jvp on chunks of basis vectors: forward mode, primal per chunk
        if mode == "reverse" or primal == "shared":
            raise ValueError(f"the {recipe.backend} backend computes J by chunks of Jacobian-vector products: "
                             "use mode='forward' and primal='per_chunk' (or 'auto')")
        sizer = getattr(recipe, "default_chunk", None)
        K = int(chunk_size) if chunk_size else (sizer(budget) if sizer is not None else GENERIC_CHUNK)
        K = min(K, P)
        return EnginePlan("forward", "per_chunk", K, 1, 0)
    if getattr(recipe, "project", None) is not None:
        # the stored linearisations start from a zero optimizer-state tangent, but a projection
        # reads θ₀ itself; differentiate the whole run per chunk instead
        if primal == "shared" or mode == "reverse":
            raise ValueError("a recipe with a project map needs primal='per_chunk' (forward mode): "
                             "its steps read θ₀, which the stored linearisations do not carry")
        primal = "per_chunk"
    if specialize and mode == "forward" and primal != "per_chunk":
        from trainmap.jacobian.exact import mlp_rules

        spec = mlp_rules.detect_mlp(recipe, theta0)
    rb = 0
    if primal != "per_chunk":
        rb = (mlp_rules.residual_bytes(recipe, spec, theta0) if spec is not None
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
        _, layout = recipe.linearized_steps(theta0)
        floats = sum(int(np.prod(s)) for s in layout.float_shapes)
        K = min(_engine.cache_chunk(P, floats, theta0.dtype.itemsize, n), P)
    else:
        K = choose_chunk_size(recipe.train, theta0, budget)
    K = -(-K // n) * n
    units = () if spec is None else tuple(int(j) for j in mlp_rules.dead_input_columns(recipe, spec, theta0))
    release_memory()  # tracing and the detection's compilations leave freed heap behind
    return EnginePlan(mode, primal, K, n, rb, "mlp" if spec is not None else "autodiff", spec, units)


