"""The published experiment the way the authors' public code runs it, for the README's "authors'
code" column and as a cross-check of `trainmap jacobian`.

EleutherAI/training-jacobian, ``experiments.ipynb`` (read, not copied): a flax linen MLP 64→64→10
(``nn.Dense`` with lecun-normal kernels and N(0, 1/64) biases, ``nn.gelu``), ``model.init(
jax.random.key(0), X_train)``, pixels / 16, ``train_test_split(test_size=197, random_state=0)``,
the same batch order every epoch, SGD momentum 0.9 with a cosine lr from 0.1, batch 64, 25
epochs; ``jax.jacfwd`` of the whole run and ``jnp.linalg.svd``. This script does the same with
its own code, then (``--trainmap``) computes J of the *same* flax module through
``trainmap.recipe_from_flax`` and trainmap's engine and compares the two.

    python bench/authors_route.py --trainmap     # ~3 min on 2 CPU cores; writes bench/results/authors_route.json

The region statistics are counted here with NumPy, independently of trainmap.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.flatten_util import ravel_pytree
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).parent / "results" / "authors_route.json"


class DigitsMLP(nn.Module):
    """Dense layers with N(0, 1/width) bias initialisers (the last layer keeps the last hidden
    width's), flax's default (tanh-approximate) GELU between them."""

    hidden: tuple[int, ...] = (64,)
    classes: int = 10

    @nn.compact
    def __call__(self, x):
        std = None
        for width in self.hidden:
            std = width ** -0.5
            x = nn.gelu(nn.Dense(width, bias_init=nn.initializers.normal(stddev=std))(x))
        return nn.Dense(self.classes, bias_init=nn.initializers.normal(stddev=std))(x)


def data():
    X, Y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(X / 16.0, Y, test_size=197, random_state=0)
    return (jnp.asarray(x_tr, jnp.float32), jnp.asarray(y_tr, jnp.int32),
            jnp.asarray(x_te, jnp.float32), jnp.asarray(y_te, jnp.int32))


def trainer(model, unravel, x, y, epochs: int, batch: int = 64):
    steps = epochs * len(x) // batch
    tx = optax.sgd(optax.cosine_decay_schedule(0.1, steps), momentum=0.9)
    xb, yb = x.reshape(-1, batch, x.shape[1]), y.reshape(-1, batch)

    def loss(flat, xs, ys):
        logits = model.apply(unravel(flat), xs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()

    def train(flat0):
        def step(carry, b):
            flat, state = carry
            g = jax.grad(loss)(flat, *b)
            u, state = tx.update(g, state, flat)
            return (optax.apply_updates(flat, u), state), None

        def epoch(carry, _):
            return jax.lax.scan(step, carry, (xb, yb))[0], None

        return jax.lax.scan(epoch, (flat0, tx.init(flat0)), None, length=epochs)[0][0]

    return train


def statistics(S, U, Vt) -> dict:
    S = np.asarray(S, np.float64)
    cos = np.abs(np.einsum("ij,ji->j", np.asarray(U, np.float64), np.asarray(Vt, np.float64)))
    near = np.abs(S - 1) < 1e-3
    return {"P": int(S.size), "sigma_max": float(S[0]), "chaotic": int(np.sum(S > 1.1)),
            "bulk": int(np.sum(np.abs(S - 1) <= 0.1)), "stable": int(np.sum(S < 0.9)),
            "bulk_0.01": int(np.sum(np.abs(S - 1) <= 0.01)), "bulk_0.001": int(np.sum(np.abs(S - 1) <= 0.001)),
            "median_cos_below_1e-3": float(np.median(cos[near])) if near.any() else None,
            "median_cos_bulk": float(np.median(cos[np.abs(S - 1) <= 0.1]))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--trainmap", action="store_true", help="also compute J of the same module with trainmap")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    x, y, x_te, y_te = data()
    model = DigitsMLP(hidden=(a.hidden,))
    flat0, unravel = ravel_pytree(model.init(jax.random.key(0), x))
    train = trainer(model, unravel, x, y, a.epochs)
    t0 = time.perf_counter()
    J = jax.jit(jax.jacfwd(train))(flat0).block_until_ready()
    t_jac = time.perf_counter() - t0
    U, S, Vt = jnp.linalg.svd(J)
    flatT = jax.jit(train)(flat0)
    acc = float(jnp.mean(jnp.argmax(model.apply(unravel(flatT), x_te), -1) == y_te))
    result = {"command": "python bench/authors_route.py" + (" --trainmap" if a.trainmap else ""),
              "machine": platform.processor() or platform.machine(), "jax": jax.__version__,
              "authors_route": {**statistics(S, U, Vt), "test_accuracy": acc, "jacfwd_s": t_jac}}
    print(json.dumps(result["authors_route"], indent=1))
    if a.trainmap:
        from trainmap import recipe_from_flax
        from trainmap.jacobian.exact import exact_jacobian, plan_engine

        tx = optax.sgd(optax.cosine_decay_schedule(0.1, a.epochs * len(x) // 64), momentum=0.9)
        recipe, theta0 = recipe_from_flax(model, np.asarray(x), np.asarray(y), tx, batch_size=64,
                                          epochs=a.epochs, variables=model.init(jax.random.key(0), x))
        plan = plan_engine(recipe, theta0)
        t0 = time.perf_counter()
        Jt = exact_jacobian(recipe, theta0, progress=False)
        t_tm = time.perf_counter() - t0
        Ut, St, Vtt = np.linalg.svd(np.asarray(Jt, np.float64))
        J64 = np.asarray(J, np.float64)
        result["trainmap_same_module"] = {
            **statistics(St, Ut, Vtt), "rules": plan.rules, "engine_s": t_tm,
            "theta0_equal": bool(np.array_equal(np.asarray(theta0), np.asarray(flat0))),
            "rel_frobenius_vs_jacfwd": float(np.linalg.norm(Jt - J64) / np.linalg.norm(J64)),
            "max_abs_sigma_diff_over_sigma_max": float(np.max(np.abs(St - np.asarray(S, np.float64))) / St[0])}
        print(json.dumps(result["trainmap_same_module"], indent=1))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(a.out)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
