"""`trainmap analyze --recipe file.py:make`: one run of a model trainmap does not ship, through the
three lenses and the joint views, checked against the Jacobian lens's own folder."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from typer.testing import CliRunner

from trainmap.cli import app

runner = CliRunner()

USER_FILE = '''
import jax, jax.numpy as jnp, numpy as np, optax
from trainmap.data import load_digits
from trainmap.recipe import flat_params, make_recipe

def make(hidden=6):
    d = load_digits()
    def init(key):
        k1, k2 = jax.random.split(key)
        return {"w1": jax.random.normal(k1, (64, hidden)) / 8, "w2": jax.random.normal(k2, (hidden, 10)) / 4,
                "skip": jnp.zeros((64, 10))}
    def apply(p, x):   # a tanh layer with a linear skip connection
        return jnp.tanh(x @ p["w1"]) @ p["w2"] + x @ p["skip"]
    theta0, unravel = flat_params(init, 0)
    recipe = make_recipe(apply, unravel, theta0.size, d.x_train[:256], d.y_train[:256],
                         optax.sgd(0.1, momentum=0.9), batch_size=32, epochs=3, shuffle_seed=0)
    return recipe, theta0
'''


def test_analyze_a_user_recipe_through_three_lenses_and_the_joint_views(tmp_path):
    src = tmp_path / "my_net.py"
    src.write_text(USER_FILE)
    out = tmp_path / "an"
    res = runner.invoke(app, ["analyze", "--recipe", f"{src}:make", "--recipe-arg", "hidden=5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for lens in ("jacobian", "koopman", "ribbon"):
        assert json.loads((out / lens / "summary.json").read_text()), lens
        assert (out / lens / "report.html").exists()
    P = 64 * 5 + 5 * 10 + 64 * 10
    s = json.loads((out / "summary.json").read_text())
    assert s["num_params"] == P and s["num_steps"] == 24
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe_source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    energy = np.load(out / "region_energy.npy")
    np.testing.assert_allclose(energy[1:].sum(1), 1.0, rtol=1e-9)
    # independent route: the Jacobian lens's own Vᵀ(θ_T − θ₀) and regions (0 stable, 1 bulk, 2 chaotic)
    c = np.load(out / "jacobian" / "delta_proj.npy").astype(np.float64)
    codes = np.load(out / "jacobian" / "regions.npy")
    share = [np.sum(c[codes == k] ** 2) / np.sum(c ** 2) for k in (2, 1, 0)]
    np.testing.assert_allclose(energy[-1], share, rtol=1e-4, atol=1e-6)
    assert s["energy_share_at_T"]["bulk"] == energy[-1, 1]
    R = len(np.load(out / "recorded_steps.npy"))
    assert np.load(out / "perturbed_embedding.npy").shape[:2] == (4, R)
    view = json.loads((out / "perturbed_embedding.plotly.json").read_text())
    assert [t["name"] for t in view["data"]] == ["unperturbed", "chaotic", "bulk", "stable"]
    for r in ("chaotic", "bulk", "stable"):
        assert np.load(out / f"eigenvalues_{r}.npy").size >= 1
    assert set(s["perturbed_final_bhattacharyya"]) == {"chaotic", "bulk", "stable"}
    page = (out / "report.html").read_text()
    assert "jacobian/report.html" in page and "region_energy" in page


def test_analyze_refuses_a_jacobian_beyond_the_budget(tmp_path):
    res = runner.invoke(app, ["analyze", "--memory-gb", "0.01", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "--memory-gb" in res.output, res.output
    assert not (tmp_path / "x").exists()
