"""Recorders: a Recipe run, plain arrays and a hand-written loop, through the zarr store."""

import jax
import numpy as np
import pytest

from conftest import tiny_recipe
from trainmap.record import ArrayRecorder, Trajectory, from_arrays, pytree_layout, record_recipe, stack_trajectories


def test_record_recipe_matches_recipe_run_and_selects_layers(tmp_path):
    recipe, theta0 = tiny_recipe()
    traj = record_recipe(recipe, [theta0, theta0 * 0.5], every=2, layers=["1"], labels=["a", "b"])
    ref = recipe.run(theta0, record_every=2)
    table = pytree_layout(recipe.unravel(theta0))
    # independent route: slice the full recorded parameters by the "1.*" entries of the table
    idx = np.concatenate([np.arange(v["start"], v["stop"]) for k, v in table.items() if k.startswith("1.")])
    np.testing.assert_allclose(traj.features[0], np.asarray(ref.params)[:, idx], rtol=1e-6)
    np.testing.assert_array_equal(traj.steps, ref.steps)
    assert list(traj.meta["layers"]) == ["1.b", "1.w"]
    assert traj.meta["layers"]["1.w"]["shape"] == [4, 3]
    path = traj.save(tmp_path / "t.zarr")
    back = Trajectory.load(path)
    np.testing.assert_array_equal(back.features, traj.features)
    assert back.labels == ["a", "b"] and back.meta["layers"] == traj.meta["layers"]


def test_record_all_parameters_by_default():
    recipe, theta0 = tiny_recipe(epochs=1)
    traj = record_recipe(recipe, theta0, every=1)
    assert traj.shape == (1, recipe.num_steps + 1, recipe.num_params)
    np.testing.assert_allclose(traj.features[0, 0], np.asarray(theta0))
    with pytest.raises(ValueError, match="available layers"):
        record_recipe(recipe, theta0, layers=["7"])


def test_pytree_layout_follows_ravel_order():
    params = {"b": np.zeros(2), "a": {"w": np.ones((2, 3))}}
    flat, _ = jax.flatten_util.ravel_pytree(params)
    table = pytree_layout(params)
    assert table == {"a.w": {"start": 0, "stop": 6, "shape": [2, 3]}, "b": {"start": 6, "stop": 8, "shape": [2]}}
    np.testing.assert_array_equal(np.asarray(flat)[:6], 1.0)


def test_array_recorder_in_a_numpy_loop():
    rec = ArrayRecorder(every=3, label="numpy")
    w = np.ones((2, 2))
    for step in range(10):
        if rec.due(step):
            rec.record(step, w=w, b=np.arange(2.0))
        w = 0.9 * w
    traj = rec.to_trajectory()
    assert traj.shape == (1, 4, 6)
    np.testing.assert_array_equal(traj.steps, [0, 3, 6, 9])
    np.testing.assert_allclose(traj.features[0, :, 0], 0.9 ** np.array([0, 3, 6, 9]), rtol=1e-6)
    with pytest.raises(ValueError, match="steps must increase"):
        rec.record(9, w=w, b=np.arange(2.0))
    with pytest.raises(ValueError, match="non-finite"):
        rec.record(12, w=w * np.nan, b=np.arange(2.0))


def test_from_arrays_and_stacking():
    rng = np.random.default_rng(0)
    t1 = from_arrays(rng.standard_normal((5, 3)), labels=["x"], layers={"a": (3,)})
    t2 = from_arrays([rng.standard_normal((5, 3)), rng.standard_normal((5, 3))], labels=["y", "z"])
    both = stack_trajectories([t1, t2])
    assert both.shape == (3, 5, 3) and both.labels == ["x", "y", "z"]
    with pytest.raises(ValueError, match="unequal lengths"):
        from_arrays([np.zeros((5, 3)), np.zeros((4, 3))])
    with pytest.raises(ValueError, match="layers describe 2 features"):
        from_arrays(np.zeros((5, 3)), layers={"a": (2,)})
    with pytest.raises(ValueError, match="differing"):
        stack_trajectories([t1, from_arrays(np.zeros((4, 3)))])
