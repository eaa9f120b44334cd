"""Prediction recorders: Recipe, arrays, PyTorch, Gaussian store; probe-set checks."""

from __future__ import annotations

import numpy as np
import pytest

from trainmap.record import (
    GaussianPredictionTrajectory,
    PredictionTrajectory,
    log_spaced_steps,
    predictions_from_arrays,
    record_recipe_predictions,
)
from trainmap.record.predictions import check_compatible, softmax


def test_recipe_predictions_match_an_eager_loop(tiny):
    import jax
    import optax
    from jax.flatten_util import ravel_pytree

    recipe, theta0 = tiny
    probe = np.asarray(recipe.x)[:7]
    steps = np.array([0, 2, 3, 6])
    traj = record_recipe_predictions(recipe, theta0, steps, probe, np.asarray(recipe.y)[:7])
    # independent route: an eager (unjitted) optax loop over the same batches
    params = recipe.unravel(theta0)
    state = recipe.optimizer.init(params)
    expected = {}
    for t in range(recipe.num_steps + 1):
        if t in steps:
            expected[t] = np.asarray(jax.nn.softmax(recipe.apply(params, probe), -1))
        if t == recipe.num_steps:
            break
        idx = np.asarray(recipe.batches)[t]
        grads = jax.grad(lambda p: recipe.loss(recipe.apply(p, recipe.x[idx]), recipe.y[idx]))(params)
        updates, state = recipe.optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert traj.shape == (1, 4, 7, 3)
    for j, t in enumerate(steps):
        np.testing.assert_allclose(traj.probs[0, j], expected[t], atol=2e-6)
    assert not np.allclose(expected[0], expected[6], atol=1e-3)  # training moved the predictions
    assert traj.meta["probe"] and traj.targets.shape == (7,)
    assert ravel_pytree(params)[0].shape == theta0.shape


def test_log_spaced_steps():
    s = log_spaced_steps(1000, 24)
    assert s[0] == 0 and s[-1] == 1000 and len(s) >= 21 and np.all(np.diff(s) > 0)
    assert np.all(np.diff(np.log(s[2:])) < 0.5)


def test_from_arrays_logits_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5, 4))
    traj = predictions_from_arrays(logits=logits, targets=rng.integers(0, 4, 5), probe=np.ones((5, 2)))
    np.testing.assert_allclose(traj.probs.sum(-1), 1.0, atol=1e-6)
    back = PredictionTrajectory.load(traj.save(tmp_path / "p.zarr"))
    np.testing.assert_array_equal(back.probs, traj.probs)
    with pytest.raises(ValueError, match="run 1.*sum to one"):
        predictions_from_arrays(np.concatenate([softmax(logits[:1]), softmax(logits[1:]) * 2]))
    bad = softmax(logits)
    bad[0, 1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="run 0.*NaN"):
        predictions_from_arrays(bad)


def test_mismatched_probe_sets_refused():
    rng = np.random.default_rng(1)
    p = softmax(rng.normal(size=(1, 2, 5, 3)))
    a = predictions_from_arrays(p, probe=np.zeros((5, 2)))
    b = predictions_from_arrays(p, probe=np.ones((5, 2)))
    with pytest.raises(ValueError, match="different probe set"):
        check_compatible([a, b])
    c = predictions_from_arrays(softmax(rng.normal(size=(1, 2, 6, 3))))
    with pytest.raises(ValueError, match="same probe set"):
        check_compatible([a, c])
    d = predictions_from_arrays(p, targets=[0, 1, 2, 0, 1])
    e = predictions_from_arrays(p, targets=[0, 1, 2, 0, 2])
    with pytest.raises(ValueError, match="different probe targets"):
        check_compatible([d, e])


def test_gaussian_store_roundtrip(tmp_path):
    g = GaussianPredictionTrajectory(np.arange(24.0).reshape(2, 3, 4), [0, 5, 9], variance=0.5)
    back = GaussianPredictionTrajectory.load(g.save(tmp_path / "g.zarr"))
    assert back.variance == 0.5 and back.points().shape == (6, 4, 1)
    with pytest.raises(ValueError, match="positive"):
        GaussianPredictionTrajectory(np.zeros((1, 2, 3)), [0, 1], variance=0.0)


def test_torch_recorder_matches_manual_softmax():
    torch = pytest.importorskip("torch", reason="the PyTorch recorder needs torch (installed in CI)")
    from trainmap.record import TorchPredictionRecorder

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(20, 4)
    y = torch.randint(0, 3, (20,))
    probe = x[:6]
    manual = {}
    with TorchPredictionRecorder(model, probe, steps=[0, 1, 3], optimizer=opt, targets=y[:6].numpy()) as rec:
        for step in range(1, 5):
            if step - 1 in (0, 1, 3):
                with torch.no_grad():
                    manual[step - 1] = torch.softmax(model(probe).double(), -1).numpy()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    traj = rec.to_trajectory()
    assert traj.shape == (1, 3, 6, 3) and list(traj.steps) == [0, 1, 3]
    for j, s in enumerate([0, 1, 3]):
        np.testing.assert_allclose(traj.probs[0, j], manual[s], atol=1e-6)
    assert model.training  # training mode restored
