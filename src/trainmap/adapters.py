"""Recipes from flax and equinox models, in one call.

Each builder turns a user's module into a :class:`~trainmap.recipe.Recipe` (any optax optimizer,
an epoch schedule or a given batch order) and its flat initial parameters θ₀, so that every lens
reads it unchanged. A module made only of dense layers and one registered activation (flax
``nn.Dense`` / ``nnx.Linear``, equinox ``nn.Linear`` / ``nn.MLP``) takes the exact engine's
hand-derived MLP rules, like trainmap's own MLP; anything else takes the generic autodiff path.

flax and equinox are optional: ``pip install "trainmap[flax]"`` or ``"trainmap[equinox]"``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from trainmap.recipe import Recipe, make_recipe

Params = Any


def _require(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"{name} is not installed; pip install \"trainmap[{name}]\"") from err


def _build(apply: Callable, params: Params, x: Any, y: Any, optimizer: Any, *, batch_size: int,
           epochs: int, shuffle_seed: int | None, loss: Any, batches: Any, config: dict) -> tuple[Recipe, jax.Array]:
    theta0, unravel = ravel_pytree(params)
    if theta0.size == 0:
        raise ValueError("the module has no trainable float parameters")
    if not jnp.issubdtype(theta0.dtype, jnp.floating):
        raise ValueError(f"the module's parameters must be floating point, got {theta0.dtype}")
    config = {**config, "num_params": int(theta0.size)}
    recipe = make_recipe(apply, unravel, theta0.size, x, y, optimizer, batch_size=batch_size, epochs=epochs,
                         shuffle_seed=shuffle_seed, loss=loss, config=config)
    if batches is not None:
        recipe = recipe.with_data(batches=np.asarray(batches), batch_size=int(np.shape(batches)[1]),
                                  epochs=None, shuffle_seed=None)
    return recipe, theta0


def recipe_from_flax(
    module: Any,
    x: Any,
    y: Any,
    optimizer: Any,
    *,
    batch_size: int,
    epochs: int = 1,
    seed: int = 0,
    variables: Any = None,
    shuffle_seed: int | None = None,
    loss: str | Callable[[jax.Array, jax.Array], jax.Array] = "cross_entropy",
    batches: Any = None,
    config: dict | None = None,
) -> tuple[Recipe, jax.Array]:
    """A recipe that trains a flax module.

    Args:
        module: a flax ``linen.Module`` (initialised here, ``module.init(jax.random.key(seed),
            x[:1])``, unless ``variables`` is given) or an ``nnx.Module`` (already initialised: its
            current ``nnx.Param`` values are θ₀). ``module(x_batch)`` maps (B, ...) inputs to (B, C)
            outputs.
        x: (N, ...) training inputs; y: (N,) integer labels or (N, K) targets.
        optimizer: an optax optimizer (schedules included).
        batch_size, epochs: the schedule, T = epochs · (N // batch_size) steps.
        seed: the key of ``linen.Module.init``.
        variables: linen variables to start from instead of ``module.init``.
        shuffle_seed: seed of the per-epoch permutations; None (default): the same order every epoch.
        loss: ``"cross_entropy"``, ``"mse"`` or ``loss(outputs, targets) -> scalar``.
        batches: an explicit (T, B) index array (overrides batch_size/epochs/shuffle_seed).
        config: extra JSON-able entries for config.json.

    Returns:
        (recipe, theta0 (P,)).

    Raises:
        ValueError: the module holds state other than parameters (``batch_stats``, caches), which a
            recipe would have to thread through every step.
    """
    _require("flax")
    from flax import linen, nnx

    name = type(module).__name__
    if isinstance(module, nnx.Module):
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        if jax.tree_util.tree_leaves(rest):
            raise ValueError(f"the nnx module {name} holds state other than nnx.Param (e.g. BatchNorm "
                             "statistics); recipes train parameters only, so remove it or freeze it into constants")

        def apply(p: Params, xb: jax.Array) -> jax.Array:
            return nnx.merge(graphdef, p, rest)(xb)

        framework = "flax.nnx"
    elif isinstance(module, linen.Module):
        if variables is None:
            variables = module.init(jax.random.key(int(seed)), jnp.asarray(np.asarray(x)[:1]))
        other = sorted(k for k in variables if k != "params")
        if other:
            raise ValueError(f"the flax module {name} has variable collections {other} besides 'params'; "
                             "recipes train parameters only (use a model without mutable state)")
        params = {"params": variables["params"]}

        def apply(p: Params, xb: jax.Array) -> jax.Array:
            return module.apply(p, xb)

        framework = "flax.linen"
    else:
        raise ValueError(f"expected a flax linen.Module or nnx.Module, got {type(module).__name__}")
    cfg = dict(model=f"{framework}:{name}", framework=framework, seed=int(seed), **(config or {}))
    return _build(apply, params, x, y, optimizer, batch_size=batch_size, epochs=epochs,
                  shuffle_seed=shuffle_seed, loss=loss, batches=batches, config=cfg)


def recipe_from_equinox(
    module: Any,
    x: Any,
    y: Any,
    optimizer: Any,
    *,
    batch_size: int,
    epochs: int = 1,
    batched: bool = False,
    shuffle_seed: int | None = None,
    loss: str | Callable[[jax.Array, jax.Array], jax.Array] = "cross_entropy",
    batches: Any = None,
    config: dict | None = None,
) -> tuple[Recipe, jax.Array]:
    """A recipe that trains an equinox module (its float arrays are the parameters, θ₀ their
    current values; everything else is static).

    Args:
        module: an ``equinox.Module``.
        x: (N, ...) training inputs; y: (N,) integer labels or (N, K) targets.
        optimizer: an optax optimizer.
        batch_size, epochs, shuffle_seed, loss, batches, config: as :func:`recipe_from_flax`.
        batched: False (equinox's convention): ``module(x_i)`` takes one example and is vmapped
            over the batch; True: ``module(x_batch)`` takes the batch.

    Returns:
        (recipe, theta0 (P,)).
    """
    eqx = _require("equinox")
    if not isinstance(module, eqx.Module):
        raise ValueError(f"expected an equinox.Module, got {type(module).__name__}")
    params, static = eqx.partition(module, eqx.is_inexact_array)

    def apply(p: Params, xb: jax.Array) -> jax.Array:
        model = eqx.combine(p, static)
        return model(xb) if batched else jax.vmap(model)(xb)

    cfg = dict(model=f"equinox:{type(module).__name__}", framework="equinox", **(config or {}))
    return _build(apply, params, x, y, optimizer, batch_size=batch_size, epochs=epochs,
                  shuffle_seed=shuffle_seed, loss=loss, batches=batches, config=cfg)
