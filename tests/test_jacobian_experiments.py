"""Training-Jacobian experiments on a tiny recipe: properties that hold by construction."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_recipe
from trainmap.jacobian.exact import exact_jacobian
from trainmap.jacobian.experiments import (
    ExperimentError,
    choose_basis,
    data_label_dependence,
    jacobian_spectrum,
    jacobian_svd,
    kl_per_direction,
    linearized_explanation,
    noise_inputs,
    ood_effect,
    output_gram,
    overlap,
    parameter_change,
    perturbation_response,
    principal_cosines,
    random_orthonormal,
    random_overlap,
    restricted_final,
    restricted_training,
    seed_overlap,
    shuffled_labels,
)
from trainmap.jacobian.experiments._common import spectrum_from_jacobian
from trainmap.jacobian.experiments.perturbation import linear_range
from trainmap.jacobian.regions import svd
from trainmap.models import mlp
from trainmap.recipe import flat_params, make_recipe


@pytest.fixture(scope="module")
def run():
    """Tiny 5→4→3 MLP (P = 39), its θ₀, the full SVD of J and a small test set."""
    recipe, theta0 = tiny_recipe(n=48, epochs=3)
    dec = jacobian_svd(recipe, theta0, progress=False, chunk_size=recipe.num_params)
    rng = np.random.default_rng(1)
    test = (rng.normal(size=(20, 5)).astype(np.float32), rng.integers(0, 3, 20).astype(np.int32))
    return recipe, theta0, dec, test


def _dead_feature_recipe(seed: int = 0):
    """A 4→3→2 MLP whose first input feature is always 0 (a 'dead pixel')."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    x[:, 0] = 0.0
    y = rng.integers(0, 2, 32).astype(np.int32)
    model = mlp((4, 3, 2), activation="tanh")
    theta0, unravel = flat_params(model.init, seed)
    opt = optax.sgd(0.1, momentum=0.9)
    return make_recipe(model.apply, unravel, theta0.size, x, y, opt, batch_size=8, epochs=2), theta0


# ----------------------------------------------------------------------------- subspaces
def test_overlap_of_a_subspace_with_itself_is_one_and_with_its_complement_zero():
    Q = random_orthonormal(60, 60, seed=3, dtype=np.float64)
    A, B = Q[:, :25], Q[:, 25:]
    assert overlap(A, A) == pytest.approx(1.0, abs=1e-12)
    assert overlap(A, A[:, :7]) == pytest.approx(1.0, abs=1e-12)  # containment
    assert overlap(A, B) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(principal_cosines(A, A), 1.0, atol=1e-6)
    # mean cos² of the principal angles is the overlap
    R = random_orthonormal(60, 25, seed=4, dtype=np.float64)
    assert np.mean(principal_cosines(A, R) ** 2) == pytest.approx(overlap(A, R), rel=1e-6)


def test_random_subspace_overlap_matches_k_over_P():
    P, k = 200, 40
    vals = [overlap(random_orthonormal(P, k, 2 * s), random_orthonormal(P, k, 2 * s + 1)) for s in range(20)]
    assert random_overlap(k, k, P) == k / P
    assert np.mean(vals) == pytest.approx(k / P, abs=0.01)  # std of the mean ≈ 0.003


def test_random_orthonormal_is_orthonormal_and_seeded():
    Q = random_orthonormal(30, 10, seed=5, dtype=np.float64)
    np.testing.assert_allclose(Q.T @ Q, np.eye(10), atol=1e-12)
    np.testing.assert_array_equal(Q, random_orthonormal(30, 10, seed=5, dtype=np.float64))
    with pytest.raises(ValueError):
        random_orthonormal(5, 6, seed=0)


def test_spectrum_from_JtJ_agrees_with_the_svd(run):
    recipe, theta0, dec, _ = run
    J = (dec.U * dec.S) @ dec.Vt
    light = spectrum_from_jacobian(J.astype(np.float64))
    np.testing.assert_allclose(light.S, dec.S, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(light.codes, dec.codes)
    assert overlap(light.basis("bulk"), dec.basis("bulk")) == pytest.approx(1.0, abs=1e-4)


# ----------------------------------------------------------------------------- restricted
def test_restricted_training_with_identity_basis_equals_unrestricted():
    with jax.enable_x64(True):
        recipe, theta0 = tiny_recipe(n=24, epochs=2)
        th = jnp.asarray(theta0, jnp.float64)
        P = recipe.num_params
        full = jax.jit(recipe.train)(th)
        # B = I, and (SGD with momentum being rotation invariant) any orthonormal basis of R^P
        Bs = jnp.stack([jnp.eye(P, dtype=jnp.float64), jnp.asarray(random_orthonormal(P, P, 0, np.float64))])
        finals = np.asarray(jax.jit(jax.vmap(lambda B: restricted_final(recipe, th, B)))(Bs))
        full, th = np.asarray(full), np.asarray(th)
    assert finals.dtype == np.float64
    np.testing.assert_allclose(finals[0], full, rtol=0, atol=1e-12)
    np.testing.assert_allclose(finals[1], full, rtol=0, atol=1e-10)
    assert np.max(np.abs(full - th)) > 1e-3  # training did move


def test_restricted_training_experiment(run, tmp_path):
    recipe, theta0, dec, test = run
    P = recipe.num_params
    s = restricted_training(recipe, theta0, tmp_path / "r", dec=dec, eval_set=test, ks=[3, P],
                            progress=False)
    assert s["ks"] == [3, P]
    assert s["max_abs_gap_at_k_equal_P"] < 1e-4  # k = P: every choice is unrestricted training
    for c, v in s["choices"].items():
        assert len(v["test_loss"]) == 2
    assert np.load(tmp_path / "r" / "test_loss.npy").shape == (5, 2)
    assert (tmp_path / "r" / "restricted_loss.png").exists()
    # bases: bulk picks the smallest |σ−1|, top the largest σ
    B = choose_basis(dec, "bulk", 4)
    want = np.sort(np.argsort(np.abs(dec.S - 1))[:4])
    np.testing.assert_array_equal(B, dec.Vt[want].T)
    np.testing.assert_array_equal(choose_basis(dec, "top", 2), dec.Vt[:2].T)
    with pytest.raises(ValueError, match="unknown choice"):
        choose_basis(dec, "middle", 2)


# ----------------------------------------------------------------------------- KL / OOD
def test_kl_of_zero_perturbation_is_zero_and_positive_otherwise(run):
    recipe, theta0, dec, test = run
    probes = {"a": test[0], "b": test[0][:5] * 3}
    kl0 = kl_per_direction(recipe, theta0, dec.Vt[:6], probes, scale=0.0)
    assert kl0.shape == (6, 2)
    np.testing.assert_array_equal(kl0, 0.0)
    kl = kl_per_direction(recipe, theta0, dec.Vt[:6], probes, scale=1.0)
    assert np.all(kl > 0)
    # independent route for one direction and one set
    with jax.enable_x64(True):
        th = jnp.asarray(theta0, jnp.float64)
        x = jnp.asarray(test[0], jnp.float64)
        lp = jax.nn.log_softmax(recipe.apply(recipe.unravel(th), x))
        lq = jax.nn.log_softmax(recipe.apply(recipe.unravel(th + jnp.asarray(dec.Vt[2], jnp.float64)), x))
        want = float(jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)))
    assert kl[2, 0] == pytest.approx(want, rel=1e-9)


def test_ood_experiment_writes_medians_per_region(run, tmp_path):
    recipe, theta0, dec, test = run
    s = ood_effect(recipe, theta0, tmp_path / "o", dec=dec, x_test=test[0], progress=False)
    assert set(s["median_kl"]) == {"train", "test", "noise", "inverted"}
    kl = np.load(tmp_path / "o" / "kl.npy")
    assert kl.shape == (recipe.num_params, 4) and np.all(kl >= 0)
    assert isinstance(s["finding"]["holds"], bool)
    with pytest.raises(ValueError, match="x_test"):
        ood_effect(recipe, theta0, tmp_path / "o2", dec=dec, progress=False)


# ----------------------------------------------------------------------------- perturbation
def test_perturbation_response_matches_jvp_for_small_eps(run, tmp_path):
    recipe, theta0, dec, test = run
    s = perturbation_response(recipe, theta0, tmp_path / "p", dec=dec, eval_set=test,
                              eps=np.logspace(-5, 2, 8), progress=False)
    # at small ε the retrained change is ε J v_i = ε σ_i u_i: its u_i-component is ε σ_i and the rest ≈ 0
    proj, rest = np.load(tmp_path / "p" / "proj_u.npy"), np.load(tmp_path / "p" / "rest_norm.npy")
    sig = np.load(tmp_path / "p" / "sigma.npy")
    np.testing.assert_allclose(proj[:, 0] / 1e-5, sig, rtol=1e-3)
    assert np.all(rest[:, 0] / 1e-5 < 1e-3 * np.maximum(sig, 1e-2))
    for name, d in s["directions"].items():
        assert d["rel_error_at_min_eps"] < 1e-2, name
    err = np.load(tmp_path / "p" / "rel_error.npy")
    assert err.shape == (len(s["directions"]), 8)
    assert np.nanmax(err) > 0.1  # at ε = 100 training is far from linear
    assert (tmp_path / "p" / "response.png").exists()


def test_linear_range():
    eps = np.array([1.0, 2.0, 3.0, 4.0])
    assert linear_range(eps, np.array([0.01, 0.05, 0.2, 0.01]), 0.1) == (2.0, 3.0)
    assert linear_range(eps, np.array([0.5, 0.05, 0.2, 0.01]), 0.1) == (None, 1.0)
    assert linear_range(eps, np.array([0.0, 0.0, 0.0, np.nan]), 0.1) == (3.0, 4.0)
    assert linear_range(eps, np.zeros(4), 0.1) == (4.0, None)


# ----------------------------------------------------------------------------- change
def test_parameter_change_energies_sum_to_the_squared_change(run, tmp_path):
    recipe, theta0, dec, _ = run
    s = parameter_change(recipe, theta0, tmp_path / "c", dec=dec, progress=False)
    r = s["regions"]
    assert sum(v["energy_fraction"] for v in r.values()) == pytest.approx(1.0, abs=1e-5)
    assert sum(v["dimension_fraction"] for v in r.values()) == pytest.approx(1.0)
    coef = np.load(tmp_path / "c" / "coef.npy")
    assert np.linalg.norm(coef) == pytest.approx(s["change_norm"], rel=1e-5)
    # a second call refuses to overwrite; resume returns the finished summary
    with pytest.raises(FileExistsError, match="--overwrite"):
        parameter_change(recipe, theta0, tmp_path / "c", dec=dec, progress=False)
    again = parameter_change(recipe, theta0, tmp_path / "c", dec=dec, progress=False, resume=True)
    assert again["change_norm"] == pytest.approx(s["change_norm"])


# ----------------------------------------------------------------------------- linearised
def test_output_gram_is_FtF_and_a_dead_input_feature_is_null_and_bulk(tmp_path):
    recipe, theta0 = _dead_feature_recipe()
    with jax.enable_x64(True):
        th = jnp.asarray(theta0, jnp.float64)
        x = jnp.asarray(recipe.x[:6], jnp.float64)
        F = jax.jacfwd(lambda t: recipe.apply(recipe.unravel(t), x))(th)  # (6, 2, P)
        F = F - F.mean(axis=1, keepdims=True)
        F = np.asarray(F).reshape(-1, th.size)
    np.testing.assert_allclose(output_gram(recipe, theta0, recipe.x[:6], block=4), F.T @ F,
                               rtol=1e-9, atol=1e-12)
    # the 3 first-layer weights from the dead feature get no gradient: exactly null and σ = 1
    dec = svd(exact_jacobian(recipe, theta0, dtype=np.float64, progress=False))
    s = linearized_explanation(recipe, theta0, tmp_path / "l", dec=dec, n_inputs=None, n_points=2,
                               progress=False)
    assert s["trajectory"]["exact_null_dim"] >= 3
    assert s["k"] == int((dec.codes == 1).sum())
    positions = recipe.unravel(jnp.arange(recipe.num_params, dtype=jnp.float32))  # flat index per weight
    flat_w = np.asarray(positions[0]["w"][0]).astype(int)  # first layer, row of the dead feature
    dead = np.zeros((recipe.num_params, 3))
    dead[flat_w, np.arange(3)] = 1.0
    assert overlap(dec.basis("bulk"), dead) == pytest.approx(1.0, abs=1e-8)  # dead weights ⊂ bulk
    for name in ("gram_eigs_theta0.npy", "cosines_trajectory.npy", "null_bulk_cosines.png"):
        assert (tmp_path / "l" / name).exists()


# ----------------------------------------------------------------------------- dependence, seeds
def test_data_variants_keep_what_they_should():
    recipe, _ = tiny_recipe()
    sl = shuffled_labels(recipe, seed=1)
    np.testing.assert_array_equal(np.sort(sl.y), np.sort(recipe.y))
    np.testing.assert_array_equal(sl.x, recipe.x)
    assert not np.array_equal(sl.y, recipe.y)
    ni = noise_inputs(recipe, seed=1)
    assert ni.x.shape == np.shape(recipe.x) and np.array_equal(ni.y, recipe.y)
    assert abs(ni.x.mean() - np.mean(recipe.x)) < 0.2
    np.testing.assert_array_equal(ni.batches, recipe.batches)


def test_dependence_and_seed_overlap_with_cached_jacobians(run, tmp_path):
    recipe, theta0, dec, _ = run
    # comparing a run with itself: every overlap is exactly 1
    s = data_label_dependence(recipe, theta0, tmp_path / "d", dec=dec, variants={"same": recipe},
                              chunk_size=recipe.num_params, progress=False)
    assert s["overlaps"]["same"]["overlap"] == pytest.approx(1.0, abs=1e-3)
    assert (tmp_path / "d" / "jacobians" / "same" / "summary.json").exists()
    # a cached spectrum is reused, and refused for another θ₀
    again = jacobian_spectrum(recipe, theta0, tmp_path / "d" / "jacobians" / "same", progress=False)
    np.testing.assert_array_equal(again.S, np.load(tmp_path / "d" / "sigma_same.npy"))
    with pytest.raises(ExperimentError, match="different θ₀"):
        jacobian_spectrum(recipe, np.asarray(theta0) + 1, tmp_path / "d" / "jacobians" / "same")
    with pytest.raises(ExperimentError, match="other data"):
        jacobian_spectrum(shuffled_labels(recipe), theta0, tmp_path / "d" / "jacobians" / "same")

    def make(seed):
        return tiny_recipe(seed=seed, n=48, epochs=3)

    s = seed_overlap(make, [0, 1], tmp_path / "s", known={0: dec}, chunk_size=recipe.num_params,
                     progress=False)
    pair = s["pairs"]["0-1"]
    assert 0.0 <= pair["overlap"] <= 1.0 + 1e-6
    assert s["baseline"] == pytest.approx(s["k"] / recipe.num_params)
    assert len(np.load(tmp_path / "s" / "cosines_0-1.npy")) == s["k"]
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert "finding" in summary and "manifest.json" in {p.name for p in (tmp_path / "s").iterdir()}
    with pytest.raises(ValueError, match="two distinct seeds"):
        seed_overlap(make, [3, 3], tmp_path / "s2")
