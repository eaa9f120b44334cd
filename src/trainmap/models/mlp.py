"""Multi-layer perceptrons as pure ``(init, apply)`` pairs."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

Params = Any  # a pytree of arrays

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # exact (erf) GELU, as in PyTorch's nn.GELU default
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


class Model(NamedTuple):
    """A model as two pure functions.

    Attributes:
        init: ``init(key) -> params`` (a pytree of float32 arrays).
        apply: ``apply(params, x) -> outputs``; x: (B, ...) inputs, outputs: (B, C).
        name: a short description used in configs and reports.
    """

    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    name: str


def mlp(sizes: Sequence[int], activation: str = "gelu", bias: bool = True) -> Model:
    """A fully connected network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Weights and biases are initialised as PyTorch's ``nn.Linear`` does:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)). The last layer has no activation (it returns logits).

    Args:
        sizes: layer widths including input and output, e.g. ``(64, 64, 10)``.
        activation: ``"gelu"`` (exact), ``"relu"`` or ``"tanh"``.
        bias: whether the layers have biases.

    Returns:
        A :class:`Model`; params are a list of ``{"w": (fan_in, fan_out), "b": (fan_out,)}`` dicts.
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp needs at least two positive sizes, got {sizes}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]

    def init(key: jax.Array) -> Params:
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            key, kw, kb = jax.random.split(key, 3)
            bound = 1.0 / jnp.sqrt(fan_in)
            layer = {"w": jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound)}
            if bias:
                layer["b"] = jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound)
            params.append(layer)
        return params

    def apply(params: Params, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(params):
            h = h @ layer["w"]
            if bias:
                h = h + layer["b"]
            if i < len(params) - 1:
                h = act(h)
        return h

    name = f"mlp{'-'.join(map(str, sizes))}-{activation}{'' if bias else '-nobias'}"
    return Model(init, apply, name)
