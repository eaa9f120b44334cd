"""The experiments at reduced size, and the spectrum/compare commands on stored trajectories."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from trainmap.cli import app
from trainmap.koopman.experiments import cnn_early, grokking, mlp_width, omd_ogd


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_omd_ogd_reproduces_the_published_separation(tmp_path):
    s = omd_ogd.run(tmp_path, replicates=3, n_permutations=99, progress=False)
    assert s["ratio_W_OGD_BM_over_W_OMD_OGD"] > 20
    assert s["W_OMD_OGD"] < 0.05 and s["W_OGD_BM"] > 0.3
    assert s["test_OGD-BM"]["between_mean"] > 5 * s["test_OGD-BM"]["within_mean"]
    # the published swap test can never produce a shuffled distance above the observed one
    assert s["published_shuffle_test"]["OMD-OGD"]["max_shuffled_minus_observed"] <= 1e-12
    assert _summary(tmp_path)["reproduces_separation"] is True
    assert (tmp_path / "spectra.png").exists() and (tmp_path / "manifest.json").exists()


def test_omd_and_ogd_iterates_are_related_by_x_equals_exp_u():
    sims = omd_ogd.simulate(omd_ogd.grid_initial_conditions(2), eta=1e-3, steps=5)
    # conjugate to first order in eta: one step apart by O(eta^2)
    np.testing.assert_allclose(sims["OMD"], np.exp(sims["OGD"]), atol=1e-4)
    assert np.abs(sims["OMD"] - np.exp(sims["OGD"])).max() > 0


def test_mlp_width_small(tmp_path):
    s = mlp_width.run(tmp_path, widths=(5, 20), seeds=(0, 1, 2), steps=80, embed_dim=100, rank=4,
                      n_permutations=99, progress=False)
    assert s["delays"] == {"h=5": 1, "h=20": 0}
    test = s["h=5 vs h=20"]
    assert test["exact"] and test["min_p_value"] == pytest.approx(0.1)
    assert (tmp_path / "distance_matrix.npy").exists()


def test_mnist_npz_loader(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), y_train=rng.integers(0, 10, 30))
    data = mlp_width.load_mnist_npz(path)
    assert data.x_train.shape == (30, 784) and data.x_train.max() <= 1.0 and data.num_classes <= 10
    with pytest.raises(ValueError, match="lacks arrays"):
        np.savez(tmp_path / "bad.npz", images=np.zeros(3))
        mlp_width.load_mnist_npz(tmp_path / "bad.npz")


def test_cnn_early_small(tmp_path):
    s = cnn_early.run(tmp_path, seeds=(0, 1), steps=40, window=20, stride=10, pca=4, delays=2, rank=4,
                      n_permutations=9, progress=False)
    assert len(s["windows"]) == 3 and len(s["consecutive_W1"]) == 2
    heat = np.load(tmp_path / "window_distances.npy")
    assert heat.shape == (3, 3) and np.all(heat >= 0)
    assert (tmp_path / "window_heatmap.png").exists()


@pytest.mark.slow  # opt-in: `pytest -m slow` (keeps the default suite under its budget)
def test_grokking_small(tmp_path):
    s = grokking.run(tmp_path, p=11, seeds=(0, 1), steps=30, pca=4, delays=4, rank=4, d_model=16, n_heads=2,
                     d_mlp=32, long_p=None, n_permutations=9, progress=False)
    assert s["test"]["exact"] and "long_run" not in s
    early = np.load(tmp_path / "early_accuracy_non-grokking.npy")
    assert early.shape == (2, 31, 2)
    assert (tmp_path / "spectra.png").exists()


def test_grokking_is_delayed_generalisation():
    steps = np.array([100, 200, 300, 400])
    late = {"steps": steps, "train_acc": np.array([0.99, 1, 1, 1]), "test_acc": np.array([0.1, 0.3, 0.97, 1])}
    together = {"steps": steps, "train_acc": np.array([0.99, 1, 1, 1]), "test_acc": np.array([0.98, 1, 1, 1])}
    assert grokking._delay("g", late, 100) == {"g_train_acc_over_95pct_step": 100, "g_test_acc_over_95pct_step": 300,
                                                "g_generalisation_delay_steps": 200, "g_groks": True}
    assert grokking._delay("n", together, 100)["n_groks"] is False


def test_long_run_norm_constraint_holds_the_weight_norm():
    from trainmap.data import modular_addition

    out = grokking.long_run(modular_addition(7, 0.5), "non-grokking", max_steps=20, eval_every=10,
                            d_model=8, n_heads=2, d_mlp=16, progress=False)
    np.testing.assert_allclose(out["weight_norm"], out["weight_norm"][0], rtol=1e-5)
    assert out["steps"].tolist() == [10, 20]


def test_spectrum_and_compare_commands_on_stored_trajectories(tmp_path):
    from trainmap.record import from_arrays

    rng = np.random.default_rng(0)

    def runs(a, n):
        xs = np.zeros((n, 30, 3))
        for i in range(n):
            x = rng.standard_normal(3)
            for t in range(30):
                xs[i, t] = x
                x = a @ x + 0.01 * rng.standard_normal(3)
        return xs

    a = np.diag([0.9, 0.7, 0.5])
    pa = from_arrays(runs(a, 3), layers={"w": (3,)}).save(tmp_path / "a.zarr")
    pb = from_arrays(runs(0.8 * a, 3), layers={"w": (3,)}).save(tmp_path / "b.zarr")
    runner = CliRunner()
    res = runner.invoke(app, ["koopman", "spectrum", str(pa), "--out", str(tmp_path / "s"), "--rank", "3"])
    assert res.exit_code == 0, res.output
    eig = np.load(tmp_path / "s" / "eigenvalues.npy")
    np.testing.assert_allclose(np.sort(eig.real), [0.5, 0.7, 0.9], atol=0.05)
    res = runner.invoke(app, ["koopman", "compare", str(pa), str(pb), "--out", str(tmp_path / "c"),
                              "--projection", "3", "--rank", "3"])
    assert res.exit_code == 0, res.output
    s = _summary(tmp_path / "c")
    assert s["test"]["between_mean"] > s["test"]["within_mean"]
