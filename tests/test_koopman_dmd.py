"""DMD: known eigenvalues, PyDMD agreement, stacks vs naive concatenation, delays, bad input."""

import numpy as np
import pytest

from trainmap.koopman import DMD, as_stack, delay_embed, snapshot_pairs


def _linear_map(seed=0):
    """A 5x5 real map with eigenvalues 0.95, 0.7, 0.5 ± 0.3i, -0.4 in a random basis."""
    rng = np.random.default_rng(seed)
    block = np.zeros((5, 5))
    block[0, 0], block[1, 1], block[4, 4] = 0.95, 0.7, -0.4
    block[2:4, 2:4] = [[0.5, 0.3], [-0.3, 0.5]]
    q = rng.standard_normal((5, 5))
    return q @ block @ np.linalg.inv(q), np.array([0.95, 0.7, 0.5 + 0.3j, 0.5 - 0.3j, -0.4])


def _simulate(a, x0, steps):
    xs = [x0]
    for _ in range(steps - 1):
        xs.append(a @ xs[-1])
    return np.array(xs)


def _match_sorted(a, b):
    return np.sort_complex(np.asarray(a)), np.sort_complex(np.asarray(b))


def test_recovers_known_linear_map_to_1e_8():
    a, truth = _linear_map()
    rng = np.random.default_rng(1)
    stack = np.stack([_simulate(a, rng.standard_normal(5), 25) for _ in range(3)])
    est = DMD().fit(stack)
    got, want = _match_sorted(est.eigenvalues_, truth)
    assert est.rank_ == 5
    np.testing.assert_allclose(got, want, atol=1e-8, rtol=0)
    # the exact modes are eigenvectors of the map: A φ = λ φ
    for lam, phi in zip(est.eigenvalues_, est.modes_.T):
        np.testing.assert_allclose(a @ phi, lam * phi, atol=1e-8)


def test_matches_pydmd_on_a_single_trajectory():
    pydmd = pytest.importorskip("pydmd", reason="pydmd is a test-only dependency (pip install 'trainmap[test]')")
    rng = np.random.default_rng(2)
    # a noisy nonlinear trajectory, so rank truncation matters
    x = np.zeros((60, 8))
    x[0] = rng.standard_normal(8)
    w = rng.standard_normal((8, 8)) * 0.35
    for t in range(59):
        x[t + 1] = np.tanh(w @ x[t]) + 0.01 * rng.standard_normal(8)
    for rank in (3, 6):
        ours = DMD(rank=rank).fit(x)
        ref = pydmd.DMD(svd_rank=rank, exact=True).fit(x.T)
        got, want = _match_sorted(ours.eigenvalues_, ref.eigs)
        np.testing.assert_allclose(got, want, atol=1e-10)
        # exact modes agree up to a complex scale per mode: compare normalised |Φᵀ Φ_ref|
        for lam, phi in zip(ours.eigenvalues_, ours.modes_.T):
            j = int(np.argmin(np.abs(ref.eigs - lam)))
            ref_phi = ref.modes[:, j]
            cos = abs(np.vdot(phi, ref_phi)) / (np.linalg.norm(phi) * np.linalg.norm(ref_phi))
            assert cos == pytest.approx(1.0, abs=1e-8)


def test_stack_differs_from_naive_concatenation_and_is_right():
    a, truth = _linear_map(3)
    rng = np.random.default_rng(4)
    runs = [_simulate(a, 3 * rng.standard_normal(5), 12) for _ in range(4)]
    stack_eigs = DMD().fit(np.stack(runs)).eigenvalues_
    # naive: glue the runs end to end into one long "trajectory"
    glued_eigs = DMD().fit(np.concatenate(runs)).eigenvalues_
    got, want = _match_sorted(stack_eigs, truth)
    np.testing.assert_allclose(got, want, atol=1e-8)
    glued, _ = _match_sorted(glued_eigs, truth)
    assert np.max(np.abs(glued - want)) > 1e-2  # the fake jumps between runs corrupt the fit


def test_snapshot_pairs_never_cross_runs():
    stack = np.arange(2 * 4 * 1, dtype=float).reshape(2, 4, 1)  # run 0: 0..3, run 1: 4..7
    x, y = snapshot_pairs(stack)
    assert x.ravel().tolist() == [0, 1, 2, 4, 5, 6]
    assert y.ravel().tolist() == [1, 2, 3, 5, 6, 7]


def test_delay_embedding_layout():
    stack = np.arange(10, dtype=float).reshape(1, 5, 2)
    emb = delay_embed(stack, 2)
    assert emb.shape == (1, 3, 6)
    np.testing.assert_array_equal(emb[0, 0], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(emb[0, 2], [4, 5, 6, 7, 8, 9])


def test_delays_recover_a_scalar_oscillator():
    # x_t = cos(ω t) alone has no one-step linear model; one delay gives e^{±iω}
    omega = 0.3
    t = np.arange(40)
    x = (0.9 ** t * np.cos(omega * t))[:, None]
    eigs = DMD(delays=1).fit(x).eigenvalues_
    want = 0.9 * np.exp(1j * omega * np.array([1, -1]))
    np.testing.assert_allclose(*_match_sorted(eigs, want), atol=1e-10)


def test_predict_and_score_of_an_exact_fit():
    a, _ = _linear_map(5)
    x = _simulate(a, np.ones(5), 20)
    est = DMD().fit(x)
    np.testing.assert_allclose(est.predict(x[:-1]), x[1:], atol=1e-8)
    assert est.score(x) < 1e-8


def test_nan_input_is_rejected_with_its_location():
    x = np.random.default_rng(0).standard_normal((2, 10, 3))
    x[1, 7, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf.*run 1, step 7"):
        DMD().fit(x)


def test_too_few_snapshots_for_delays():
    x = np.random.default_rng(0).standard_normal((1, 6, 2))
    with pytest.raises(ValueError, match="too few snapshots for 5 delays"):
        DMD(delays=5).fit(x)


def test_rank_larger_than_the_data_can_span():
    x = np.random.default_rng(0).standard_normal((1, 6, 20))
    with pytest.raises(ValueError, match="rank=8 is more than the 5 directions"):
        DMD(rank=8).fit(x)


def test_runs_of_unequal_length():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"unequal lengths \[10, 8\]"):
        DMD().fit([rng.standard_normal((10, 3)), rng.standard_normal((8, 3))])


def test_rank_above_numerical_rank_warns_and_truncates():
    x = np.outer(0.9 ** np.arange(20), np.ones(4))  # rank-one motion
    with pytest.warns(UserWarning, match="numerical rank 1"):
        est = DMD(rank=3).fit(x)
    assert est.rank_ == 1
    assert est.eigenvalues_[0] == pytest.approx(0.9, abs=1e-10)


def test_as_stack_accepts_runs_lists_and_trajectories():
    from trainmap.record import Trajectory

    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    assert as_stack(x[0]).shape == (1, 5, 3)
    assert as_stack([x[0], x[1]]).shape == (2, 5, 3)
    assert as_stack(Trajectory(x, np.arange(5))).shape == (2, 5, 3)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        DMD(rank=0).fit(x)


def test_many_runs_and_delays_match_pydmd_fit_on_our_snapshot_pairs():
    """PyDMD's fit(X, Y) takes explicit pairs: on trainmap's per-run (delay-embedded) pairs it gives
    trainmap's eigenvalues. What it lacks is building those pairs (its HankelDMD.fit takes one sequence)."""
    import warnings

    pydmd = pytest.importorskip("pydmd", reason="pydmd is a test-only dependency (pip install 'trainmap[test]')")
    from trainmap.koopman import delay_embed, snapshot_pairs

    rng = np.random.default_rng(0)
    A = np.linalg.qr(rng.standard_normal((6, 6)))[0] * 0.95
    stack = np.zeros((4, 31, 6))
    stack[:, 0] = rng.standard_normal((4, 6))
    for t in range(30):
        stack[:, t + 1] = stack[:, t] @ A.T
    for delays in (0, 2):
        ours = DMD(rank=6, delays=delays).fit(stack).eigenvalues_
        X, Y = snapshot_pairs(delay_embed(stack, delays))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyDMD warns about the (exactly linear) data's conditioning
            ref = pydmd.DMD(svd_rank=6, exact=True).fit(X, Y).eigs
        got, want = _match_sorted(ours, ref)
        np.testing.assert_allclose(got, want, atol=1e-12)
