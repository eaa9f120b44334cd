"""Multi-layer perceptrons as pure ``(init, apply)`` pairs."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

Params = Any  # a pytree of arrays

#: name -> elementwise activation. The exact engine's hand-derived MLP rules recognise an MLP with
#: any activation registered here (:func:`register_activation`); they differentiate it with JAX.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # exact (erf) GELU, as in PyTorch's nn.GELU default
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    # tanh-approximate GELU: flax's nn.gelu default (and PyTorch's GELU(approximate="tanh"))
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


def register_activation(name: str, fn: Callable[[jax.Array], jax.Array]) -> None:
    """Make an elementwise activation available to :func:`mlp` and to the exact engine's fast
    MLP rules (which then recognise MLPs that use it).

    Args:
        name: a new name (registered names cannot be replaced).
        fn: a JAX function applied elementwise, twice differentiable (the rules use σ' and σ'').

    Raises:
        ValueError: the name is taken, or ``fn`` is not elementwise on a test input.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"the activation name must be a non-empty string, got {name!r}")
    if name in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is already registered; choose another name")
    probe = jnp.linspace(-3.0, 3.0, 7, dtype=jnp.float32)
    out = jnp.asarray(fn(probe))
    if out.shape != probe.shape or not bool(jnp.allclose(out[3], fn(probe[3:4])[0])):
        raise ValueError(f"activation {name!r} must map an array to one of the same shape, elementwise")
    ACTIVATIONS[name] = fn


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


INITS = ("torch", "flax", "authors")


def mlp(sizes: Sequence[int], activation: str = "gelu", bias: bool = True, init: str = "torch") -> Model:
    """A fully connected network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    The last layer has no activation (it returns logits). Initialisations (``init``), each layer
    drawing from ``jax.random.split(key, 3)`` in turn:

    * ``"torch"``: PyTorch's ``nn.Linear``: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    * ``"flax"``: flax ``nn.Dense`` defaults: LeCun-normal weights (truncated normal, variance
      1/fan_in), zero biases.
    * ``"authors"``: the public code of Scherlis & Belrose (2024): LeCun-normal weights, biases
      N(0, 1/h) where h is the width of the hidden layer (the last hidden width for the output
      layer: their ``bias_init`` carries over from the loop).

    Args:
        sizes: layer widths including input and output, e.g. ``(64, 64, 10)``.
        activation: a name of :data:`ACTIVATIONS`: ``"gelu"`` (exact erf), ``"gelu_tanh"``
            (tanh approximation, flax's default), ``"relu"``, ``"tanh"``, or one registered with
            :func:`register_activation`.
        bias: whether the layers have biases.
        init: ``"torch"``, ``"flax"`` or ``"authors"`` (above).

    Returns:
        A :class:`Model`; params are a list of ``{"w": (fan_in, fan_out), "b": (fan_out,)}`` dicts.
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp needs at least two positive sizes, got {sizes}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    scheme = init
    lecun = jax.nn.initializers.lecun_normal()

    def init_fn(key: jax.Array) -> Params:
        params = []
        n = len(sizes) - 1
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            key, kw, kb = jax.random.split(key, 3)
            if scheme == "torch":
                bound = 1.0 / jnp.sqrt(fan_in)
                layer = {"w": jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound)}
                b = jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound)
            else:
                layer = {"w": lecun(kw, (fan_in, fan_out), jnp.float32)}
                width = fan_out if i < n - 1 else (fan_in if n > 1 else fan_out)
                b = (jnp.zeros((fan_out,), jnp.float32) if scheme == "flax"
                     else jax.random.normal(kb, (fan_out,), jnp.float32) * width ** -0.5)
            if bias:
                layer["b"] = b
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

    name = (f"mlp{'-'.join(map(str, sizes))}-{activation}{'' if bias else '-nobias'}"
            f"{'' if scheme == 'torch' else '-' + scheme + 'init'}")
    return Model(init_fn, apply, name)
