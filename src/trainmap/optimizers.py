"""The optimizer registry: every named optimizer the package builds, in one place.

``make_optimizer(name, lr, ...)`` returns an optax ``GradientTransformation``; the CLI's
``--optimizer`` choices are :data:`OPTIMIZERS`'s keys. optax is imported by the builders, so that
reading the registry (the CLI does, at start-up) does not import JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import optax

SCHEDULES = ("cosine", "constant")


def _sgd(rate: Any, momentum: float, eps_root: float) -> optax.GradientTransformation:
    import optax

    return optax.sgd(rate, momentum=momentum if momentum else None)


def _adam(rate: Any, momentum: float, eps_root: float) -> optax.GradientTransformation:
    import optax

    return optax.adam(rate, eps_root=eps_root)


#: name -> builder(rate, momentum, eps_root)
OPTIMIZERS: dict[str, Callable[[Any, float, float], optax.GradientTransformation]] = {
    "sgd": _sgd,
    "adam": _adam,
}


def make_optimizer(
    name: str, lr: float, num_steps: int, momentum: float = 0.9, schedule: str = "cosine",
    eps_root: float = 1e-16,
) -> optax.GradientTransformation:
    """A registered optimizer with a cosine-decayed (to 0 over ``num_steps``) or constant lr.

    Args:
        name: a key of :data:`OPTIMIZERS` (``"sgd"``: heavy-ball momentum ``momentum``, 0 for plain
            SGD; ``"adam"``).
        lr: peak learning rate.
        num_steps: T, the length of the cosine schedule.
        momentum: SGD momentum (ignored by Adam).
        schedule: ``"cosine"`` or ``"constant"``.
        eps_root: Adam's ``eps_root``; > 0 keeps sqrt(v) differentiable where a gradient is
            exactly zero (dead pixels of the digits), so the training Jacobian stays finite.
    """
    import optax

    if schedule == "cosine":
        rate: Any = optax.cosine_decay_schedule(lr, num_steps)
    elif schedule == "constant":
        rate = lr
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](rate, momentum, eps_root)
