"""The PyTorch TrainingMap backend: torch.optim mirrors, the same run in JAX and in PyTorch, the
engines through the protocol, DataLoader orders, and one-line errors."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs the optional extra trainmap[torch]")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from torch import nn  # noqa: E402

from trainmap.data import load_digits  # noqa: E402
from trainmap.jacobian import exact_jacobian  # noqa: E402
from trainmap.jacobian.matrix_free.operator import TrainingOperator  # noqa: E402
from trainmap.jacobian.regions import region_summary, svd  # noqa: E402
from trainmap.models import mlp  # noqa: E402
from trainmap.recipe import Recipe, make_recipe  # noqa: E402
from trainmap.torch import TorchFuncError, loader_batches, record_batches, torch_recipe  # noqa: E402

DIGITS = load_digits()
X = DIGITS.x_train[:320].astype(np.float32)
Y = DIGITS.y_train[:320].astype(np.int64)


def _mlp(seed: int = 0, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))


def _theta_T_of_torch_optim(model, opt, batches, sched=None, every=1):
    loss = nn.CrossEntropyLoss()
    x, y = torch.tensor(X), torch.tensor(Y)
    for t, idx in enumerate(batches):
        opt.zero_grad()
        loss(model(x[idx]), y[idx]).backward()
        opt.step()
        if sched is not None and (t + 1) % every == 0:
            sched.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


OPTIMIZERS = {
    "sgd-momentum-dampening": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1,
                                                         weight_decay=1e-3), None),
    "sgd-nesterov-cosine": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
                            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 20)),
    "adam": (lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3), None),
    "adam-amsgrad-step": (lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
                          lambda o: torch.optim.lr_scheduler.StepLR(o, 5, gamma=0.5)),
    "adamw-maximize-off": (lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), None),
    "rmsprop-centered-momentum": (lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True,
                                                                weight_decay=1e-4), None),
    "rmsprop-plain": (lambda p: torch.optim.RMSprop(p, lr=1e-3), None),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_functional_optimizer_equals_torch_optim(name):
    make_opt, make_sched = OPTIMIZERS[name]
    batches = np.random.default_rng(0).integers(0, len(X), (20, 32))
    model = _mlp()
    opt = make_opt(model.parameters())
    sched = make_sched(opt) if make_sched else None
    recipe, theta0 = torch_recipe(model, opt, nn.CrossEntropyLoss(), X, Y, batches, scheduler=sched)
    ours = recipe.train(theta0)
    ref = _theta_T_of_torch_optim(model, opt, batches, sched)
    assert np.max(np.abs(ours - ref)) <= 1e-6 * np.max(np.abs(ref))


def test_param_groups_and_a_per_epoch_scheduler():
    batches = np.random.default_rng(1).integers(0, len(X), (12, 16))
    model = _mlp()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.05},
                           {"params": model[2].parameters(), "lr": 0.2, "momentum": 0.5}], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5 ** e)
    recipe, theta0 = torch_recipe(model, opt, nn.CrossEntropyLoss(), X, Y, batches, scheduler=sched,
                                  scheduler_every=4)
    assert recipe.lrs.shape == (12, 2) and recipe.lrs[4, 1] == pytest.approx(0.1)
    assert opt.param_groups[1]["lr"] == 0.2  # the user's optimizer and scheduler are left as they were
    ours = recipe.train(theta0)
    ref = _theta_T_of_torch_optim(model, opt, batches, sched, every=4)
    assert np.max(np.abs(ours - ref)) <= 1e-6 * np.max(np.abs(ref))


# ---------------------------------------------------------------------------- the same run in JAX
def _jax_layout(model: nn.Module) -> np.ndarray:
    """The torch Linear stack's parameters in trainmap's JAX MLP layout ([{b, w: (in, out)}, ...])."""
    layers = [m for m in model if isinstance(m, nn.Linear)]
    tree = [{"b": jnp.asarray(m.bias.detach().numpy()), "w": jnp.asarray(m.weight.detach().numpy().T)}
            for m in layers]
    return np.asarray(ravel_pytree(tree)[0])


def _torch_to_jax_perm(model: nn.Module) -> np.ndarray:
    """perm such that theta_jax = theta_torch[perm]."""
    sizes = [p.numel() for p in model.parameters()]
    index = np.arange(sum(sizes), dtype=np.float32)
    chunks = np.split(index, np.cumsum(sizes)[:-1])
    tree, i = [], 0
    for m in model:
        if isinstance(m, nn.Linear):
            w = chunks[i].reshape(m.weight.shape).T
            tree.append({"b": jnp.asarray(chunks[i + 1]), "w": jnp.asarray(w)})
            i += 2
    return np.asarray(ravel_pytree(tree)[0]).astype(np.int64)


def _compare_jacobians(J_t, J_j, perm):
    J_t_in_jax = J_t[np.ix_(perm, perm)]
    rel = np.linalg.norm(J_t_in_jax - J_j) / np.linalg.norm(J_j)
    a, b = region_summary(svd(J_t_in_jax)), region_summary(svd(J_j))
    return rel, a, b


def test_the_same_mlp_run_in_jax_and_in_torch_sgd_momentum():
    model = _mlp(0, hidden=8)
    batches = np.random.default_rng(0).integers(0, len(X), (30, 32))
    recipe_t, th0_t = torch_recipe(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                   nn.CrossEntropyLoss(), X, Y, batches)
    net = mlp((64, 8, 10), activation="tanh")
    _, unravel = ravel_pytree(net.init(jax.random.key(0)))
    th0_j = _jax_layout(model)
    recipe_j = make_recipe(net.apply, unravel, th0_j.size, X, Y, optax.sgd(0.1, momentum=0.9),
                           batch_size=32, epochs=1).with_data(batches=batches)
    perm = _torch_to_jax_perm(model)
    np.testing.assert_array_equal(th0_t[perm], th0_j)
    thT_t, thT_j = recipe_t.train(th0_t)[perm], np.asarray(recipe_j.train(jnp.asarray(th0_j)))
    assert np.max(np.abs(thT_t - thT_j)) <= 1e-6 * np.max(np.abs(thT_j))
    J_t = exact_jacobian(recipe_t, th0_t, progress=False)
    J_j = exact_jacobian(recipe_j, th0_j, progress=False)
    rel, a, b = _compare_jacobians(J_t, J_j, perm)
    assert rel <= 1e-5
    assert [a[r]["count"] for r in ("chaotic", "bulk", "stable")] == [b[r]["count"] for r in ("chaotic", "bulk", "stable")]


class _TorchCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 6 * 6, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x.reshape(-1, 1, 8, 8)))
        return self.fc(h.reshape(h.shape[0], -1))


def _jax_cnn_apply(sizes, shapes):
    """The same CNN in JAX, on torch's flat layout (conv.weight OIHW, conv.bias, fc.weight, fc.bias)."""
    def apply(theta, x):
        cw, cb, fw, fb = [c.reshape(s) for c, s in zip(jnp.split(theta, np.cumsum(sizes)[:-1]), shapes)]
        h = jax.lax.conv_general_dilated(x.reshape(-1, 1, 8, 8), cw, (1, 1), "VALID",
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        h = jax.nn.relu(h + cb[None, :, None, None])
        return h.reshape(h.shape[0], -1) @ fw.T + fb
    return apply


def _cnn_pair(dtype):
    torch.manual_seed(3)
    model = _TorchCNN().to(dtype)
    batches = np.random.default_rng(2).integers(0, len(X), (10, 32))
    recipe_t, th0 = torch_recipe(model, torch.optim.Adam(model.parameters(), lr=3e-3),
                                 nn.CrossEntropyLoss(), torch.tensor(X, dtype=dtype), Y, batches)
    sizes = [p.numel() for p in model.parameters()]
    shapes = [tuple(p.shape) for p in model.parameters()]
    # eps_root: √v's derivative at v = 0 (dead pixels); 1e-30 changes no float32 value
    recipe_j = Recipe(_jax_cnn_apply(sizes, shapes), lambda o, y: optax.softmax_cross_entropy_with_integer_labels(
        o, y).mean(), optax.adam(3e-3, eps_root=1e-30), X.astype(th0.dtype), Y, batches, lambda t: t,
        int(sum(sizes)))
    return recipe_t, recipe_j, th0


def test_the_same_cnn_run_in_jax_and_in_torch_adam():
    from trainmap.jacobian.precision import precision_context

    recipe_t, recipe_j, th0 = _cnn_pair(torch.float64)
    with precision_context(np.float64):
        thT_j = np.asarray(recipe_j.train(jnp.asarray(th0)))
    assert np.linalg.norm(recipe_t.train(th0) - thT_j) <= 1e-12 * np.linalg.norm(thT_j)  # the same arithmetic
    J64_t = exact_jacobian(recipe_t, th0, dtype=np.float64, progress=False)
    J64_j = exact_jacobian(recipe_j, th0, dtype=np.float64, progress=False)
    assert np.linalg.norm(J64_t - J64_j) <= 1e-10 * np.linalg.norm(J64_j)
    recipe_t, recipe_j, th0 = _cnn_pair(torch.float32)
    thT_t, thT_j = recipe_t.train(th0), np.asarray(recipe_j.train(jnp.asarray(th0)))
    # in float32 optax and torch round Adam's update differently, and the division by √v + eps
    # magnifies that where v is small: 1e-5 in norm; the float32 J of the torch run is compared with
    # the float64 J (of the JAX run, equal to the torch run's to 1e-10 above)
    assert np.linalg.norm(thT_t - thT_j) <= 1e-5 * np.linalg.norm(thT_j)
    J_t = exact_jacobian(recipe_t, th0, progress=False)
    rel, a, b = _compare_jacobians(J_t, J64_j, np.arange(th0.size))
    assert rel <= 1e-5
    assert [a[r]["count"] for r in ("chaotic", "bulk", "stable")] == [b[r]["count"] for r in ("chaotic", "bulk", "stable")]


# ---------------------------------------------------------------------------- the engines
def _small(opt=lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9), dtype=torch.float32, model=None):
    model = _mlp(1, hidden=4) if model is None else model
    model = model.to(dtype)
    batches = np.random.default_rng(4).integers(0, len(X), (12, 16))
    x = torch.tensor(X, dtype=dtype)
    return torch_recipe(model, opt(model.parameters()), nn.CrossEntropyLoss(), x, Y, batches)


def test_products_against_float64_finite_differences_and_each_other():
    recipe, th0 = _small(dtype=torch.float64, opt=lambda p: torch.optim.Adam(p, lr=1e-2))
    rng = np.random.default_rng(0)
    V, W = rng.standard_normal((2, recipe.num_params)), rng.standard_normal((3, recipe.num_params))
    JV = recipe.jvp(th0, V)
    eps = 1e-6
    fd = (recipe.train(th0 + eps * V[0]) - recipe.train(th0 - eps * V[0])) / (2 * eps)
    assert np.max(np.abs(fd - JV[0])) <= 1e-6 * np.max(np.abs(fd))
    for segment in (None, 0, 5):  # rematerialised segments change nothing
        JtW = recipe.vjp(th0, W, segment=segment)
        np.testing.assert_allclose(W @ JV.T, JtW @ V.T, rtol=1e-10)
    J = exact_jacobian(recipe, th0, dtype=np.float64, chunk_size=7, progress=False)
    np.testing.assert_allclose(J @ V.T, JV.T, rtol=1e-10, atol=1e-12)


def test_matrix_free_operator_and_checkpointed_exact_jacobian(tmp_path):
    recipe, th0 = _small()
    op = TrainingOperator(recipe, th0)
    J = exact_jacobian(recipe, th0, progress=False)
    V = np.random.default_rng(5).standard_normal((4, recipe.num_params)).astype(np.float32)
    JtJV, JV = op.gram(V)
    np.testing.assert_allclose(JV, V @ J.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(JtJV, JV @ J, rtol=1e-4, atol=1e-4)
    ckpt = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        exact_jacobian(recipe, th0, chunk_size=100, checkpoint_dir=ckpt, stop_after=2, progress=False)
    J2 = exact_jacobian(recipe, th0, chunk_size=100, checkpoint_dir=ckpt, resume=True, progress=False)
    np.testing.assert_array_equal(J2, exact_jacobian(recipe, th0, chunk_size=100, progress=False))


def test_analyze_writes_a_results_folder_for_a_torch_run(tmp_path):
    from trainmap.jacobian import analyze

    recipe, th0 = _small()
    summary = analyze(recipe, th0, tmp_path / "run", progress=False)
    assert sum(summary[r]["count"] for r in ("chaotic", "bulk", "stable")) == recipe.num_params
    assert summary["engine"]["primal"] == "per_chunk"
    import json

    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["backend"] == "torch" and cfg["optimizer"]["name"] == "SGD"
    assert cfg["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_batchnorm_buffers_follow_torch_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 10))
    batches = np.random.default_rng(6).integers(0, len(X), (10, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    recipe, th0 = torch_recipe(model, opt, nn.CrossEntropyLoss(), X, Y, batches)
    rec = recipe.run(th0, record_every=5, probe=X[:7])
    ref = _theta_T_of_torch_optim(model, opt, batches)
    assert np.max(np.abs(rec.theta_T - ref)) <= 1e-6 * np.max(np.abs(ref))
    assert rec.steps.tolist() == [0, 5, 10] and rec.params.shape == (3, recipe.num_params)
    assert rec.probe_outputs.shape == (3, 7, 10)
    np.testing.assert_allclose(rec.observed["buffers"]["1.running_mean"][-1], model[1].running_mean.numpy(),
                               rtol=1e-5)
    np.testing.assert_array_equal(rec.theta_T, recipe.train(th0))
    np.testing.assert_array_equal(rec.params[-1], rec.theta_T)


# ---------------------------------------------------------------------------- data order
class _Indexed(torch.utils.data.Dataset):
    def __len__(self):
        return 50

    def __getitem__(self, i):
        return torch.tensor(float(i)), i


def test_dataloader_order_is_the_one_the_loop_sees():
    loader = torch.utils.data.DataLoader(_Indexed(), batch_size=8, shuffle=True, drop_last=True)
    torch.manual_seed(7)
    replayed = loader_batches(loader, epochs=3)
    seen = []
    with record_batches(loader) as order:
        for _ in range(3):
            for _, idx in loader:
                seen.append(idx.numpy())
    np.testing.assert_array_equal(replayed, np.stack(seen))
    np.testing.assert_array_equal(order.batches, np.stack(seen))
    assert replayed.shape == (18, 8)
    partial = torch.utils.data.DataLoader(_Indexed(), batch_size=8)
    with pytest.raises(ValueError, match="drop_last=True"):
        loader_batches(partial, epochs=1)


# ---------------------------------------------------------------------------- one-line errors
class _InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += self.fc.weight.sum()  # mutates a buffer with a value that carries tangents
        return self.fc(x)


def test_errors_are_one_clear_line():
    batches = np.zeros((2, 4), np.int64)
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.1)  # noqa: E731
    with pytest.raises(TorchFuncError, match="in-place"):
        m = _InPlace()
        torch_recipe(m, sgd(m), nn.CrossEntropyLoss(), X, Y, batches)
    m = nn.Sequential(nn.Linear(64, 8), nn.Dropout(0.5), nn.Linear(8, 10))
    with pytest.raises(ValueError, match="Dropout.*training mode"):
        torch_recipe(m, sgd(m), nn.CrossEntropyLoss(), X, Y, batches)
    m = _mlp()
    with pytest.raises(ValueError, match="not supported; use one of torch.optim.SGD"):
        torch_recipe(m, torch.optim.Adagrad(m.parameters()), nn.CrossEntropyLoss(), X, Y, batches)
    with pytest.raises(ValueError, match="x is torch.float64 but the model's parameters are torch.float32"):
        torch_recipe(m, sgd(m), nn.CrossEntropyLoss(), torch.tensor(X, dtype=torch.float64), Y, batches)
    with pytest.raises(ValueError, match="x is on meta but the model is on cpu"):
        torch_recipe(m, sgd(m), nn.CrossEntropyLoss(), torch.empty((320, 64), device="meta"), Y, batches)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)  # a momentum buffer is state
    nn.CrossEntropyLoss()(m(torch.tensor(X[:4])), torch.tensor(Y[:4])).backward()
    opt.step()
    with pytest.raises(ValueError, match="freshly built optimizer"):
        torch_recipe(m, opt, nn.CrossEntropyLoss(), X, Y, batches)
    with pytest.raises(ValueError, match="batch indices must lie in"):
        torch_recipe(m, sgd(m), nn.CrossEntropyLoss(), X, Y, batches + 1000)


RECIPE_FILE = '''
import numpy as np, torch
from torch import nn
from trainmap.data import load_digits
from trainmap.torch import torch_recipe


def run(hidden=4):
    d = load_digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))
    batches = np.random.default_rng(0).integers(0, 200, (10, 20))
    return torch_recipe(model, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9), nn.CrossEntropyLoss(),
                        d.x_train[:200], d.y_train[:200].astype(np.int64), batches)
'''


def test_cli_recipe_runs_a_torch_run_exactly_and_matrix_free(tmp_path):
    import json

    from typer.testing import CliRunner

    from trainmap.cli import app

    (tmp_path / "my_torch_run.py").write_text(RECIPE_FILE)
    spec = f"{tmp_path / 'my_torch_run.py'}:run"
    res = CliRunner().invoke(app, ["jacobian", "--recipe", spec, "--recipe-arg", "hidden=3", "--out",
                                   str(tmp_path / "exact")])
    assert res.exit_code == 0, res.output
    exact = json.loads((tmp_path / "exact" / "summary.json").read_text())
    assert exact["num_params"] == 64 * 3 + 3 + 3 * 10 + 10
    res = CliRunner().invoke(app, ["jacobian", "--recipe", spec, "--recipe-arg", "hidden=3", "--method", "lanczos",
                                   "--rank", "3", "--probes", "4", "--lanczos-steps", "30", "--out",
                                   str(tmp_path / "mf")])
    assert res.exit_code == 0, res.output
    mf = json.loads((tmp_path / "mf" / "summary.json").read_text())
    top = np.asarray(mf["top"]["sigma"][:3]) if "top" in mf else None
    S = np.load(tmp_path / "exact" / "singular_values.npy")
    assert top is not None and np.allclose(top, S[:3], rtol=1e-3), (top, S[:3])


def test_experiments_take_a_torch_run_where_they_apply_and_refuse_the_rest(tmp_path):
    from trainmap.jacobian.experiments import ood_effect, parameter_change, perturbation_response

    recipe, th0 = _small()
    s = parameter_change(recipe, th0, tmp_path / "change", progress=False)
    shares = [v["energy_fraction"] for v in s["regions"].values() if v["energy_fraction"] is not None]
    assert abs(sum(shares) - 1) < 1e-5
    np.testing.assert_allclose(s["change_norm"], np.linalg.norm(recipe.train(th0) - th0), rtol=1e-6)
    p = perturbation_response(recipe, th0, tmp_path / "perturb", progress=False)
    assert p["num_eps"] == 31 and p["finding"]["holds"] in (True, False)  # ran on the torch run's J and θ_T
    with pytest.raises(ValueError, match="ood_effect needs a JAX recipe"):
        ood_effect(recipe, th0, tmp_path / "ood")


def test_device_option_moves_the_recipe_not_the_model():
    model = _mlp(2, hidden=4)
    batches = np.random.default_rng(8).integers(0, len(X), (5, 16))
    opt = lambda: torch.optim.SGD(model.parameters(), lr=0.1)  # noqa: E731
    here, th0 = torch_recipe(model, opt(), nn.CrossEntropyLoss(), X, Y, batches)
    auto, th0b = torch_recipe(model, opt(), nn.CrossEntropyLoss(), X, Y, batches, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert auto.device.type == expected and auto.config["device"].startswith(expected)
    np.testing.assert_allclose(auto.train(th0b), here.train(th0), rtol=1e-5, atol=1e-6)


def test_trainmap_analyze_reads_a_torch_run_through_all_three_lenses(tmp_path):
    import json

    from typer.testing import CliRunner

    from trainmap.cli import app

    (tmp_path / "my_torch_run.py").write_text(RECIPE_FILE)
    res = CliRunner().invoke(app, ["analyze", "--recipe", f"{tmp_path / 'my_torch_run.py'}:run", "--every", "2",
                                   "--out", str(tmp_path / "joint")])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "joint" / "summary.json").read_text())
    assert s["num_params"] == 64 * 4 + 4 + 4 * 10 + 10 and s["recorded_steps"] == 6
    assert abs(sum(s["energy_share_at_T"].values()) - 1) < 1e-6
    for sub in ("jacobian", "koopman", "ribbon"):
        assert (tmp_path / "joint" / sub / "summary.json").exists()
    assert (tmp_path / "joint" / "report.html").exists()


def test_koopman_and_ribbon_commands_take_a_recipe(tmp_path):
    import json

    from typer.testing import CliRunner

    from trainmap.cli import app
    from trainmap.record import PredictionTrajectory, Trajectory

    (tmp_path / "my_torch_run.py").write_text(RECIPE_FILE)
    spec = f"{tmp_path / 'my_torch_run.py'}:run"
    r = CliRunner().invoke(app, ["koopman", "spectrum", "--recipe", spec, "--every", "1", "--pca", "3",
                                 "--out", str(tmp_path / "k")])
    assert r.exit_code == 0, r.output
    t = Trajectory.load(tmp_path / "k" / "trajectory.zarr")
    assert t.shape == (1, 11, 64 * 4 + 4 + 4 * 10 + 10) and list(t.meta["layers"])[0] == "0.weight"
    cfg = json.loads((tmp_path / "k" / "config.json").read_text())
    assert cfg["recipe_source"]["function"] == "run" and cfg["every"] == 1
    r = CliRunner().invoke(app, ["ribbon", "embed", "--recipe", spec, "--every", "2", "--probe-size", "50",
                                 "--components", "3", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    p = PredictionTrajectory.load(tmp_path / "r" / "predictions.zarr")
    assert p.shape == (1, 6, 50, 10)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["num_points"] == 6
    r = CliRunner().invoke(app, ["ribbon", "embed", "--out", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "give prediction-trajectory stores or --recipe" in r.output


class _TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.out = nn.Linear(8, 3)

    def forward(self, tokens):  # tokens: (B, 2) integer ids
        return self.out(self.emb(tokens).reshape(tokens.shape[0], -1))


def test_integer_inputs_float_targets_and_float64_arrays():
    torch.manual_seed(5)
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 7, (40, 2))          # int64 NumPy: kept as integers (an embedding's ids)
    targets = rng.standard_normal((40, 3))       # float64 NumPy: cast to the model's float dtype
    model = _TokenModel()
    batches = rng.integers(0, 40, (8, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    recipe, th0 = torch_recipe(model, opt, nn.functional.mse_loss, tokens, targets, batches)
    ours = recipe.train(th0)
    for idx in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(torch.tensor(tokens[idx])), torch.tensor(targets[idx], dtype=torch.float32)).backward()
        opt.step()
    ref = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    assert np.max(np.abs(ours - ref)) <= 1e-6 * np.max(np.abs(ref))
    assert recipe.predict(ours, tokens[:5]).shape == (5, 3)
    rec = recipe.run(th0, record_every=4, probe=tokens[:6])
    assert rec.probe_outputs.shape == (3, 6, 3)
    # a float64 model takes float64 arrays as they are
    m64 = _TokenModel().double()
    r64, t64 = torch_recipe(m64, torch.optim.SGD(m64.parameters(), lr=0.1), nn.functional.mse_loss, tokens,
                            targets, batches)
    assert t64.dtype == np.float64 and r64.train(t64).dtype == np.float64
    # float targets reach the loss with a zero tangent (F.mse_loss's backward needs one): J is right
    v = rng.standard_normal(r64.num_params)
    fd = (r64.train(t64 + 1e-6 * v) - r64.train(t64 - 1e-6 * v)) / 2e-6
    assert np.max(np.abs(r64.jvp(t64, v[None])[0] - fd)) <= 1e-6 * np.max(np.abs(fd))
    W = rng.standard_normal((2, r64.num_params))
    np.testing.assert_allclose(W @ r64.jvp(t64, v[None])[0], r64.vjp(t64, W) @ v, rtol=1e-10)
