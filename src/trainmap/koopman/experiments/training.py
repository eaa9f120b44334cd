"""Ensembles of seeds trained through one :class:`~trainmap.recipe.Recipe` (``vmap`` over seeds),
recording a chosen function of the parameters at every step. Shared by the Koopman experiments."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from trainmap.recipe import Recipe, TrainState

Params = Any


def train_and_record(
    apply: Callable[[Params, jax.Array], jax.Array],
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    params0: Params,
    x: Any,
    y: Any,
    batches: Any | None,
    num_steps: int,
    record: Callable[[Params], jax.Array],
    post_update: Callable[[Params, Params], Params] | None = None,
    metrics: Callable[[Params], jax.Array] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Train several seeds at once and record ``record(params)`` before the first and after
    every step.

    Args:
        apply, loss: model and loss (``loss(apply(params, xb), yb) -> scalar``).
        optimizer: optax optimizer.
        params0: pytree whose leaves have a leading seed axis S (stacked initialisations).
        x, y: (N, ...) training data shared by all seeds.
        batches: (S, T, B) int indices per seed and step, or None for full-batch training.
        num_steps: T.
        record: params -> (F,) array saved at every step.
        post_update: optional ``(params, params0) -> params`` applied after each update (e.g. a
            norm constraint).
        metrics: optional params -> (K,) array evaluated before the first and after every step.

    Returns:
        (records (S, T + 1, F), losses (S, T), metrics (S, T + 1, K) or None) as NumPy.
    """
    recipe = seeds_recipe(apply, loss, optimizer, params0, x, y, batches, num_steps, post_update)
    thetas = jax.vmap(lambda p: ravel_pytree(p)[0])(params0)

    def observe(state: TrainState) -> tuple:
        p = recipe.unravel(state.theta)
        return (record(p),) if metrics is None else (record(p), metrics(p))

    def one_seed(theta0: jax.Array, idx: jax.Array) -> tuple:
        rec = recipe.run(theta0, record_every=1, record_params=False, observe=observe, batches=idx)
        return rec.observed, rec.losses

    sched = jnp.broadcast_to(jnp.asarray(recipe.batches), (thetas.shape[0], *recipe.batches.shape)) \
        if batches is None else jnp.asarray(batches)[:, :num_steps]
    obs, losses = jax.jit(jax.vmap(one_seed))(thetas, sched)
    recs, losses = np.asarray(obs[0]), np.asarray(losses)
    mets = None if metrics is None else np.asarray(obs[1])
    if not (np.all(np.isfinite(recs)) and np.all(np.isfinite(losses))):
        raise FloatingPointError("training diverged (NaN/inf); lower the learning rate")
    return recs, losses, mets


def seeds_recipe(apply: Callable, loss: Callable, optimizer: optax.GradientTransformation, params0: Params,
                 x: Any, y: Any, batches: Any | None, num_steps: int,
                 post_update: Callable[[Params, Params], Params] | None = None) -> Recipe:
    """The :class:`~trainmap.recipe.Recipe` of one seed of :func:`train_and_record`.

    ``params0`` has a leading seed axis (its first run sets the structure); ``batches`` is
    (S, T, B) or None for full-batch training (every step sees all N samples).
    """
    first = jax.tree_util.tree_map(lambda a: a[0], params0)
    theta, unravel = ravel_pytree(first)
    n = int(np.shape(x)[0])
    sched = np.tile(np.arange(n, dtype=np.int32), (num_steps, 1)) if batches is None else np.asarray(batches)[0, :num_steps]
    return Recipe(apply, loss, optimizer, x, y, sched, unravel, int(theta.size), project=post_update)


def stack_inits(init: Callable[[jax.Array], Params], seeds: list[int]) -> Params:
    """Initialise one model per seed (``jax.random.key(seed)``) and stack leaves on axis 0."""
    trees = [init(jax.random.key(int(s))) for s in seeds]
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of argmax predictions equal to the labels."""
    return jnp.mean(jnp.argmax(logits, -1) == labels)
