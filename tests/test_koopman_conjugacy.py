"""The permutation conjugacy test: accepts a change of coordinates, rejects different maps,
matches a brute-force p-value, and the published shuffle test is shown degenerate."""

import itertools

import numpy as np
import pytest

from trainmap.koopman import conjugacy_test, matched_swap_test, per_run_eigenvalues, permutation_test

A = np.array([[0.9, 0, 0], [0, 0.6, 0.25], [0, -0.25, 0.6]])
B = np.array([[0.8, 0, 0], [0, 0.45, 0.35], [0, -0.35, 0.45]])
Q = np.array([[1, 0.3, 0], [0.2, 1, 0.1], [0, 0.4, 1.0]])


def _noisy_run(a, steps, rng, noise=0.02):
    x = rng.standard_normal(3)
    xs = [x]
    for _ in range(steps - 1):
        x = a @ x + noise * rng.standard_normal(3)
        xs.append(x)
    return np.array(xs)


def _change_of_coordinates(x):
    """A smooth nonlinear diffeomorphism of R³ (derivative of x + 0.3 tanh x is in [1, 1.3])."""
    return (x + 0.3 * np.tanh(x)) @ Q.T


def _spectra(runs):
    return per_run_eigenvalues(np.stack(runs), rank=3)


def test_accepts_a_system_and_its_smooth_change_of_coordinates():
    rng = np.random.default_rng(1)
    base = _spectra([_noisy_run(A, 60, rng) for _ in range(8)])
    changed = _spectra([_change_of_coordinates(_noisy_run(A, 60, rng)) for _ in range(8)])
    res = conjugacy_test(base, changed, n_permutations=1999, seed=0)
    assert not res.distinguishable
    assert res.p_value > 0.2
    assert "not distinguishable at alpha=0.05" in res.verdict


def test_rejects_two_different_linear_maps():
    rng = np.random.default_rng(1)
    a = _spectra([_noisy_run(A, 60, rng) for _ in range(8)])
    b = _spectra([_noisy_run(B, 60, rng) for _ in range(8)])
    res = conjugacy_test(a, b, n_permutations=1999, seed=0)
    assert res.distinguishable
    assert res.p_value == pytest.approx(1 / 2000)  # nothing in the null reaches the observed value
    assert res.between_mean > 2 * res.within_mean
    assert res.effect_size > 3


def test_exact_p_value_matches_brute_force_enumeration():
    rng = np.random.default_rng(5)
    pts = rng.standard_normal((7, 2))
    pts[:3] += 0.7
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    labels = ["a"] * 3 + ["b"] * 4
    res = permutation_test(d, labels, n_permutations=10_000)
    assert res.exact and res.n_permutations == 34  # C(7, 3) - 1

    def stat(group_a):
        lab = np.array([i in group_a for i in range(7)])
        iu = np.triu_indices(7, 1)
        same = lab[iu[0]] == lab[iu[1]]
        return d[iu][~same].mean() - d[iu][same].mean()

    observed = stat({0, 1, 2})
    stats = [stat(set(c)) for c in itertools.combinations(range(7), 3)]
    assert res.statistic == pytest.approx(observed)
    assert res.p_value == pytest.approx(np.mean(np.array(stats) >= observed - 1e-12))


def test_monte_carlo_is_seeded_and_ratio_statistic():
    rng = np.random.default_rng(6)
    spectra = [rng.standard_normal(3) + 1j * rng.standard_normal(3) for _ in range(16)]
    labels = ["x"] * 8 + ["y"] * 8
    r1 = permutation_test(spectra, labels, n_permutations=200, seed=3)
    r2 = permutation_test(spectra, labels, n_permutations=200, seed=3)
    assert not r1.exact and r1.p_value == r2.p_value
    assert r1.min_p_value == pytest.approx(1 / 201)
    rr = permutation_test(spectra, labels, n_permutations=200, seed=3, statistic="ratio")
    assert rr.statistic == pytest.approx(rr.between_mean / rr.within_mean)


def test_published_shuffle_test_can_never_exceed_the_observed_distance():
    rng = np.random.default_rng(7)
    for _ in range(5):
        a = rng.standard_normal(10) + 1j * rng.standard_normal(10)
        b = a + 2.0  # clearly different spectra
        out = matched_swap_test(a, b, n_shuffles=200, seed=0)
        assert out["max_excess"] <= 1e-12
        assert np.all(out["shuffled"] <= out["observed"] + 1e-12)


def test_bad_designs_are_explained():
    spectra = [np.array([0.5, 0.1])] * 3
    with pytest.raises(ValueError, match="at least 2 runs"):
        permutation_test(spectra, ["a", "a", "b"])
    with pytest.raises(ValueError, match="single condition"):
        permutation_test(spectra, ["a", "a", "a"])
    with pytest.raises(ValueError, match="labels for"):
        permutation_test(spectra, ["a", "b"])
