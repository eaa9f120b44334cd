"""flax and equinox modules become recipes in one call; dense-only ones take the MLP fast path and
give the same training Jacobian as the generic path and as float64 jacfwd."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainmap.adapters import recipe_from_equinox, recipe_from_flax
from trainmap.jacobian.exact import exact_jacobian, plan_engine

flax = pytest.importorskip("flax")
eqx = pytest.importorskip("equinox")
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402


def _data(n: int = 24, d: int = 6, c: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, c, size=n).astype(np.int32)


def _opt(steps: int = 6):
    return optax.sgd(optax.cosine_decay_schedule(0.1, steps), momentum=0.9)


class AuthorsMLP(nn.Module):
    """The authors' module shape: Dense layers with N(0, 1/width) biases and flax's (tanh) gelu."""

    hidden: int = 5
    out: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(self.hidden, bias_init=nn.initializers.normal(self.hidden ** -0.5))(x))
        return nn.Dense(self.out, bias_init=nn.initializers.normal(self.hidden ** -0.5))(x)


class OutOfOrder(nn.Module):
    """Layers constructed (and so named Dense_0, Dense_1, Dense_2) in another order than called."""

    @nn.compact
    def __call__(self, x):
        out, first, second = nn.Dense(3), nn.Dense(5), nn.Dense(4)
        return out(nn.relu(second(nn.relu(first(x)))))


class LinenNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.LayerNorm()(nn.tanh(nn.Dense(5)(x))))


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.first = nnx.Linear(6, 5, rngs=rngs)
        self.second = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        return self.second(jax.nn.relu(self.first(x)))


def _jacfwd64(recipe, theta0) -> np.ndarray:
    with jax.enable_x64(True):
        return np.asarray(jax.jit(jax.jacfwd(recipe.train))(jnp.asarray(theta0, jnp.float64)))


def _fast_and_generic(recipe, theta0, activation):
    with jax.enable_x64(True):
        plan = plan_engine(recipe, jnp.asarray(theta0, jnp.float64))
    assert plan.rules == "mlp" and plan.mlp.activation == activation, plan
    fast = exact_jacobian(recipe, theta0, dtype=np.float64, chunk_size=8, progress=False)
    generic = exact_jacobian(recipe, theta0, dtype=np.float64, chunk_size=8, progress=False, specialize=False)
    ref = _jacfwd64(recipe, theta0)
    np.testing.assert_allclose(fast, generic, rtol=0, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_flax_linen_mlp_takes_the_fast_path_and_equals_the_generic_path():
    x, y = _data()
    recipe, theta0 = recipe_from_flax(AuthorsMLP(), x, y, _opt(), batch_size=8, epochs=2, seed=3)
    variables = AuthorsMLP().init(jax.random.key(3), jnp.asarray(x[:1]))
    from jax.flatten_util import ravel_pytree

    np.testing.assert_array_equal(np.asarray(theta0), np.asarray(ravel_pytree(variables)[0]))
    np.testing.assert_array_equal(recipe.batches[0], recipe.batches[3])  # fixed order by default
    assert recipe.config["framework"] == "flax.linen" and recipe.config["model"] == "flax.linen:AuthorsMLP"
    _fast_and_generic(recipe, theta0, "gelu_tanh")


@pytest.mark.slow  # opt-in: `pytest -m slow` (keeps the default suite under its budget)
def test_layers_named_out_of_call_order_are_chained_by_their_widths():
    x, y = _data()
    recipe, theta0 = recipe_from_flax(OutOfOrder(), x, y, _opt(), batch_size=8, epochs=2)
    _fast_and_generic(recipe, theta0, "relu")


@pytest.mark.slow  # opt-in: `pytest -m slow` (keeps the default suite under its budget)
def test_flax_nnx_module_takes_the_fast_path():
    x, y = _data()
    recipe, theta0 = recipe_from_flax(NnxMLP(nnx.Rngs(1)), x, y, _opt(), batch_size=8, epochs=2)
    _fast_and_generic(recipe, theta0, "relu")


def test_equinox_mlp_transposed_weights_take_the_fast_path():
    x, y = _data()
    model = eqx.nn.MLP(6, 3, 5, 2, activation=jnp.tanh, key=jax.random.key(0))  # two hidden layers
    recipe, theta0 = recipe_from_equinox(model, x, y, _opt(), batch_size=8, epochs=2)
    assert theta0.size == 6 * 5 + 5 + 5 * 5 + 5 + 5 * 3 + 3
    _fast_and_generic(recipe, theta0, "tanh")


def test_a_flax_module_with_layernorm_takes_the_generic_path_and_is_still_exact():
    x, y = _data()
    recipe, theta0 = recipe_from_flax(LinenNorm(), x, y, _opt(3), batch_size=8, epochs=1)
    assert plan_engine(recipe, theta0).rules == "autodiff"
    J = exact_jacobian(recipe, theta0, dtype=np.float64, progress=False)
    ref = _jacfwd64(recipe, theta0)
    np.testing.assert_allclose(J, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_trained_flax_run_equals_a_plain_flax_loop():
    x, y = _data()
    module = AuthorsMLP()
    recipe, theta0 = recipe_from_flax(module, x, y, _opt(), batch_size=8, epochs=2)
    variables = module.init(jax.random.key(0), jnp.asarray(x[:1]))
    tx = _opt()
    state = tx.init(variables)
    for step in range(6):
        xb, yb = x[(step % 3) * 8:(step % 3 + 1) * 8], y[(step % 3) * 8:(step % 3 + 1) * 8]
        g = jax.grad(lambda v: optax.softmax_cross_entropy_with_integer_labels(module.apply(v, xb), yb).mean())(
            variables)
        u, state = tx.update(g, state, variables)
        variables = optax.apply_updates(variables, u)
    from jax.flatten_util import ravel_pytree

    np.testing.assert_allclose(np.asarray(recipe.train(theta0)), np.asarray(ravel_pytree(variables)[0]),
                               rtol=1e-5, atol=1e-6)


def test_modules_with_state_or_of_the_wrong_kind_are_refused():
    x, y = _data()

    class WithBN(nn.Module):
        @nn.compact
        def __call__(self, xb):
            return nn.Dense(3)(nn.BatchNorm(use_running_average=True)(xb))

    with pytest.raises(ValueError, match="batch_stats"):
        recipe_from_flax(WithBN(), x, y, _opt(), batch_size=8)
    with pytest.raises(ValueError, match="flax linen.Module or nnx.Module"):
        recipe_from_flax(lambda v: v, x, y, _opt(), batch_size=8)
    with pytest.raises(ValueError, match="equinox.Module"):
        recipe_from_equinox(AuthorsMLP(), x, y, _opt(), batch_size=8)
