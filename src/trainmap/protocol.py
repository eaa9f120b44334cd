"""``TrainingMap``: a training run as a differentiable map θ₀ ↦ θ_T, the seam between backends
and the training-Jacobian engines.

The exact engine, the matrix-free operator, Lanczos/SLQ and the Jacobian experiments read only
this protocol; :class:`trainmap.recipe.Recipe` (JAX) is its first implementation. A backend
gets every Jacobian feature by implementing these members. Vectors are flat of length P, blocks
of vectors are rows: ``V: (k, P)``.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable


@runtime_checkable
class TrainingMap(Protocol):
    """A training run minus its initial parameters, as a map on flat (P,) parameter vectors.

    Members:
        num_params: P.
        num_steps: T, the number of optimizer steps.
        train(theta0): (P,) -> (P,) θ_T.
        jvp(theta0, V): J V as rows, (k, P) -> (k, P).
        vjp(theta0, W): Jᵀ W as rows, (k, P) -> (k, P).
        fingerprint(): a stable hash of everything that, with θ₀, determines J (data, batch
            order, the training step's own program), used to refuse mixing two runs.
        linearized_steps(theta0, rule=None): ``(primal, layout)``; ``primal(theta0)`` trains
            once and returns each step's linear map stacked over steps (the exact engine's
            stored primal). ``layout`` splits the optimizer state into float and other leaves.
        check_theta(theta0): theta0 as an array, or a ValueError naming the expected shape.
        train_with_losses(theta0): ``(θ_T (P,), losses (T,))``, the batch loss before each step.
        predict(theta, x): the model's outputs (N, ...) at flat parameters ``theta``.
        backend: ``"jax"`` when ``train``/``jvp``/``vjp`` are JAX-traceable (the engines may jit,
            vmap and shard them, and read ``linearized_steps``); any other name (``"torch"``) makes
            the engines call ``jvp``/``vjp`` on NumPy blocks and compute J column chunk by chunk.
    """

    num_params: int
    backend: str

    @property
    def num_steps(self) -> int: ...

    def train(self, theta0: Any) -> Any: ...

    def jvp(self, theta0: Any, V: Any) -> Any: ...

    def vjp(self, theta0: Any, W: Any, segment: int | None = None) -> Any: ...

    def fingerprint(self) -> str: ...

    def linearized_steps(self, theta0: Any, rule: Callable | None = None) -> tuple[Callable, Any]: ...

    def check_theta(self, theta0: Any) -> Any: ...

    def train_with_losses(self, theta0: Any) -> tuple[Any, Any]: ...

    def predict(self, theta: Any, x: Any) -> Any: ...


def is_traceable(recipe: Any) -> bool:
    """Whether the engines may trace ``recipe``'s functions with JAX (its ``backend`` is ``"jax"``)."""
    return getattr(recipe, "backend", "jax") == "jax"


def jit_if_traceable(recipe: Any, fn: Callable) -> Callable:
    """``jax.jit(fn)`` for a recipe JAX may trace, else ``fn`` itself (another backend runs its own
    code): the one way to call a recipe's whole-run functions (``train``, ``run``) once."""
    if is_traceable(recipe):
        import jax

        return jax.jit(fn)
    return fn
