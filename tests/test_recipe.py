"""Recipe: training equals an independent hand-written loop; recording and input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_recipe
from trainmap.recipe import Recipe, TrainingDivergedError, check_training, epoch_batches, make_recipe


def test_epoch_batches_cover_each_epoch_once():
    b = epoch_batches(20, 6, 3, shuffle_seed=1)
    assert b.shape == (9, 6)
    for e in range(3):
        seen = b[3 * e: 3 * e + 3].ravel()
        assert len(set(seen.tolist())) == 18  # no repeats within an epoch
    assert not np.array_equal(b[:3], b[3:6])  # reshuffled each epoch
    assert np.array_equal(epoch_batches(20, 6, 3, None)[0], np.arange(6))
    assert np.array_equal(b, epoch_batches(20, 6, 3, shuffle_seed=1))  # deterministic


def test_train_matches_hand_written_sgd_momentum():
    """Independent route: plain Python loop with the textbook momentum update."""
    recipe, theta0 = tiny_recipe(momentum=0.9)
    with jax.enable_x64(True):
        th0 = jnp.asarray(theta0, jnp.float64)
        got = np.asarray(recipe.train(th0))
        lr_sched = optax.cosine_decay_schedule(0.1, recipe.num_steps)
        x = jnp.asarray(recipe.x, jnp.float64)
        y = jnp.asarray(recipe.y)

        def loss(th, idx):
            logits = recipe.apply(recipe.unravel(th), x[idx])
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(idx)), y[idx]])

        th, m = th0, jnp.zeros_like(th0)
        for t, idx in enumerate(recipe.batches):
            g = jax.grad(loss)(th, idx)
            m = 0.9 * m + g
            th = th - lr_sched(t) * m
    np.testing.assert_allclose(got, np.asarray(th), rtol=1e-12, atol=1e-12)


def test_run_records_trajectory_consistent_with_train(tiny):
    recipe, theta0 = tiny
    rec = recipe.run(theta0, record_every=2, probe=recipe.x[:5])
    T = recipe.num_steps
    assert rec.steps[0] == 0 and rec.steps[-1] == T
    assert rec.params.shape == (len(rec.steps), recipe.num_params)
    assert rec.probe_outputs.shape == (len(rec.steps), 5, 3)
    np.testing.assert_array_equal(np.asarray(rec.params[0]), np.asarray(theta0))
    np.testing.assert_allclose(np.asarray(rec.theta_T), np.asarray(recipe.train(theta0)), rtol=1e-6)
    # a recorded intermediate point equals training on a truncated schedule
    mid = recipe.with_data(batches=recipe.batches[:2])
    mid = Recipe(mid.apply, mid.loss, optax.sgd(optax.cosine_decay_schedule(0.1, T), momentum=0.9),
                 mid.x, mid.y, mid.batches, mid.unravel, mid.num_params)
    np.testing.assert_allclose(np.asarray(rec.params[1]), np.asarray(mid.train(theta0)), rtol=1e-6)
    assert rec.losses.shape == (T,)


def test_run_with_remainder_steps(tiny):
    recipe, theta0 = tiny  # T = 6 steps
    rec = recipe.run(theta0, record_every=4)
    assert list(rec.steps) == [0, 4, 6]
    np.testing.assert_allclose(np.asarray(rec.params[-1]), np.asarray(recipe.train(theta0)), rtol=1e-6)


def test_bad_inputs_give_clear_errors(tiny):
    recipe, theta0 = tiny
    x = np.array(recipe.x)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        recipe.with_data(x=x)
    with pytest.raises(ValueError, match="number of samples"):
        recipe.with_data(y=np.asarray(recipe.y)[:-1])
    with pytest.raises(ValueError, match="theta0 must be a flat vector"):
        recipe.train(jnp.zeros(recipe.num_params + 1))
    with pytest.raises(ValueError, match="batch indices"):
        recipe.with_data(batches=np.full((2, 3), 10_000))


def test_divergence_is_detected():
    recipe, theta0 = tiny_recipe(lr=1e6, momentum=None)
    with pytest.raises(TrainingDivergedError, match="Lower the learning rate"):
        check_training(recipe, theta0)


def test_make_recipe_rejects_unknown_loss(tiny):
    recipe, _ = tiny
    with pytest.raises(ValueError, match="unknown loss"):
        make_recipe(recipe.apply, recipe.unravel, recipe.num_params, recipe.x, recipe.y,
                    optax.sgd(0.1), batch_size=4, epochs=1, loss="hinge")


def test_digits_read_from_the_bundled_file_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits as sk_load_digits

    from trainmap.data.digits import digits_arrays

    pixels, labels = digits_arrays()
    ref = sk_load_digits()
    np.testing.assert_array_equal(pixels, ref.data)
    np.testing.assert_array_equal(labels, ref.target)


def test_init_step_pair_equals_train_and_run_many_equals_run(tiny):
    """The public pure pair scanned by hand gives train's θ_T; run_many (vmap) gives run's points."""
    recipe, theta0 = tiny
    state = recipe.init(theta0)
    for idx in recipe.batches:
        state = recipe.step(state, jnp.asarray(idx))
    np.testing.assert_allclose(np.asarray(state.theta), np.asarray(recipe.train(theta0)), rtol=1e-6, atol=1e-7)
    rec = recipe.run(theta0, record_every=2)
    _, obs = recipe.run_many(np.stack([theta0, theta0]), rec.steps, lambda s: s.theta)
    assert obs.shape == (2, len(rec.steps), recipe.num_params)
    np.testing.assert_allclose(obs[1], np.asarray(rec.params), rtol=1e-5, atol=1e-6)


def test_fingerprint_tells_optimizers_apart_and_is_stable(tiny):
    recipe, theta0 = tiny
    other = Recipe(recipe.apply, recipe.loss, optax.sgd(0.5), recipe.x, recipe.y, recipe.batches,
                   recipe.unravel, recipe.num_params, recipe.config)
    again = Recipe(recipe.apply, recipe.loss, recipe.optimizer, recipe.x, recipe.y, recipe.batches,
                   recipe.unravel, recipe.num_params, recipe.config)
    assert recipe.fingerprint() == again.fingerprint() != other.fingerprint()
    assert recipe.with_data(batches=recipe.batches[::-1]).fingerprint() != recipe.fingerprint()


def test_project_map_is_applied_and_differentiated(tiny):
    """A norm constraint reading θ₀ (the non-grokking condition): training keeps ‖θ‖, and the exact
    engine differentiates it (per-chunk primal) to jacfwd's J."""
    from trainmap.jacobian import exact_jacobian
    from trainmap.jacobian.exact import plan_engine

    recipe, theta0 = tiny

    def constrain(params, params0):
        norm = lambda t: jnp.sqrt(sum(jnp.sum(a ** 2) for a in jax.tree_util.tree_leaves(t)))  # noqa: E731
        return jax.tree_util.tree_map(lambda a: a * norm(params0) / norm(params), params)

    proj = Recipe(recipe.apply, recipe.loss, recipe.optimizer, recipe.x, recipe.y, recipe.batches,
                  recipe.unravel, recipe.num_params, recipe.config, project=constrain)
    thT = np.asarray(proj.train(theta0))
    assert np.linalg.norm(thT) == pytest.approx(np.linalg.norm(np.asarray(theta0)), rel=1e-5)
    assert plan_engine(proj, jnp.asarray(theta0)).primal == "per_chunk"
    with pytest.raises(ValueError, match="per_chunk"):
        plan_engine(proj, jnp.asarray(theta0), primal="shared")
    with jax.enable_x64(True):
        ref = np.asarray(jax.jacfwd(proj.train)(jnp.asarray(theta0, jnp.float64)))
    J = exact_jacobian(proj, theta0, dtype=np.float64, chunk_size=8, progress=False)
    np.testing.assert_allclose(J, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
