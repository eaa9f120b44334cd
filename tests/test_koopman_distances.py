"""W1 between spectra against brute force and a linear-programming route."""

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

from trainmap.koopman.distances import (
    distance_matrix,
    fold,
    optimal_matching,
    sorted_pairing_distance,
    wasserstein,
)


def _random_spectrum(rng, n):
    return rng.uniform(-1, 1, n) + 1j * rng.uniform(-1, 1, n)


def _brute_force(a, b):
    return min(np.mean(np.abs(a - b[list(p)])) for p in itertools.permutations(range(len(b))))


def _transport_lp(a, b, wa, wb):
    """W1 as a linear program over the (n, m) transport plan (independent of POT)."""
    n, m = len(a), len(b)
    cost = np.abs(a[:, None] - b[None, :]).ravel()
    rows = np.zeros((n + m, n * m))
    for i in range(n):
        rows[i, i * m:(i + 1) * m] = 1
    for j in range(m):
        rows[n + j, j::m] = 1
    res = linprog(cost, A_eq=rows, b_eq=np.concatenate([wa, wb]), bounds=(0, None), method="highs")
    return res.fun


def test_equal_sizes_match_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = _random_spectrum(rng, 6), _random_spectrum(rng, 6)
        assert wasserstein(a, b) == pytest.approx(_brute_force(a, b), abs=1e-12)


def test_unequal_sizes_and_weights_match_a_linear_program():
    rng = np.random.default_rng(1)
    a, b = _random_spectrum(rng, 4), _random_spectrum(rng, 7)
    wa, wb = rng.uniform(0.1, 1, 4), rng.uniform(0.1, 1, 7)
    got = wasserstein(a, b, wa, wb)
    assert got == pytest.approx(_transport_lp(a, b, wa / wa.sum(), wb / wb.sum()), abs=1e-9)
    uniform = wasserstein(a, b)
    assert uniform == pytest.approx(_transport_lp(a, b, np.full(4, 0.25), np.full(7, 1 / 7)), abs=1e-9)


def test_metric_properties_and_order_invariance():
    rng = np.random.default_rng(2)
    a, b, c = (_random_spectrum(rng, 5) for _ in range(3))
    assert wasserstein(a, a) == 0
    assert wasserstein(a, b) == pytest.approx(wasserstein(b, a))
    assert wasserstein(a, c) <= wasserstein(a, b) + wasserstein(b, c) + 1e-12
    assert wasserstein(a, b) == pytest.approx(wasserstein(a[::-1], rng.permutation(b)))


def test_sorted_pairing_overstates_the_distance():
    # same moduli, different angles: sorting by modulus pairs the wrong eigenvalues
    a = np.array([0.9, 0.9j, -0.9])
    b = np.array([-0.9, 0.9, 0.9j])
    assert wasserstein(a, b) == pytest.approx(0.0, abs=1e-15)
    rng = np.random.default_rng(3)
    for _ in range(5):
        x, y = _random_spectrum(rng, 6), _random_spectrum(rng, 6)
        assert sorted_pairing_distance(x, y) >= wasserstein(x, y) - 1e-12


def test_conjugate_pairs_and_folding():
    a = np.array([0.5 + 0.3j, 0.5 - 0.3j, 0.9])
    assert wasserstein(a, np.conj(a)) == pytest.approx(0.0, abs=1e-15)
    np.testing.assert_allclose(fold(a).imag, [0.3, 0.3, 0.0])
    # two truncations that each kept a different member of the same pair
    x = np.array([0.5 + 0.3j, 0.9])
    y = np.array([0.5 - 0.3j, 0.9])
    assert wasserstein(x, y) == pytest.approx(0.3)
    assert wasserstein(x, y, fold_conjugates=True) == pytest.approx(0.0, abs=1e-15)


def test_distance_matrix_and_matching():
    rng = np.random.default_rng(4)
    spectra = [_random_spectrum(rng, 4) for _ in range(3)] + [_random_spectrum(rng, 2)]
    d = distance_matrix(spectra)
    assert d.shape == (4, 4)
    np.testing.assert_allclose(d, d.T)
    assert np.all(np.diag(d) == 0)
    perm, w = optimal_matching(spectra[0], spectra[1])
    assert w == pytest.approx(np.mean(np.abs(spectra[0] - spectra[1][perm])))


def test_bad_spectra():
    with pytest.raises(ValueError, match="NaN/inf"):
        wasserstein(np.array([np.nan, 1.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="empty"):
        wasserstein(np.array([]), np.array([1.0]))
