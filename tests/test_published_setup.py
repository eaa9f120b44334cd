"""`trainmap jacobian`'s default is the published experiment, built here independently of the
presets from the authors' public code (EleutherAI/training-jacobian, experiments.ipynb): their
split, their initialisation, their fixed batch order, flax's tanh GELU, SGD momentum 0.9 with a
cosine learning rate."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from typer.testing import CliRunner

from trainmap.cli import app
from trainmap.presets import TORCH_DEFAULTS, digits_mlp

runner = CliRunner()


def _authors_setup(epochs: int, hidden: int = 64, seed: int = 0):
    """(x_train, y_train, theta0 pytree, train) as their notebook builds them, without trainmap."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, Y = load_digits(return_X_y=True)
    X = X / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(X, Y, test_size=197, random_state=0)
    x_tr, y_tr = jnp.asarray(x_tr, jnp.float32), jnp.asarray(y_tr, jnp.int32)
    key = jax.random.key(seed)
    params = []
    for fan_in, fan_out in ((64, hidden), (hidden, 10)):
        key, kw, kb = jax.random.split(key, 3)
        # LeCun normal: a truncated normal on [-2, 2] rescaled to variance 1/fan_in
        w = jax.random.truncated_normal(kw, -2.0, 2.0, (fan_in, fan_out), jnp.float32) \
            * jnp.sqrt(1.0 / fan_in) / 0.87962566103423978
        b = jax.random.normal(kb, (fan_out,), jnp.float32) * hidden ** -0.5  # their bias_init
        params.append({"w": w, "b": b})

    def apply(p, x):
        h = jax.nn.gelu(x @ p[0]["w"] + p[0]["b"])  # flax nn.gelu: approximate=True
        return h @ p[1]["w"] + p[1]["b"]

    steps = epochs * len(x_tr) // 64
    tx = optax.sgd(optax.cosine_decay_schedule(0.1, steps), momentum=0.9)
    xb, yb = x_tr.reshape(-1, 64, 64), y_tr.reshape(-1, 64)  # the same order every epoch

    def train(p0):
        def step(carry, batch):
            p, s = carry
            g = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(apply(q, batch[0]),
                                                                                    batch[1]).mean())(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        def epoch(carry, _):
            return jax.lax.scan(step, carry, (xb, yb))[0], None

        return jax.lax.scan(epoch, (p0, tx.init(p0)), jnp.arange(epochs))[0][0]

    return x_tr, y_tr, params, train


def _flat(p):
    from jax.flatten_util import ravel_pytree

    return np.asarray(ravel_pytree(p)[0])


def test_default_preset_equals_the_authors_setup_built_independently():
    x_tr, y_tr, p0, train = _authors_setup(epochs=2)
    s = digits_mlp(epochs=2)
    np.testing.assert_array_equal(np.asarray(s.recipe.x), np.asarray(x_tr))
    np.testing.assert_array_equal(np.asarray(s.recipe.y), np.asarray(y_tr))
    np.testing.assert_array_equal(np.asarray(s.theta0), _flat(p0))
    np.testing.assert_array_equal(s.recipe.batches[0], np.arange(64))  # fixed order
    np.testing.assert_array_equal(s.recipe.batches[25], np.arange(64))
    thT = np.asarray(jax.jit(s.recipe.train)(s.theta0))
    np.testing.assert_allclose(thT, _flat(jax.jit(train)(p0)), rtol=2e-5, atol=2e-6)


@pytest.mark.slow
def test_cli_default_equals_the_authors_route_to_float32_round_off(tmp_path):
    """The full 25-epoch run: θ₀, θ_T and σ of `trainmap jacobian` against jacfwd of their loop."""
    x_tr, y_tr, p0, train = _authors_setup(epochs=25)
    res = runner.invoke(app, ["jacobian", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.load(tmp_path / "run" / "theta0.npy"), _flat(p0))
    np.testing.assert_allclose(np.load(tmp_path / "run" / "thetaT.npy"), _flat(jax.jit(train)(p0)),
                               rtol=1e-4, atol=1e-5)
    from jax.flatten_util import ravel_pytree

    th0, unravel = ravel_pytree(p0)
    J = np.asarray(jax.jit(jax.jacfwd(lambda t: ravel_pytree(train(unravel(t)))[0]))(th0))
    S_ref = np.linalg.svd(J.astype(np.float64), compute_uv=False)
    S = np.load(tmp_path / "run" / "singular_values.npy")
    np.testing.assert_allclose(S, S_ref, rtol=0, atol=1e-5 * S_ref[0])


@pytest.mark.slow  # opt-in: the options themselves are covered by the CLI tests
def test_earlier_default_stays_available_through_options(tmp_path):
    out = tmp_path / "old"
    args = ["jacobian", "--hidden", "4", "--epochs", "1", "--batch-size", "200", "--init", "torch",
            "--split", "permutation", "--shuffle", "--gelu", "erf", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    old = digits_mlp(hidden=4, epochs=1, batch_size=200, **TORCH_DEFAULTS)
    np.testing.assert_array_equal(np.load(out / "theta0.npy"), np.asarray(old.theta0))
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["init"], cfg["split"], cfg["shuffle"], cfg["activation"], cfg["data_seed"]) == \
        ("torch", "permutation", True, "gelu", 0)


@pytest.mark.parametrize("args, msg", [(["--eps-root", "1e-8"], "Adam setting"),
                                       (["--shuffle", "--data-seed", "-1"], "data-seed"),
                                       (["--data-seed", "3"], "add --shuffle"),
                                       (["--bulk-tol", "0"], "bulk-tol")])
def test_bad_setup_combinations_are_one_error_line(tmp_path, args, msg):
    res = runner.invoke(app, ["jacobian", "--hidden", "4", "--epochs", "1", *args, "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and msg in res.output, res.output
    assert not (tmp_path / "x").exists()
