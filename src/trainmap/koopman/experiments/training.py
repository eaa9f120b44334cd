"""Small JAX training loops (``lax.scan`` over steps, ``vmap`` over seeds) that record a chosen
function of the parameters at every step. Shared by the Koopman experiments."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
    x = jnp.asarray(x)
    y = jnp.asarray(y)

    def one_seed(p0: Params, idx: jax.Array | None) -> tuple:
        def step(carry, i):
            params, state = carry
            xb, yb = (x, y) if idx is None else (x[idx[i]], y[idx[i]])
            value, grads = jax.value_and_grad(lambda p: loss(apply(p, xb), yb))(params)
            updates, state = optimizer.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            if post_update is not None:
                params = post_update(params, p0)
            out = (record(params), value)
            if metrics is not None:
                out = out + (metrics(params),)
            return (params, state), out

        _, outs = jax.lax.scan(step, (p0, optimizer.init(p0)), jnp.arange(num_steps))
        recs = jnp.concatenate([record(p0)[None], outs[0]])
        mets = None if metrics is None else jnp.concatenate([metrics(p0)[None], outs[2]])
        return recs, outs[1], mets

    if batches is None:
        fn = jax.jit(jax.vmap(lambda p: one_seed(p, None)))
        recs, losses, mets = fn(params0)
    else:
        fn = jax.jit(jax.vmap(one_seed))
        recs, losses, mets = fn(params0, jnp.asarray(batches))
    recs, losses = np.asarray(recs), np.asarray(losses)
    if not (np.all(np.isfinite(recs)) and np.all(np.isfinite(losses))):
        raise FloatingPointError("training diverged (NaN/inf); lower the learning rate")
    return recs, losses, None if mets is None else np.asarray(mets)


def stack_inits(init: Callable[[jax.Array], Params], seeds: list[int]) -> Params:
    """Initialise one model per seed (``jax.random.key(seed)``) and stack leaves on axis 0."""
    trees = [init(jax.random.key(int(s))) for s in seeds]
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of argmax predictions equal to the labels."""
    return jnp.mean(jnp.argmax(logits, -1) == labels)
