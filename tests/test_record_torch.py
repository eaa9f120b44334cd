"""A PyTorch training loop recorded with TorchRecorder goes through `koopman compare`."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch recorder needs the optional extra trainmap[torch]")

from typer.testing import CliRunner  # noqa: E402

from trainmap.cli import app  # noqa: E402
from trainmap.record import stack_trajectories  # noqa: E402
from trainmap.record.torch import TorchRecorder  # noqa: E402


def _train(seed: int, lr: float, steps: int = 40):
    torch.manual_seed(seed)
    x = torch.randn(64, 5)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with TorchRecorder(model, every=1, layers=["2"], optimizer=opt, label=f"lr{lr}-s{seed}") as rec:
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return rec.to_trajectory(), model


def test_recorder_records_named_parameters_every_step():
    traj, model = _train(0, 0.5, steps=5)
    assert traj.shape == (1, 6, 4 * 2 + 2)
    np.testing.assert_array_equal(traj.steps, np.arange(6))
    assert list(traj.meta["layers"]) == ["2.weight", "2.bias"]
    last = np.concatenate([model[2].weight.detach().numpy().ravel(), model[2].bias.detach().numpy()])
    np.testing.assert_allclose(traj.features[0, -1], last, rtol=1e-6)
    with pytest.raises(ValueError, match="not in the model"):
        TorchRecorder(model, layers=["fc9"])


def test_recorder_every_k_and_manual_use():
    model = torch.nn.Linear(2, 1)
    rec = TorchRecorder(model, every=3)
    rec.record(0)
    for _ in range(7):
        rec.step()
    assert rec.to_trajectory().steps.tolist() == [0, 3, 6]


def test_torch_trajectories_through_koopman_compare(tmp_path):
    slow = stack_trajectories([_train(s, 0.05)[0] for s in range(3)])
    fast = stack_trajectories([_train(s, 0.8)[0] for s in range(3)])
    pa, pb = slow.save(tmp_path / "slow.zarr"), fast.save(tmp_path / "fast.zarr")
    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["koopman", "compare", str(pa), str(pb), "--out", str(out),
                                   "--layers", "2.weight", "--delays", "1", "--rank", "4"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs_a"] == 3 and summary["runs_b"] == 3
    assert summary["W1_pooled"] > 0
    assert summary["test"]["exact"] and 0 < summary["test"]["p_value"] <= 1
    assert (out / "report.html").exists() and (out / "spectra.png").exists()
    assert "distinguishable" in res.output


def test_one_vocabulary_for_which_steps_and_which_layers():
    from trainmap.record import PredictionTrajectory, TorchPredictionRecorder

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    probe = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TorchRecorder(model, steps=[0, 2, 5], layers=["2"], optimizer=opt) as w, \
            TorchPredictionRecorder(model, probe, every=2, optimizer=opt) as p:
        for _ in range(5):
            opt.zero_grad()
            model(torch.tensor(probe)).sum().backward()
            opt.step()
    assert w.to_trajectory().steps.tolist() == [0, 2, 5] and w.every is None
    assert p.to_trajectory().steps.tolist() == [0, 2, 4]
    with pytest.warns(DeprecationWarning, match="include= is now called layers="):
        old = TorchRecorder(model, include=["2"])
    assert old.names == ["2.weight", "2.bias"]
    with pytest.raises(ValueError, match="exactly one of steps"):
        TorchPredictionRecorder(model, probe, steps=[0], every=2)
    # prediction trajectories stack like weight trajectories, and refuse another probe set
    a = p.to_trajectory()
    both = stack_trajectories([a, a], labels=["x", "y"])
    assert isinstance(both, PredictionTrajectory) and both.shape == (2, 3, 4, 2) and both.labels == ["x", "y"]
    other = PredictionTrajectory(np.asarray(a.probs), a.steps, meta={"probe": "elsewhere"})
    with pytest.raises(ValueError, match="another probe set"):
        stack_trajectories([a, other])
