"""A small LeNet-style CNN as a pure ``(init, apply)`` pair, sized for 8x8 digits."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from trainmap.models.mlp import ACTIVATIONS, Model, Params


def _uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    bound = 1.0 / jnp.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def lenet(
    image_shape: Sequence[int] = (8, 8, 1),
    channels: Sequence[int] = (6, 16),
    hidden: int = 64,
    num_classes: int = 10,
    activation: str = "relu",
    kernel: int = 3,
) -> Model:
    """Conv(k×k, 'SAME') → act → 2×2 avg-pool, per entry of ``channels``; then dense → act → dense.

    Args:
        image_shape: (H, W, C_in) of one input; inputs are (B, H, W, C_in) or flat (B, H*W*C_in).
        channels: output channels of each conv block.
        hidden: width of the dense hidden layer.
        num_classes: number of outputs C.
        activation: ``"relu"``, ``"gelu"`` or ``"tanh"``.
        kernel: conv kernel size.

    Returns:
        A :class:`Model`; ``apply(params, x)`` returns (B, num_classes) logits.
    """
    h, w, c_in = (int(s) for s in image_shape)
    act = ACTIVATIONS[activation]
    convs = []
    c = c_in
    for c_out in channels:
        convs.append((c, int(c_out)))
        c = int(c_out)
        h, w = max(h // 2, 1), max(w // 2, 1)
    flat = h * w * c

    def init(key: jax.Array) -> Params:
        params: dict = {"conv": [], "dense": []}
        for ci, co in convs:
            key, kw, kb = jax.random.split(key, 3)
            fan = ci * kernel * kernel
            params["conv"].append({"w": _uniform(kw, (kernel, kernel, ci, co), fan),
                                   "b": _uniform(kb, (co,), fan)})
        for fi, fo in ((flat, hidden), (hidden, num_classes)):
            key, kw, kb = jax.random.split(key, 3)
            params["dense"].append({"w": _uniform(kw, (fi, fo), fi), "b": _uniform(kb, (fo,), fi)})
        return params

    def apply(params: Params, x: jax.Array) -> jax.Array:
        z = x.reshape(x.shape[0], *image_shape)
        for layer in params["conv"]:
            z = jax.lax.conv_general_dilated(z, layer["w"], (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            z = act(z + layer["b"])
            if z.shape[1] >= 2 and z.shape[2] >= 2:
                z = jax.lax.reduce_window(z, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0
        z = z.reshape(z.shape[0], -1)
        z = act(z @ params["dense"][0]["w"] + params["dense"][0]["b"])
        return z @ params["dense"][1]["w"] + params["dense"][1]["b"]

    return Model(init, apply, f"lenet{'-'.join(map(str, channels))}-{hidden}-{activation}")
