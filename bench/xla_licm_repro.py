"""A self-contained reproducer (JAX only) of the wrong rows in a batched float32 reverse pass.

Two SGD steps, run with ``lax.scan``, of a tiny attention model (embedding lookup, one softmax
attention layer, unembedding, cross-entropy) on random tokens. Row i of ``vmap(pullback)(W)``
must equal the pullback of ``W[i]`` alone (which agrees with float64 to rounding). Compiled with
XLA's default passes, rows 7..15 of a block of 16 differ from the single rows by 3e-4 to 6e-4 of
their size (rows 0..6: 6e-8, rounding) on JAX 0.10.2's CPU backend; compiled without
``while-loop-invariant-code-motion`` every row agrees to rounding. Ordinary
training code is enough to hit it; trainmap's product programs therefore compile without that
pass (``matrix_free.operator.REVERSE_PASS_OPTIONS``).

    python bench/xla_licm_repro.py        # a few seconds
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
VOCAB, WIDTH, HEADS, N, BATCH, CTX, CLASSES, ROWS = 114, 16, 4, 1000, 128, 3, 113, 16


def problem(seed: int = 0, dtype=jnp.float32):
    """(train, θ, W): a 2-step scanned training run θ -> θ_T, a start point and 16 cotangents."""
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, VOCAB, size=(N, CTX)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, CLASSES, size=N), jnp.int32)
    batches = jnp.asarray(np.stack([rng.permutation(N)[:BATCH] for _ in range(2)]))
    shapes = [(VOCAB, WIDTH), (WIDTH, 3 * WIDTH), (WIDTH, CLASSES)]
    sizes = [a * b for a, b in shapes]

    def logits(theta, tok):
        emb, qkv, unembed = (theta[o:o + n].reshape(s) for o, n, s in
                             zip(np.cumsum([0] + sizes[:-1]), sizes, shapes))
        h = emb[tok]
        q, k, v = jnp.split((h @ qkv).reshape(tok.shape[0], CTX, 3 * HEADS, WIDTH // HEADS), 3, axis=2)
        attn = jax.nn.softmax(jnp.einsum("bthe,bshe->bhts", q, k), axis=-1)
        z = jnp.einsum("bhts,bshe->bthe", attn, v).reshape(tok.shape[0], CTX, WIDTH)
        return (h + z).sum(1) @ unembed

    def loss(theta, idx):
        logp = jax.nn.log_softmax(logits(theta, tokens[idx]))
        return -jnp.take_along_axis(logp, labels[idx][:, None], 1).mean()

    def train(theta):
        step = lambda th, idx: (th - 0.05 * jax.grad(loss)(th, idx), None)  # noqa: E731
        return jax.lax.scan(step, theta, batches)[0]

    P = sum(sizes)
    theta = jnp.asarray(rng.normal(size=P) / 4, dtype)
    W = jnp.asarray(rng.choice([-1.0, 1.0], size=(ROWS, P)) / np.sqrt(P), dtype)
    return train, theta, W


def rows_of(train):
    """``(θ, W) -> vmap of the pullback of train at θ over the rows of W``."""
    def pullback_rows(th, w):
        _, pullback = jax.vjp(train, th)
        return jax.vmap(lambda c: pullback(c)[0])(w)
    return pullback_rows


def main() -> None:
    with jax.enable_x64(True):  # the reference: float64, the 16 rows at once
        train64, theta64, W64 = problem(dtype=jnp.float64)
        ref = np.asarray(jax.jit(rows_of(train64))(theta64, W64))
    train, theta, W = problem()
    pullback_rows = rows_of(train)
    single_f = jax.jit(pullback_rows)
    single = np.concatenate([np.asarray(single_f(theta, W[i:i + 1])) for i in range(ROWS)])
    alone = np.abs(single - ref).max(axis=1) / np.abs(ref).max(axis=1)
    print("each row alone against float64:", np.array2string(alone, precision=1, max_line_width=200))
    out = {"each row alone, float32, against float64": alone.tolist()}
    for name, opts in (("xla default", None),
                       ("without while-loop-invariant-code-motion",
                        {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"})):
        batch = np.asarray(jax.jit(pullback_rows, compiler_options=opts)(theta, W))
        err = np.abs(batch - single).max(axis=1) / np.abs(single).max(axis=1)
        out[name] = err.tolist()
        print(f"{name}: per-row relative difference, batched vs alone:",
              np.array2string(err, precision=1, max_line_width=200))
    res = {"benchmark": __doc__.splitlines()[0], "command": "python bench/xla_licm_repro.py",
           "machine": {"platform": platform.platform(), "jax": jax.__version__,
                       "backend": jax.default_backend()}, "rows": out}
    (HERE / "results" / "xla_licm_repro.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
