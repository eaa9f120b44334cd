"""SVD decomposition and region labels against dense constructions with known spectra."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainmap.jacobian.regions import BULK, CHAOTIC, STABLE, Thresholds, classify, project_change, region_summary, svd


def _orth(rng, n):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q


def test_classify_uses_documented_boundaries():
    s = np.array([5.0, 1.1000001, 1.1, 1.0, 0.9, 0.8999999, 0.1])
    np.testing.assert_array_equal(classify(s), [CHAOTIC, CHAOTIC, BULK, BULK, BULK, STABLE, STABLE])
    np.testing.assert_array_equal(classify(s, Thresholds.symmetric(0.5)), [CHAOTIC, BULK, BULK, BULK,
                                                                           BULK, BULK, STABLE])
    with pytest.raises(ValueError):
        Thresholds(1.2, 1.5)


def test_svd_of_known_spectrum_and_regions():
    rng = np.random.default_rng(0)
    n = 40
    s = np.concatenate([np.geomspace(15, 1.2, 8), 1 + rng.uniform(-0.05, 0.05, 24), np.geomspace(0.8, 1e-3, 8)])
    U, V = _orth(rng, n), _orth(rng, n)
    J = (U * s) @ V.T
    dec = svd(J, dtype=np.float64)
    np.testing.assert_allclose(dec.S, np.sort(s)[::-1], rtol=1e-10)
    np.testing.assert_allclose((dec.U * dec.S) @ dec.Vt, J, atol=1e-10)
    summ = region_summary(dec)
    assert (summ["chaotic"]["count"], summ["bulk"]["count"], summ["stable"]["count"]) == (8, 24, 8)
    assert summ["sigma_max"] == pytest.approx(15) and summ["sigma_min"] == pytest.approx(1e-3)
    assert sum(summ[r]["fraction"] for r in ("chaotic", "bulk", "stable")) == pytest.approx(1)


def test_cos_uv_is_one_for_symmetric_positive_definite_and_independent_of_sign_flips():
    rng = np.random.default_rng(1)
    Q = _orth(rng, 30)
    J = (Q * np.geomspace(3, 0.3, 30)) @ Q.T
    dec = svd(J, dtype=np.float64)
    np.testing.assert_allclose(dec.cos_uv, 1.0, atol=1e-8)
    # a rotation-like J has u_i orthogonal-ish to v_i: cos is then not 1
    R = np.roll(np.eye(30), 1, axis=0)
    assert np.abs(svd(R, dtype=np.float64).cos_uv).max() < 1e-8


def test_project_change_coordinates_reconstruct_the_change():
    rng = np.random.default_rng(2)
    J = rng.normal(size=(20, 20))
    dec = svd(J, dtype=np.float64)
    a, b = rng.normal(size=20), rng.normal(size=20)
    c = project_change(dec.Vt, a, b)
    np.testing.assert_allclose(dec.Vt.T @ c, b - a, atol=1e-12)


def test_svd_rejects_bad_matrices():
    with pytest.raises(ValueError, match="square"):
        svd(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        svd(np.full((3, 3), np.nan))


def test_authors_statistics_count_and_median_near_one():
    """Bulk counts at several tolerances and the median |cos| over |σ−1| < 1e-3, by direct counting."""
    from trainmap.jacobian.regions import authors_statistics

    rng = np.random.default_rng(0)
    S = np.concatenate([1 + rng.uniform(-2e-3, 2e-3, 500), rng.uniform(0, 3, 500)])
    cos = rng.uniform(-1, 1, S.size)
    a = authors_statistics(S, cos)
    for tol in (0.1, 0.01, 0.001):
        assert a["bulk_counts"][f"{tol:g}"]["count"] == int(np.sum(np.abs(S - 1) <= tol))
    near = np.abs(S - 1) < 1e-3
    assert a["near_one"]["count"] == near.sum()
    assert a["near_one"]["median_abs_cos_uv"] == pytest.approx(np.median(np.abs(cos[near])))
    with pytest.raises(ValueError, match="> 0"):
        authors_statistics(S, cos, tolerances=[0.1, 0])


def test_where_dsyevr_fails_svd_tries_gesdd_on_the_transpose_then_j_then_float64(monkeypatch):
    """Where the float32 Gram route's dsyevr fails, float32 gesdd runs on Jᵀ, then J, then float64
    (fast and as accurate), not with gesvd; each route gives the same factorisation of J."""
    import scipy.linalg

    from trainmap.jacobian import regions

    real = scipy.linalg.svd
    real_syevr = regions.scipy.linalg.lapack.dsyevr
    monkeypatch.setattr(regions.scipy.linalg.lapack, "dsyevr",
                        lambda *a, **k: (*real_syevr(*a, **k)[:4], 1))  # info = 1: not converged
    J = np.random.default_rng(0).normal(size=(20, 20)).astype(np.float32)
    ref = np.linalg.svd(J.astype(np.float64), compute_uv=False)
    for failing, expected in ((0, [(np.float32, True)]),
                              (1, [(np.float32, True), (np.float32, False)]),
                              (2, [(np.float32, True), (np.float32, False), (np.float64, False)])):
        calls = []

        def flaky(a, lapack_driver="gesdd", **kw):
            calls.append((a.dtype, bool(a.flags.f_contiguous and not a.flags.c_contiguous)))
            if a.dtype == np.float32 and lapack_driver == "gesdd" and len(calls) <= failing:
                raise np.linalg.LinAlgError("SVD did not converge")
            return real(a, lapack_driver=lapack_driver, **kw)

        monkeypatch.setattr(regions.scipy.linalg, "svd", flaky)
        dec = regions.svd(J)
        assert calls == expected, (failing, calls)
        assert dec.S.dtype == np.float32 and dec.U.dtype == np.float32
        np.testing.assert_allclose(dec.S, ref, rtol=1e-5)
        np.testing.assert_allclose((dec.U * dec.S) @ dec.Vt, J, atol=1e-5)
        np.testing.assert_allclose(dec.cos_uv, np.einsum("ij,ji->i", dec.Vt, dec.U))


def test_decoupled_indices_are_split_off_exactly_and_the_factors_match_a_dense_svd():
    """Rows and columns that are zero off the diagonal (σ = |J_jj|, u = ±e_j, v = e_j) are split off
    before gesdd; the merged factors are a valid SVD of J (float64 dense reference), their σ in the
    middle of the spectrum included, with negative and zero diagonals and with every index decoupled."""
    from trainmap.jacobian import regions

    rng = np.random.default_rng(3)
    P = 40
    J = rng.normal(size=(P, P)) / np.sqrt(P) + np.eye(P)
    dead = np.array([0, 7, 8, 21, 39])
    J[dead, :] = 0
    J[:, dead] = 0
    J[dead, dead] = [1.0, -0.5, 2.5, 0.0, 1.0]  # inside the spectrum, negative, zero, repeated
    J[3, 5] = 0.0  # a zero that does not decouple its index
    np.testing.assert_array_equal(regions.decoupled(J), dead)
    for dt in (np.float64, np.float32):
        dec = svd(J.astype(dt))
        assert dec.decoupled == 5 and region_summary(dec)["decoupled"]["count"] == 5
        ref = np.linalg.svd(J, compute_uv=False)
        tol = 1e-12 if dt == np.float64 else 1e-5
        assert dec.S.dtype == dt and np.all(np.diff(dec.S) <= 0)
        np.testing.assert_allclose(dec.S, ref, atol=tol)
        np.testing.assert_allclose((dec.U * dec.S) @ dec.Vt, J, atol=10 * tol)
        np.testing.assert_allclose(dec.U.T @ dec.U, np.eye(P), atol=10 * tol)
        np.testing.assert_allclose(dec.Vt @ dec.Vt.T, np.eye(P), atol=10 * tol)
        for j, d in zip(dead, J[dead, dead]):
            i = int(np.flatnonzero(dec.Vt[:, j])[0])  # the slot of e_j
            assert dec.S[i] == abs(d) and dec.Vt[i, j] == 1 and dec.U[j, i] == (-1 if d < 0 else 1)
            assert np.count_nonzero(dec.Vt[i]) == 1 and np.count_nonzero(dec.U[:, i]) == 1
    diag = np.diag([3.0, -1.0, 0.5])  # every index decoupled: no dense SVD at all
    dec = svd(diag)
    np.testing.assert_array_equal(dec.S, [3.0, 1.0, 0.5])
    np.testing.assert_array_equal((dec.U * dec.S) @ dec.Vt, diag)


def test_a_memory_mapped_j_is_read_in_slabs_and_gives_the_same_factors(tmp_path, monkeypatch):
    """J from its .npy file (memory map) through slabs of a few rows: the same bits as in memory."""
    from trainmap.jacobian import regions

    rng = np.random.default_rng(5)
    J = (rng.normal(size=(37, 37)) / 6 + np.eye(37)).astype(np.float32)
    J[[2, 30], :] = 0
    J[:, [2, 30]] = 0
    J[2, 2], J[30, 30] = 1.0, 0.25
    np.save(tmp_path / "J.npy", J)
    ref = svd(J)
    monkeypatch.setattr(regions, "SLAB_BYTES", 5 * 37 * 4)  # 5 rows per slab, the last one short
    seen = []
    real = regions._row_slabs

    def counting(A, *args):
        for r0, slab in real(A, *args):
            seen.append((r0, slab.shape[0]))
            yield r0, slab

    monkeypatch.setattr(regions, "_row_slabs", counting)
    mm = np.load(tmp_path / "J.npy", mmap_mode="r")
    dec = svd(mm)
    assert seen[:8] == [(r, min(5, 37 - r)) for r in range(0, 37, 5)]  # the scan's pass
    for a, b in ((dec.S, ref.S), (dec.U, ref.U), (dec.Vt, ref.Vt)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(regions.decoupled(mm), [2, 30])


@pytest.mark.parametrize("layout", ["C", "F"])
def test_the_float32_gram_route_is_a_float32_accurate_svd_with_tiny_and_clustered_singular_values(layout, monkeypatch):
    """The float32 SVD (float64 Gram matrix, dsyevr) on a J with σ over ten decades, a cluster at 1
    and two exact zeros, row- and column-major: σ within float32 rounding of the float64 SVD's, U
    and V orthonormal to float32 precision (the tiny σ's u_i too, orthonormalised), J v_i = σ_i u_i,
    and the same factors from both layouts."""
    from trainmap.jacobian import regions

    rng = np.random.default_rng(11)
    n = 120
    S = np.concatenate([np.geomspace(30, 1.2, 20), 1 + rng.uniform(-1e-4, 1e-4, 60),
                        np.geomspace(0.8, 1e-9, 38), [0.0, 0.0]])
    Q1, _ = np.linalg.qr(rng.normal(size=(n, n)))
    Q2, _ = np.linalg.qr(rng.normal(size=(n, n)))
    J = ((Q1 * S) @ Q2.T).astype(np.float32)
    J = np.asfortranarray(J) if layout == "F" else J
    calls = []
    real = regions.scipy.linalg.lapack.dsyevr
    monkeypatch.setattr(regions.scipy.linalg.lapack, "dsyevr", lambda *a, **k: calls.append(1) or real(*a, **k))
    dec = svd(J)
    assert calls == [1] and dec.S.dtype == dec.U.dtype == dec.Vt.dtype == np.float32
    assert dec.U.flags.c_contiguous and dec.Vt.flags.c_contiguous  # the saved files as for a row-major J
    J64 = J.astype(np.float64)
    ref = np.linalg.svd(J64, compute_uv=False)
    assert np.max(np.abs(dec.S - ref)) <= 1e-7 * ref[0]
    U, Vt = dec.U.astype(np.float64), dec.Vt.astype(np.float64)
    assert np.max(np.abs(U.T @ U - np.eye(n))) < 1e-5
    assert np.max(np.abs(Vt @ Vt.T - np.eye(n))) < 1e-5
    assert np.max(np.linalg.norm(J64 @ Vt.T - U * dec.S, axis=0)) < 1e-5 * ref[0]
    other = svd(np.ascontiguousarray(J) if layout == "F" else np.asfortranarray(J))
    np.testing.assert_allclose(other.S, dec.S, rtol=1e-6, atol=1e-7 * ref[0])


#: the documented float32 SVD precision (docs/jacobian.md): |σ32 − σ64| ≤ SVD32_BOUND · σ_max
SVD32_BOUND = 2e-6


def test_float32_svd_of_a_training_jacobian_is_within_the_documented_bound():
    from trainmap.jacobian.exact import exact_jacobian
    from trainmap.presets import digits_mlp

    s = digits_mlp(hidden=8, epochs=2)  # P = 610, the published setup's recipe
    J = exact_jacobian(s.recipe, s.theta0, progress=False)
    dec = svd(J)
    ref = np.linalg.svd(J.astype(np.float64), compute_uv=False)
    assert dec.S.dtype == np.float32
    err = np.max(np.abs(dec.S.astype(np.float64) - ref)) / ref[0]
    assert err <= SVD32_BOUND, err
    doc = (Path(__file__).resolve().parents[1] / "docs" / "jacobian.md").read_text()
    assert f"{SVD32_BOUND:.0e}".replace("e-0", "e-") in doc


def test_sigma_histogram_counts_every_singular_value_once_in_its_region():
    from trainmap.jacobian.figures import sigma_histogram_figure
    from trainmap.jacobian.regions import Thresholds, classify

    S = np.sort(np.concatenate([np.geomspace(1.2, 30, 40), 1 + np.linspace(-0.05, 0.05, 100),
                                np.geomspace(1e-3, 0.8, 25)]))[::-1]
    codes = classify(S, Thresholds())
    fig = sigma_histogram_figure(S, codes, Thresholds())
    ax = fig.axes[0]
    per_region = [sum(p.get_height() for p in c) for c in ax.containers]
    # stacked bars: each layer's heights count that region alone
    assert [round(h) for h in per_region] == [25, 100, 40]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["stable (25)", "bulk (100)", "chaotic (40)"]
