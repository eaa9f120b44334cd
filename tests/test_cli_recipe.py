"""`trainmap jacobian --recipe path.py:function`: the user's own run on the command line, recorded
so that it can be rerun, and one error line for everything that cannot work."""

from __future__ import annotations

import hashlib
import json

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from trainmap.cli import app

runner = CliRunner()

USER_FILE = '''
import numpy as np, optax
from trainmap.models import mlp
from trainmap.recipe import flat_params, make_recipe

def my_run(hidden=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=40).astype(np.int32)
    model = mlp((6, hidden, 3), activation="tanh")
    theta0, unravel = flat_params(model.init, seed)
    recipe = make_recipe(model.apply, unravel, theta0.size, x, y, optax.sgd(0.05, momentum=0.9),
                         batch_size=10, epochs=2, shuffle_seed=seed)
    return recipe, theta0

def not_a_run():
    return 3
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(USER_FILE)
    return path


def test_a_recipe_file_is_analysed_and_recorded(tmp_path, user_file):
    out = tmp_path / "run"
    res = runner.invoke(app, ["jacobian", "--recipe", f"{user_file}:my_run", "--recipe-arg", "hidden=3",
                              "--recipe-arg", "seed=2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    src = cfg["recipe_source"]
    assert src["sha256"] == hashlib.sha256(user_file.read_bytes()).hexdigest()
    assert (src["function"], src["args"]) == ("my_run", {"hidden": 3, "seed": 2})
    namespace: dict = {}
    exec(USER_FILE, namespace)
    recipe, theta0 = namespace["my_run"](hidden=3, seed=2)
    assert cfg["num_params"] == recipe.num_params == 6 * 3 + 3 + 3 * 3 + 3
    np.testing.assert_allclose(np.load(out / "jacobian.npy"), np.asarray(jax.jit(jax.jacfwd(recipe.train))(theta0)),
                               rtol=1e-5, atol=1e-6)
    assert (out / "report.html").exists()


def test_a_module_function_returning_a_setup_evaluates_on_its_test_set(tmp_path):
    out = tmp_path / "mod"
    res = runner.invoke(app, ["jacobian", "--recipe", "trainmap.presets:digits_mlp", "--recipe-arg", "hidden=2",
                              "--recipe-arg", "epochs=1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["metrics"]) == {"train", "test"} and summary["num_params"] == 64 * 2 + 2 + 2 * 10 + 10
    assert json.loads((out / "config.json").read_text())["recipe_source"]["module"] == "trainmap.presets"


@pytest.mark.parametrize("args, msg", [
    (["--recipe", "no_colon"], "path/to/file.py:function"),
    (["--recipe", "missing.py:f"], "no such file"),
    (["--recipe", "{file}:absent"], "no function 'absent'"),
    (["--recipe", "{file}:not_a_run"], "must return (recipe, theta0)"),
    (["--recipe", "{file}:my_run", "--recipe-arg", "width=3"], "does not fit my_run"),
    (["--recipe", "{file}:my_run", "--recipe-arg", "oops"], "name=value"),
    (["--recipe", "{file}:my_run", "--hidden", "3"], "--hidden sets up the digits MLP"),
    (["--recipe", "{file}:my_run", "seeds"], "not yet by `trainmap jacobian seeds`"),
])
def test_recipe_mistakes_are_one_error_line_and_write_nothing(tmp_path, user_file, args, msg):
    out = tmp_path / "never"
    args = [a.replace("{file}", str(user_file)) for a in args]
    if args[-1] == "seeds":
        args = [*args[:-1], "--out", str(out), "seeds"]
    else:
        args = [*args, "--out", str(out)]
    res = runner.invoke(app, ["jacobian", *args])
    assert res.exit_code == 2 and res.output.startswith("error: ") and msg in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_koopman_spectrum_and_ribbon_embed_take_a_jax_recipe(tmp_path):
    import json

    from test_cli_analyze import USER_FILE
    from trainmap.record import Trajectory

    (tmp_path / "my_net.py").write_text(USER_FILE)
    spec = f"{tmp_path / 'my_net.py'}:make"
    r = runner.invoke(app, ["koopman", "spectrum", "--recipe", spec, "--recipe-arg", "hidden=3", "--every", "4",
                            "--pca", "3", "--out", str(tmp_path / "k")])
    assert r.exit_code == 0, r.output
    t = Trajectory.load(tmp_path / "k" / "trajectory.zarr")
    assert t.shape == (1, 7, 64 * 3 + 3 * 10 + 64 * 10) and set(t.meta["layers"]) == {"skip", "w1", "w2"}
    r = runner.invoke(app, ["ribbon", "embed", "--recipe", spec, "--recipe-arg", "hidden=3", "--references",
                            "--components", "3", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["num_points"] == 24 + 1 + 2  # T // 50 -> every step of the 24, plus P0 and P*
