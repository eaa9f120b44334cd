"""A residual 1-D CNN as a pure ``(init, apply)`` pair, sized for MNIST-1D (length-40 sequences)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trainmap.models.mlp import ACTIVATIONS, Model, Params


def _conv(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """'SAME' 1-D convolution (cross-correlation, as ``lax.conv_general_dilated``).

    x: (B, L, C_in), w: (k, C_in, C_out), b: (C_out,) -> (B, L, C_out). Written as k shifted
    matrix products, y[:, l] = Σ_t x_pad[:, l + t] @ w[t], so that the products of a batch of
    tangents (one kernel per probe vector) are batched matrix products. Through
    ``lax.conv_general_dilated`` XLA on the CPU lowered them to grouped convolutions: one JᵀJ
    product with 8 probes of the 5,170-parameter scaling-study CNN took 11.5 s that way and
    1.19 s this way (``bench/cnn_products.py``).
    """
    k, L = w.shape[0], x.shape[1]
    xp = jnp.pad(x, ((0, 0), ((k - 1) // 2, k // 2), (0, 0)))
    y = sum(jnp.einsum("bli,io->blo", xp[:, t:t + L], w[t]) for t in range(k))
    return y + b


def resnet1d(
    length: int = 40,
    channels: int = 16,
    blocks: int = 2,
    kernel: int = 5,
    num_classes: int = 10,
    activation: str = "relu",
) -> Model:
    """Conv stem (1 → C) → ``blocks`` residual blocks ``h + conv(act(conv(act(h))))`` → mean over
    positions → dense (C → num_classes).

    Args:
        length: sequence length L; inputs are (B, L) or (B, L, 1).
        channels: width C of every block.
        blocks: number of residual blocks.
        kernel: convolution width.
        num_classes: outputs.
        activation: a name of :data:`trainmap.models.mlp.ACTIVATIONS`.

    Returns:
        A :class:`Model`; params ``{"stem": {"w": (k, 1, C), "b": (C,)}, "blocks": [{"w1", "b1",
        "w2", "b2"}], "head": {"w": (C, num_classes), "b": (num_classes,)}}``; ``apply(params, x)``
        returns (B, num_classes) logits.
    """
    if min(length, channels, kernel, num_classes) < 1 or blocks < 0:
        raise ValueError("resnet1d needs positive length, channels, kernel and num_classes, blocks >= 0")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]

    def init(key: jax.Array) -> Params:
        keys = jax.random.split(key, 2 * blocks + 2)

        def he(k: jax.Array, shape: tuple[int, ...], fan_in: int, scale: float = 1.0) -> jax.Array:
            return jax.random.normal(k, shape, jnp.float32) * scale * jnp.sqrt(2.0 / fan_in)

        return {
            "stem": {"w": he(keys[0], (kernel, 1, channels), kernel), "b": jnp.zeros(channels)},
            "blocks": [{"w1": he(keys[1 + 2 * i], (kernel, channels, channels), kernel * channels),
                        "b1": jnp.zeros(channels),
                        "w2": he(keys[2 + 2 * i], (kernel, channels, channels), kernel * channels, 0.5),
                        "b2": jnp.zeros(channels)} for i in range(blocks)],
            "head": {"w": he(keys[-1], (channels, num_classes), channels, 0.5), "b": jnp.zeros(num_classes)},
        }

    def apply(params: Params, x: jax.Array) -> jax.Array:
        h = jnp.asarray(x).reshape(x.shape[0], length, 1).astype(params["stem"]["w"].dtype)
        h = _conv(h, params["stem"]["w"], params["stem"]["b"])
        for blk in params["blocks"]:
            h = h + _conv(act(_conv(act(h), blk["w1"], blk["b1"])), blk["w2"], blk["b2"])
        return act(h).mean(axis=1) @ params["head"]["w"] + params["head"]["b"]

    return Model(init, apply, f"resnet1d-c{channels}-b{blocks}-k{kernel}-{activation}")
