"""Bhattacharyya distances, InPCA and measures against independent routes."""

from __future__ import annotations

import numpy as np
import pytest

from trainmap.ribbon import (
    InPCA,
    bhattacharyya,
    bhattacharyya_matrix,
    decay_fit,
    explained_stress,
    gaussian_bhattacharyya_matrix,
    geodesic_points,
    geodesic_progress,
    onehot_prediction,
    uniform_prediction,
    widths,
)


def random_probs(rng, shape, sharp=1.0):
    logits = sharp * rng.normal(size=shape)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def loop_distance(p, q):
    """Direct double loop over samples and classes (no vectorisation)."""
    total = 0.0
    for n in range(p.shape[0]):
        s = 0.0
        for c in range(p.shape[1]):
            s += np.sqrt(p[n, c] * q[n, c])
        total += -np.log(s)
    return total / p.shape[0]


def test_bhattacharyya_zero_symmetric_and_matches_loop():
    rng = np.random.default_rng(0)
    P = random_probs(rng, (13, 17, 4), sharp=2.0)
    D = bhattacharyya_matrix(P, block=5, dtype=np.float64)
    assert np.all(np.diag(D) == 0.0)
    assert np.array_equal(D, D.T)
    assert np.all(D[~np.eye(13, dtype=bool)] > 0)
    ref = np.array([[loop_distance(P[i], P[j]) for j in range(13)] for i in range(13)])
    np.testing.assert_allclose(D, ref, atol=1e-13, rtol=1e-11)
    # float32 products with float64 sums stay close; identical predictions give exactly 0
    D32 = bhattacharyya_matrix(P, block=4)
    np.testing.assert_allclose(D32, ref, atol=2e-7)
    assert bhattacharyya(P[3], P[3]) == pytest.approx(0.0, abs=1e-15)


def test_cross_matrix_and_direct_form_agree():
    rng = np.random.default_rng(1)
    A, B = random_probs(rng, (6, 9, 3)), random_probs(rng, (4, 9, 3))
    D = bhattacharyya_matrix(A, B, block=3, dtype=np.float64)
    np.testing.assert_allclose(D, bhattacharyya(A[:, None], B[None]), atol=1e-14)


def test_disjoint_supports_are_finite():
    p = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    D = bhattacharyya_matrix(p, dtype=np.float64)
    # clipping at 1e-12 bounds the overlap below by 2e-6
    assert np.isfinite(D).all() and D[0, 1] == pytest.approx(-np.log(2e-6), rel=1e-6)


@pytest.mark.parametrize("bad, match", [
    (lambda P: P * 1.1, "sum to one"),
    (lambda P: np.where(np.arange(P.size).reshape(P.shape) == 7, np.nan, P), "NaN"),
    (lambda P: P - 0.5, "negative"),
])
def test_bad_probabilities_raise(bad, match):
    P = random_probs(np.random.default_rng(2), (5, 6, 3))
    with pytest.raises(ValueError, match=match):
        bhattacharyya_matrix(bad(P))
    with pytest.raises(ValueError, match=match):
        InPCA(2).fit(bad(P))


def test_mismatched_probe_sets_raise():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="same probe set"):
        bhattacharyya_matrix(random_probs(rng, (3, 5, 3)), random_probs(rng, (3, 6, 3)))
    model = InPCA(2).fit(random_probs(rng, (6, 5, 3)))
    with pytest.raises(ValueError, match="same probe set"):
        model.transform(random_probs(rng, (2, 7, 3)))


def test_gaussian_closed_form():
    rng = np.random.default_rng(4)
    mu = rng.normal(size=(5, 8, 2))
    D = gaussian_bhattacharyya_matrix(mu, variance=0.3)
    ref = np.array([[np.sum((a - b) ** 2) / (8 * 0.3 * 8) for b in mu] for a in mu])
    np.testing.assert_allclose(D, ref, atol=1e-13)
    # unequal variances: compare with the per-sample textbook formula
    v = np.array([0.5, 1.0, 2.0, 0.7, 1.3])
    Dv = gaussian_bhattacharyya_matrix(mu, variance=v)
    i, j = 1, 3
    per = 0.25 * (mu[i] - mu[j]) ** 2 / (v[i] + v[j]) + 0.5 * np.log((v[i] + v[j]) / (2 * np.sqrt(v[i] * v[j])))
    assert Dv[i, j] == pytest.approx(per.sum() / 8, rel=1e-12)


def test_inpca_recovers_euclidean_points():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(30, 3)) * np.array([3.0, 1.5, 0.5])
    D = np.sum((X[:, None] - X[None]) ** 2, -1)
    model = InPCA(n_components=30, solver="dense").fit_distances(D)
    lam = model.eigenvalues_
    assert lam[:3].min() > 0
    assert np.all(lam[3:] > -1e-9 * lam[0])          # no negative eigenvalues
    Y = model.embedding_[:, :3]
    # recovered up to rotation: same Gram matrix of the centred points, Procrustes residual ~0
    Xc = X - X.mean(0)
    np.testing.assert_allclose(Y @ Y.T, Xc @ Xc.T, atol=1e-9)
    U, _, Vt = np.linalg.svd(Y.T @ Xc)
    np.testing.assert_allclose(Y @ (U @ Vt), Xc, atol=1e-9)
    np.testing.assert_allclose(model.explained_stress_[2], 1.0, atol=1e-12)


def test_inpca_reports_negative_eigenvalues_and_minkowski():
    # four points: D violates the triangle inequality in squared form -> non-Euclidean
    D = np.array([[0, 1, 1, 5], [1, 0, 5, 1], [1, 5, 0, 1], [5, 1, 1, 0]], dtype=float)
    model = InPCA(n_components=4, solver="dense").fit_distances(D)
    neg = model.eigenvalues_ < -1e-9
    assert neg.any(), "the time-like direction must be reported"
    assert np.all(model.signature_[neg] == -1)
    np.testing.assert_allclose(model.minkowski_distances(), D, atol=1e-12)
    # direct check of the eigenvalues: W = -1/2 C D C
    C = np.eye(4) - 1 / 4
    ref = np.linalg.eigvalsh(-0.5 * C @ D @ C)
    np.testing.assert_allclose(np.sort(model.eigenvalues_), np.sort(ref), atol=1e-12)


def test_partial_solver_and_transform_match_dense():
    rng = np.random.default_rng(6)
    P = random_probs(rng, (80, 12, 4), sharp=1.5)
    dense = InPCA(4, solver="dense", dtype=np.float64, block=32).fit(P)
    part = InPCA(4, solver="partial", dtype=np.float64, block=32).fit(P)
    np.testing.assert_allclose(part.eigenvalues_, dense.eigenvalues_, rtol=1e-9)
    np.testing.assert_allclose(np.abs(part.embedding_), np.abs(dense.embedding_), atol=1e-8)
    np.testing.assert_allclose(dense.transform(P[:10]), dense.embedding_[:10], atol=1e-10)
    full = InPCA(80, solver="dense", dtype=np.float64).fit(P)
    assert full.total_stress_ == pytest.approx(np.sum(full.eigenvalues_**2), rel=1e-10)
    np.testing.assert_allclose(full.explained_stress_[:4], dense.explained_stress_, atol=1e-12)


def test_measures():
    lam = 2.0 * 0.5 ** np.arange(6)
    fit = decay_fit(lam)
    assert fit.ratio == pytest.approx(0.5) and fit.r2 == pytest.approx(1.0)
    chi = explained_stress(lam)
    assert chi[-1] == pytest.approx(1.0) and np.all(np.diff(chi) >= 0)
    assert chi[0] == pytest.approx(1 - np.sqrt(1 - 4 / np.sum(lam**2)))
    assert np.allclose(widths(np.array([[0, 1.0], [2, -1.0]])), [2, 2])


def test_geodesic_progress_and_points():
    targets = np.array([0, 2, 1, 1])
    g = geodesic_points(targets, 3, num=5)
    np.testing.assert_allclose(g[0], uniform_prediction(4, 3), atol=1e-15)
    np.testing.assert_allclose(g[-1], onehot_prediction(targets, 3), atol=1e-15)
    np.testing.assert_allclose(geodesic_progress(g, targets), np.linspace(0, 1, 5), atol=1e-12)
    # the geodesic is length-additive in the per-sample angle: D(P0, Ps) = -log cos(s theta)
    theta = np.arccos(1 / np.sqrt(3))
    D = bhattacharyya(g[0], g[2])
    assert D == pytest.approx(-np.log(np.cos(0.5 * theta)), rel=1e-9)
