"""Observables: PCA against scikit-learn, random projections keep a linear spectrum, layers."""

import numpy as np
import pytest

from trainmap.koopman import DMD, PCAObservable, RandomProjection, select_layers
from trainmap.record import from_arrays


def _subspace_gap(a, b):
    """Largest principal-angle sine between the row spaces of a and b."""
    qa, _ = np.linalg.qr(a.T)
    qb, _ = np.linalg.qr(b.T)
    return np.linalg.norm(qa - qb @ (qb.T @ qa), 2)


@pytest.mark.parametrize("features", [6, 200])  # covariance route and Gram route
def test_pca_matches_sklearn_and_is_fitted_on_all_stacks(features):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    scales = np.linspace(3, 0.1, features)
    s1 = rng.standard_normal((2, 20, features)) * scales
    s2 = rng.standard_normal((3, 20, features)) * scales + 0.5
    ours = PCAObservable(3).fit([s1, s2])
    ref = PCA(3).fit(np.concatenate([s1.reshape(-1, features), s2.reshape(-1, features)]))
    assert _subspace_gap(ours.components_, ref.components_) < 1e-6
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-6)
    np.testing.assert_allclose(ours.mean_, ref.mean_, atol=1e-10)
    out = ours.transform(s2)
    assert out.shape == (3, 20, 3)
    np.testing.assert_allclose(np.abs(out.reshape(-1, 3)), np.abs(ref.transform(s2.reshape(-1, features))), atol=1e-6)


def test_random_projection_keeps_the_spectrum_of_a_linear_system():
    rng = np.random.default_rng(1)
    a = np.diag([0.95, 0.8, 0.5])
    lift = rng.standard_normal((3, 50))  # the system seen through 50 linear observables
    xs = [rng.standard_normal(3)]
    for _ in range(30):
        xs.append(a @ xs[-1])
    stack = (np.array(xs) @ lift)[None]
    proj = RandomProjection(6, seed=2).fit(stack)
    z = proj.transform(stack)
    assert z.shape == (1, 31, 6)
    eigs = DMD(rank=3).fit(z).eigenvalues_
    np.testing.assert_allclose(np.sort(eigs.real), [0.5, 0.8, 0.95], atol=1e-8)
    assert np.array_equal(RandomProjection(6, seed=2).fit(stack).matrix_, proj.matrix_)


def test_select_layers_by_name_and_prefix():
    x = np.arange(2 * 3 * 7, dtype=float).reshape(2, 3, 7)
    traj = from_arrays(x, layers={"fc1.weight": (2, 2), "fc1.bias": (2,), "fc2.weight": (1,)})
    sub = select_layers(traj, ["fc2.weight", "fc1"])
    np.testing.assert_array_equal(sub.features[..., 0], x[..., 6])
    np.testing.assert_array_equal(sub.features[..., 1:], x[..., :6])
    assert list(sub.meta["layers"]) == ["fc2.weight", "fc1.weight", "fc1.bias"]
    with pytest.raises(ValueError, match="recorded layers"):
        select_layers(traj, ["fc3"])


def test_pca_errors():
    with pytest.raises(ValueError, match="n_components"):
        PCAObservable(10).fit(np.zeros((1, 4, 3)))
    with pytest.raises(RuntimeError, match="not fitted"):
        PCAObservable(2).transform(np.zeros((1, 4, 3)))
