"""Linear-model theory: closed forms against simulated gradient descent, spectra, phases."""

from __future__ import annotations

import numpy as np
import pytest

from trainmap.ribbon.linear import (
    analytic_spectrum,
    closed_form_weights,
    crossover_scale,
    empirical_spectrum,
    exact_covariance_inputs,
    input_eigenvalues,
    kernel_closed_form,
    make_linear_problem,
    phase_diagram,
    plateau_decay,
    random_relu_features,
    simulate_feature_gd,
    simulate_gd,
    theory_covariance,
)


def test_closed_form_equals_simulated_gd_float64():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 12)) * np.exp(-0.3 * np.arange(12))
    w_star = rng.normal(size=12)
    w0 = rng.normal(size=(3, 12))
    cov = X.T @ X / 40
    lr = 0.9 / np.linalg.eigvalsh(cov).max()
    steps = np.array([0, 1, 2, 5, 17, 60, 150])
    sim = simulate_gd(X, X @ w_star, w0, lr, steps)
    closed = closed_form_weights(cov, w0, w_star, lr, steps)
    assert sim.dtype == np.float64
    np.testing.assert_allclose(closed, sim, atol=1e-10, rtol=0)
    # and the trajectory really moved (not a trivial pass)
    assert np.abs(sim[:, -1] - sim[:, 0]).max() > 0.1


def test_diagonal_closed_form_matches_exact_covariance_data():
    lam = input_eigenvalues(20, 0.2)
    X = exact_covariance_inputs(lam, 50, seed=1)
    np.testing.assert_allclose(X.T @ X / 50, np.diag(lam), atol=1e-14)
    prob = make_linear_problem(d=20, decay=0.2, scale=3.0, num_steps=30, runs=2, num_records=7)
    sim = simulate_gd(X, X @ prob.w_star, prob.w0, prob.lr, prob.steps)
    closed = closed_form_weights(prob.eigenvalues, prob.w0, prob.w_star, prob.lr, prob.steps)
    np.testing.assert_allclose(closed, sim, atol=1e-10, rtol=0)


def test_analytic_and_empirical_spectra_agree():
    prob = make_linear_problem(d=30, decay=0.25, scale=2.0, num_steps=80, runs=5, num_records=17, seed=3)
    a, ta = analytic_spectrum(prob, 5)
    e, te = empirical_spectrum(prob, 5, num_samples=60)
    np.testing.assert_allclose(e, a, rtol=1e-6)
    assert te == pytest.approx(ta, rel=1e-6)
    assert a[0] > a[4] > 0


def test_kernel_closed_form_equals_feature_gd():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(25, 4))
    Phi = random_relu_features(x, 40, seed=3)
    y = np.sin(x[:, 0])
    theta0 = 0.1 * rng.normal(size=(2, 40))
    K = Phi @ Phi.T
    lr = 1.0 / np.linalg.eigvalsh(K / 25).max()
    steps = np.array([0, 1, 3, 10, 40])
    sim = simulate_feature_gd(Phi, y, theta0, lr, steps)
    closed = kernel_closed_form(K, theta0 @ Phi.T, y, lr, steps)
    np.testing.assert_allclose(closed, sim, atol=1e-10, rtol=0)


def test_theory_covariance_limits():
    lam = input_eigenvalues(10, 0.5)
    steps = np.arange(0, 21)
    # no truth (r = 0): diagonal with the surviving init spread
    cov = theory_covariance(lam, 0.0, 0.5 / lam[0], steps)
    assert np.allclose(cov, np.diag(np.diag(cov)))
    rho = 1 - 0.5 * lam / lam[0]
    np.testing.assert_allclose(np.diag(cov), lam * np.mean(rho[None] ** (2 * steps[:, None]), 0) / 10)
    # the crossover scale balances the two traces
    rb = crossover_scale(lam, 0.5 / lam[0], steps)
    c0, c1 = theory_covariance(lam, 0.0, 0.5 / lam[0], steps), theory_covariance(lam, rb, 0.5 / lam[0], steps)
    assert np.trace(c1) == pytest.approx(2 * np.trace(c0), rel=1e-10)


def test_phase_diagram_small_grid():
    pd = phase_diagram([0.0, 3.0], [0.01, 100.0], [20], d=24, runs=6, num_records=11)
    assert pd.numeric.shape == (1, 2, 2)
    # isotropic inputs with a tiny truth: the init cloud is high-dimensional (no ribbon);
    # a large truth makes every ensemble follow one path (ribbon)
    assert pd.numeric[0, 0, 0] < 0.6 and pd.numeric[0, 0, 1] > 0.95
    assert pd.theory[0, 0, 0] < 0.6 and pd.theory[0, 1, 1] > 0.95
    assert 0 < plateau_decay(20, d=24, num_records=11) < 8
