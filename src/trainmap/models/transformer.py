"""A one-layer transformer without LayerNorm (the grokking model of Nanda et al. 2023), as a
pure ``(init, apply)`` pair.

Tokens → embedding + learned positions → one block (causal multi-head attention, then a ReLU
MLP, each added to the residual stream) → unembedding. ``apply`` returns the logits at the
*last* position only (the answer position of ``a b =``); since nothing after the attention
mixes positions, the query, the MLP and the unembedding are computed for that position alone,
which gives the same logits as the full model at a fraction of the cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trainmap.models.mlp import Model, Params


def transformer(
    vocab: int,
    d_model: int = 128,
    n_heads: int = 4,
    d_mlp: int = 512,
    n_ctx: int = 3,
    d_head: int | None = None,
) -> Model:
    """One-layer, LayerNorm-free transformer.

    Args:
        vocab: number of tokens V (inputs and outputs).
        d_model: residual width.
        n_heads: attention heads H.
        d_mlp: hidden width of the MLP.
        n_ctx: context length.
        d_head: per-head width (default d_model // n_heads).

    Returns:
        A :class:`Model`: ``init(key)`` gives ``{"embed": (V, d_model), "pos": (n_ctx, d_model),
        "attn": {"q", "k", "v": (H, d_model, d_head), "o": (H, d_head, d_model)},
        "mlp": {"w_in": (d_model, d_mlp), "b_in": (d_mlp,), "w_out": (d_mlp, d_model),
        "b_out": (d_model,)}, "unembed": (d_model, V)}``; ``apply(params, tokens)`` maps
        (B, n_ctx) int tokens to (B, V) last-position logits.
    """
    d_head = d_head or d_model // n_heads
    if d_head * n_heads == 0:
        raise ValueError(f"d_model={d_model} with n_heads={n_heads} leaves no head width")

    def init(key: jax.Array) -> Params:
        ks = jax.random.split(key, 9)
        n = jax.random.normal
        s = 1.0 / jnp.sqrt(d_model)
        return {
            "embed": n(ks[0], (vocab, d_model)) * s,
            "pos": n(ks[1], (n_ctx, d_model)) * s,
            "attn": {"q": n(ks[2], (n_heads, d_model, d_head)) * s,
                     "k": n(ks[3], (n_heads, d_model, d_head)) * s,
                     "v": n(ks[4], (n_heads, d_model, d_head)) * s,
                     "o": n(ks[5], (n_heads, d_head, d_model)) * s},
            "mlp": {"w_in": n(ks[6], (d_model, d_mlp)) * s, "b_in": jnp.zeros(d_mlp),
                    "w_out": n(ks[7], (d_mlp, d_model)) * s, "b_out": jnp.zeros(d_model)},
            "unembed": n(ks[8], (d_model, vocab)) / jnp.sqrt(vocab),
        }

    def apply(params: Params, tokens: jax.Array) -> jax.Array:
        tokens = tokens.astype(jnp.int32)
        t = tokens.shape[1]
        x = params["embed"][tokens] + params["pos"][:t]  # (B, T, d)
        a = params["attn"]
        k = jnp.einsum("btd,hde->bhte", x, a["k"])
        v = jnp.einsum("btd,hde->bhte", x, a["v"])
        q = jnp.einsum("bd,hde->bhe", x[:, -1], a["q"])  # the last position attends to all (causal)
        scores = jnp.einsum("bhe,bhte->bht", q, k) / jnp.sqrt(d_head)
        attn = jax.nn.softmax(scores, axis=-1)
        z = jnp.einsum("bht,bhte->bhe", attn, v)
        resid = x[:, -1] + jnp.einsum("bhe,hed->bd", z, a["o"])
        m = params["mlp"]
        hidden = jax.nn.relu(resid @ m["w_in"] + m["b_in"])
        resid = resid + hidden @ m["w_out"] + m["b_out"]
        return resid @ params["unembed"]

    return Model(init, apply, f"transformer1L-d{d_model}-h{n_heads}-mlp{d_mlp}-noLN")


def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5) -> jax.Array:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * scale + bias


def decoder(
    vocab: int,
    d_model: int = 64,
    n_heads: int = 4,
    d_mlp: int = 256,
    n_layers: int = 2,
    n_ctx: int = 3,
    n_out: int | None = None,
) -> Model:
    """A decoder-only transformer: token and position embeddings, ``n_layers`` pre-LayerNorm blocks
    (causal multi-head self-attention, then a GELU MLP, each added to the residual stream), a final
    LayerNorm and an unembedding of the last position.

    Args:
        vocab: input tokens V.
        d_model: residual width (divisible by ``n_heads``).
        n_heads: attention heads H.
        d_mlp: MLP hidden width.
        n_layers: blocks.
        n_ctx: longest context.
        n_out: output classes (default V).

    Returns:
        A :class:`Model`; ``apply(params, tokens)`` maps (B, T ≤ n_ctx) int tokens to (B, n_out)
        logits of the last position. Params: ``embed`` (V, d), ``pos`` (n_ctx, d), ``blocks`` (a list
        of ``{"ln1", "ln2": {"scale", "bias"}: (d,), "qkv": (d, 3d), "o": (d, d), "w_in": (d, d_mlp),
        "b_in", "w_out": (d_mlp, d), "b_out"}``), ``ln_f``, ``unembed`` (d, n_out).
    """
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    n_out = n_out or vocab
    d_head = d_model // n_heads

    def init(key: jax.Array) -> Params:
        ks = iter(jax.random.split(key, 3 + 4 * n_layers))
        n = jax.random.normal
        s = 1.0 / jnp.sqrt(d_model)
        ln = lambda: {"scale": jnp.ones(d_model), "bias": jnp.zeros(d_model)}  # noqa: E731
        blocks = [{"ln1": ln(), "ln2": ln(),
                   "qkv": n(next(ks), (d_model, 3 * d_model)) * s,
                   "o": n(next(ks), (d_model, d_model)) * s / jnp.sqrt(2.0 * n_layers),
                   "w_in": n(next(ks), (d_model, d_mlp)) * s, "b_in": jnp.zeros(d_mlp),
                   "w_out": n(next(ks), (d_mlp, d_model)) / jnp.sqrt(d_mlp * 2.0 * n_layers),
                   "b_out": jnp.zeros(d_model)} for _ in range(n_layers)]
        return {"embed": n(next(ks), (vocab, d_model)) * 0.5, "pos": n(next(ks), (n_ctx, d_model)) * 0.5,
                "blocks": blocks, "ln_f": ln(), "unembed": n(next(ks), (d_model, n_out)) * s}

    def apply(params: Params, tokens: jax.Array) -> jax.Array:
        tokens = tokens.astype(jnp.int32)
        B, T = tokens.shape
        x = params["embed"][tokens] + params["pos"][:T]  # (B, T, d)
        causal = jnp.tril(jnp.ones((T, T), bool))
        for blk in params["blocks"]:
            h = _layer_norm(x, blk["ln1"]["scale"], blk["ln1"]["bias"])
            q, k, v = jnp.split((h @ blk["qkv"]).reshape(B, T, 3 * n_heads, d_head), 3, axis=2)
            scores = jnp.einsum("bthe,bshe->bhts", q, k) / jnp.sqrt(d_head)
            attn = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1)
            z = jnp.einsum("bhts,bshe->bthe", attn, v).reshape(B, T, d_model)
            x = x + z @ blk["o"]
            h = _layer_norm(x, blk["ln2"]["scale"], blk["ln2"]["bias"])
            x = x + jax.nn.gelu(h @ blk["w_in"] + blk["b_in"]) @ blk["w_out"] + blk["b_out"]
        x = _layer_norm(x[:, -1], params["ln_f"]["scale"], params["ln_f"]["bias"])
        return x @ params["unembed"]

    return Model(init, apply, f"decoder-L{n_layers}-d{d_model}-h{n_heads}-mlp{d_mlp}")
