"""The exact-Jacobian engine's routes agree with each other and with independent references.

Routes: shared primal (stored step linearisations) vs per-chunk ``vmap(jvp(train))``; hand-derived
MLP tangent rules vs JAX's linearisation; reverse vs forward mode; one device vs two (in a
subprocess with two forced host devices). References: ``jax.jacfwd`` of the training function
and the closed form of gradient descent on a quadratic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_recipe
from trainmap.jacobian.exact import CheckpointError, exact_jacobian, plan_engine
from trainmap.jacobian.exact.mlp_rules import detect_mlp
from trainmap.models import mlp
from trainmap.recipe import Recipe, flat_params, make_recipe


def _jacfwd64(recipe: Recipe, theta0) -> np.ndarray:
    with jax.enable_x64(True):
        th = jnp.asarray(theta0, jnp.float64)
        return np.asarray(jax.jit(jax.jacfwd(recipe.train))(th))


@pytest.mark.parametrize("activation", ["gelu", "tanh", "relu"])
def test_mlp_rules_equal_jacfwd_float64(activation):
    recipe, theta0 = tiny_recipe(activation=activation, epochs=1)
    ref = _jacfwd64(recipe, theta0)
    with jax.enable_x64(True):
        plan = plan_engine(recipe, jnp.asarray(theta0, jnp.float64))
    assert plan.rules == "mlp" and plan.mlp.activation == activation and plan.primal == "shared"
    J = exact_jacobian(recipe, theta0, dtype=np.float64, chunk_size=8, progress=False)
    np.testing.assert_allclose(J, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_autodiff_rules_reverse_mode_and_per_chunk_primal_equal_jacfwd_float64():
    recipe, theta0 = tiny_recipe(epochs=2)
    ref = _jacfwd64(recipe, theta0)
    for kw in ({"specialize": False}, {"primal": "per_chunk"}, {"mode": "reverse"}):
        J = exact_jacobian(recipe, theta0, dtype=np.float64, chunk_size=10, progress=False, **kw)
        np.testing.assert_allclose(J, ref, rtol=0, atol=1e-12 * np.abs(ref).max(), err_msg=str(kw))


def test_reverse_mode_on_quadratic_equals_closed_form():
    rng = np.random.default_rng(5)
    P, T = 9, 30
    Q = rng.normal(size=(P, P))
    A = Q @ Q.T / P + 0.1 * np.eye(P)
    sched = optax.cosine_decay_schedule(0.3, T)
    with jax.enable_x64(True):
        A64 = jnp.asarray(A)
        recipe = Recipe(apply=lambda p, x: p, loss=lambda out, y: 0.5 * out @ A64 @ out,
                        optimizer=optax.sgd(sched), x=np.zeros((1, 1)), y=np.zeros((1,)),
                        batches=np.zeros((T, 1), np.int32), unravel=lambda v: v, num_params=P)
        assert detect_mlp(recipe, jnp.zeros(P)) is None
        J = exact_jacobian(recipe, rng.normal(size=P), dtype=np.float64, mode="reverse",
                           chunk_size=4, progress=False)
        expected = np.eye(P)
        for t in range(T):
            expected = (np.eye(P) - float(sched(t)) * A) @ expected
    np.testing.assert_allclose(J, expected, rtol=0, atol=1e-10)


def test_adam_state_with_counters_matches_jacfwd():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=16).astype(np.int32)
    model = mlp((4, 3, 3), activation="tanh")
    theta0, unravel = flat_params(model.init, 2)
    opt = optax.adam(optax.cosine_decay_schedule(0.05, 4), eps_root=1e-16)
    recipe = make_recipe(model.apply, unravel, theta0.size, x, y, opt, batch_size=8, epochs=2)
    ref = _jacfwd64(recipe, theta0)
    for kw in ({}, {"mode": "reverse"}):
        J = exact_jacobian(recipe, theta0, dtype=np.float64, progress=False, **kw)
        np.testing.assert_allclose(J, ref, rtol=0, atol=1e-10 * np.abs(ref).max(), err_msg=str(kw))


def test_a_model_that_is_not_the_mlp_is_not_specialised():
    recipe, theta0 = tiny_recipe(epochs=1)
    scaled = Recipe(lambda p, x: 2.0 * recipe.apply(p, x), recipe.loss, recipe.optimizer, recipe.x,
                    recipe.y, recipe.batches, recipe.unravel, recipe.num_params, recipe.config)
    assert detect_mlp(scaled, jnp.asarray(theta0)) is None
    assert plan_engine(scaled, jnp.asarray(theta0)).rules == "autodiff"
    np.testing.assert_allclose(exact_jacobian(scaled, theta0, progress=False),
                               np.asarray(jax.jit(jax.jacfwd(scaled.train))(theta0)), rtol=1e-5, atol=1e-6)


def test_small_budget_falls_back_to_per_chunk_and_reverse_refuses():
    recipe, theta0 = tiny_recipe(epochs=1)
    th = jnp.asarray(theta0)
    rb = plan_engine(recipe, th, primal="shared").residual_bytes
    assert rb > 0
    plan = plan_engine(recipe, th, chunk_size=8, memory_budget_gb=rb / 2**30)
    assert plan.primal == "per_chunk" and plan.rules == "autodiff"
    with pytest.raises(ValueError, match="reverse mode"):
        plan_engine(recipe, th, mode="reverse", primal="per_chunk")
    with pytest.raises(ValueError, match="mode must be"):
        plan_engine(recipe, th, mode="sideways")


def test_resuming_with_other_engine_settings_is_refused(tmp_path):
    recipe, theta0 = tiny_recipe(epochs=1)
    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, progress=False, stop_after=1)
    with pytest.raises(CheckpointError, match="different run"):
        exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, resume=True, progress=False,
                       mode="reverse")


SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import tiny_recipe
    from trainmap.jacobian.exact import exact_jacobian
    recipe, theta0 = tiny_recipe(epochs=1)
    ref = np.asarray(jax.jit(jax.jacfwd(recipe.train))(theta0))
    out = {{"devices": jax.device_count()}}
    for name, kw in {{"mlp": {{}}, "reverse": {{"mode": "reverse"}},
                     "per_chunk": {{"primal": "per_chunk", "chunk_size": 8}}}}.items():
        J2 = exact_jacobian(recipe, theta0, progress=False, **kw)
        J1 = exact_jacobian(recipe, theta0, progress=False, devices=1, **kw)
        out[name] = [float(np.abs(J2 - J1).max()), float(np.abs(J2 - ref).max())]
    ck = {ck!r}
    full = exact_jacobian(recipe, theta0, chunk_size=6, progress=False)
    try:
        exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, progress=False, stop_after=2)
    except KeyboardInterrupt:
        pass
    resumed = exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, resume=True, progress=False)
    out["resume_bitwise"] = resumed.tobytes() == full.tobytes()
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow  # opt-in: `pytest -m slow` (keeps the default suite under its budget)
def test_two_host_devices_give_the_single_device_matrix(tmp_path):
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                                       " --xla_force_host_platform_device_count=2").strip(),
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED.format(tests=tests, ck=str(tmp_path / "ck"))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT"):])
    assert out["devices"] == 2
    for name in ("mlp", "reverse", "per_chunk"):
        sharded_vs_single, vs_jacfwd = out[name]
        assert sharded_vs_single <= 1e-6, (name, out)
        assert vs_jacfwd <= 1e-5, (name, out)
    assert out["resume_bitwise"]


@pytest.mark.slow  # opt-in: `pytest -m slow` (keeps the default suite under its budget)
def test_tanh_gelu_and_registered_activations_take_the_fast_mlp_path():
    """flax's default GELU (tanh approximation) and a user-registered activation are recognised by
    the hand-derived MLP rules, and give jacfwd's J."""
    from trainmap.models import ACTIVATIONS, register_activation

    if "softplus_test" not in ACTIVATIONS:
        register_activation("softplus_test", jax.nn.softplus)
    with pytest.raises(ValueError, match="already registered"):
        register_activation("gelu", jax.nn.gelu)
    for act in ("gelu_tanh", "softplus_test"):
        recipe, theta0 = tiny_recipe(activation=act, epochs=1)
        ref = _jacfwd64(recipe, theta0)
        with jax.enable_x64(True):
            plan = plan_engine(recipe, jnp.asarray(theta0, jnp.float64))
        assert plan.rules == "mlp" and plan.mlp.activation == act
        J = exact_jacobian(recipe, theta0, dtype=np.float64, chunk_size=8, progress=False)
        np.testing.assert_allclose(J, ref, rtol=0, atol=1e-12 * np.abs(ref).max(), err_msg=act)


def _recipe_with_dead_inputs(opt):
    """A 6→4→3 MLP whose inputs 1 and 4 are 0 in every example: 8 first-layer weights never act."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 6)).astype(np.float32)
    x[:, [1, 4]] = 0
    y = rng.integers(0, 3, size=24).astype(np.int32)
    model = mlp((6, 4, 3), activation="tanh")
    theta0, unravel = flat_params(model.init, 0)
    return make_recipe(model.apply, unravel, theta0.size, x, y, opt, batch_size=8, epochs=2,
                       shuffle_seed=0), theta0


@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_unit_columns_of_dead_inputs_are_certified_skipped_and_exact(tmp_path, monkeypatch, decay):
    """The first-layer weights of always-zero inputs give columns e_j of J (plain SGD momentum):
    the engine certifies them with its probe and does not compute them. With weight decay they
    are not unit vectors; the probe fails and they are computed. Either way J equals float64
    jacfwd, streamed or not, and a resumed run is bit-identical."""
    from trainmap.jacobian.exact import driver

    opt = optax.chain(optax.add_decayed_weights(decay), optax.sgd(0.1, momentum=0.9))
    recipe, theta0 = _recipe_with_dead_inputs(opt)
    plan = plan_engine(recipe, jnp.asarray(theta0))
    leaves = jax.tree_util.tree_leaves(recipe.unravel(jnp.arange(theta0.size)))
    first_w = next(  # the dead weights' flat indices, located independently
        np.asarray(a) for a in leaves if np.ndim(a) == 2 and a.shape[0] == 6)
    assert sorted(plan.unit_columns) == sorted(first_w[[1, 4]].ravel().tolist()), plan.unit_columns
    seen = []
    real_fill = driver._Directions.fill_units
    monkeypatch.setattr(driver._Directions, "fill_units",
                        lambda self, asm: (seen.append(self.certified), real_fill(self, asm))[1])
    ref = _jacfwd64(recipe, theta0)
    J = exact_jacobian(recipe, theta0, dtype=np.float64, chunk_size=5, progress=False)
    np.testing.assert_allclose(J, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    units = list(plan.unit_columns)
    eye = np.eye(theta0.size)[:, units]
    assert np.array_equal(J[:, units], eye) == (decay == 0)
    assert seen == [decay == 0]
    full = exact_jacobian(recipe, theta0, chunk_size=5, progress=False, out=tmp_path / "J.npy")
    with pytest.raises(KeyboardInterrupt):
        exact_jacobian(recipe, theta0, chunk_size=5, checkpoint_dir=tmp_path / "ck", progress=False,
                       stop_after=2)
    resumed = exact_jacobian(recipe, theta0, chunk_size=5, checkpoint_dir=tmp_path / "ck", resume=True,
                             progress=False)
    assert np.asarray(full).tobytes() == resumed.tobytes()
    np.testing.assert_allclose(resumed, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
