"""Matrix-free training Jacobian: products, block Lanczos, SLQ and the results folder.

Independent routes: the exact J by ``jax.jacfwd`` of ``recipe.train`` (float64, tiny MLP), dense
NumPy SVD / ``eigvalsh`` on explicit matrices.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from conftest import tiny_recipe
from trainmap.jacobian.matrix_free import TrainingOperator
from trainmap.jacobian.matrix_free.lanczos import block_lanczos, dense_operator, extreme_triplets, rademacher, ritz
from trainmap.jacobian.matrix_free.operator import gram_consistent
from trainmap.jacobian.matrix_free.pipeline import analyze_scale
from trainmap.jacobian.matrix_free.slq import quadrature, slq_counts
from trainmap.jacobian.regions import Thresholds
from trainmap.recipe import default_segment


@pytest.fixture(scope="module")
def tiny64():
    """The tiny recipe in float64 with its exact J from jax.jacfwd: (recipe, theta0, J)."""
    recipe, theta0 = tiny_recipe(epochs=3)  # T = 9 steps: segments of 3, and 4 with a remainder
    with jax.enable_x64(True):
        th = jax.numpy.asarray(theta0, dtype=np.float64)
        J = np.asarray(jax.jit(jax.jacfwd(recipe.train))(th))
    return recipe, np.asarray(theta0, np.float64), J


def _matrix_with_spectrum(s: np.ndarray, seed: int) -> np.ndarray:
    """A dense (P, P) matrix U diag(s) Vᵀ with random orthogonal U, V."""
    rng = np.random.default_rng(seed)
    P = s.size
    U = np.linalg.qr(rng.normal(size=(P, P)))[0]
    V = np.linalg.qr(rng.normal(size=(P, P)))[0]
    return (U * s) @ V.T


# ----------------------------------------------------------------------------- products
def test_products_equal_the_exact_jacobian_float64(tiny64):
    recipe, theta0, J = tiny64
    op = TrainingOperator(recipe, theta0, dtype=np.float64, devices=jax.devices()[:1])
    V = np.random.default_rng(1).normal(size=(3, recipe.num_params))
    np.testing.assert_allclose(op.matvec(V), V @ J.T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(op.rmatvec(V), V @ J, rtol=0, atol=1e-12)  # rows of Jᵀ w
    JtJV, JV = op.gram(V)
    np.testing.assert_allclose(JV, V @ J.T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(JtJV, V @ J.T @ J, rtol=0, atol=1e-11)
    np.testing.assert_allclose(op.rmatvec(V[0]), (J.T @ V[0])[None], rtol=0, atol=1e-12)


@pytest.mark.parametrize("segment", [4, 0])  # 9 steps: 2 segments of 4 + a remainder; no remat
def test_reverse_pass_with_other_segments_equals_the_exact_transpose(tiny64, segment):
    recipe, theta0, J = tiny64
    W = np.random.default_rng(3).normal(size=(2, recipe.num_params))
    with jax.enable_x64(True):
        f = jax.jit(lambda t, w: recipe.vjp(t, w, segment))
        np.testing.assert_allclose(np.asarray(f(theta0, W)), W @ J, rtol=0, atol=1e-12)


def test_float32_transpose_product_within_float_tolerance(tiny64):
    recipe, theta0, J = tiny64
    op = TrainingOperator(recipe, theta0, dtype=np.float32, devices=jax.devices()[:1])
    W = np.random.default_rng(2).normal(size=(4, recipe.num_params))
    np.testing.assert_allclose(op.rmatvec(W), W @ J, rtol=0, atol=2e-5 * np.abs(W @ J).max())


def test_gram_consistency_flags_a_broken_row_not_rounding():
    rng = np.random.default_rng(5)
    J = _matrix_with_spectrum(np.r_[30.0, np.ones(38), 1e-4], 0)  # a stable direction: ‖J v‖ ≈ 0
    V = rng.normal(size=(3, 40))
    V = np.r_[V, np.linalg.svd(J)[2][-1:]]  # the row along σ = 1e-4
    JV = (V @ J.T).astype(np.float32)
    AV = (V @ J.T @ J).astype(np.float32)
    JV[3] += (3e-5 * rng.normal(size=40)).astype(np.float32)  # rounding of ε·σ_max size: ‖J v‖² 10× off
    assert gram_consistent(V, AV, JV).all()  # rounding passes, the stable row's too (the absolute part)
    assert not gram_consistent(V, AV, JV, atol=0)[3]
    broken = AV.copy()
    broken[1] *= 1.05  # a reverse pass 5% off, still finite
    broken[2, 0] = np.nan
    np.testing.assert_array_equal(gram_consistent(V, broken, JV), [True, False, False, True])


def test_a_float32_product_that_breaks_down_is_recomputed_in_float64(tiny64):
    """Independent route: the dense float64 J. The float32 program is corrupted in one row (as the
    Adam-trained transformer's reverse pass was); the operator notices and recomputes."""
    recipe, theta0, J = tiny64
    op = TrainingOperator(recipe, theta0, dtype=np.float32, devices=jax.devices()[:1])
    clean = op._gram

    def breaking(th, V):
        AV, JV = clean(th, V)
        if np.asarray(V).dtype == np.float32:
            AV = np.array(AV)
            AV[1] = np.nan
        return AV, JV

    op._gram = breaking
    V = np.random.default_rng(4).normal(size=(3, recipe.num_params)).astype(np.float32)
    AV, JV = op.gram(V)
    assert op.float64_retries == 1 and AV.dtype == np.float32 and JV.dtype == np.float32
    np.testing.assert_allclose(AV, V.astype(np.float64) @ J.T @ J, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(JV, V.astype(np.float64) @ J.T, rtol=1e-6, atol=1e-6)
    op._gram = clean
    op.gram(V)
    assert op.float64_retries == 1  # a sound float32 product is returned as it is


def test_batched_float32_reverse_pass_through_a_transformer_is_right():
    """Independent route: the same block in float64. With XLA's default passes, rows 7 and up of
    this block came back up to 530% off in float32 (``REVERSE_PASS_OPTIONS``); every row must now
    match float64 to float32 rounding, and no block of ``gram`` may need the float64 retry."""
    from trainmap.jacobian.scaling import Point, build

    recipe, theta0, _ = build(Point("transformer-sgd", 16, 1))
    one = jax.devices()[:1]
    W = np.random.default_rng(0).choice([-1.0, 1.0], size=(16, recipe.num_params)) / np.sqrt(recipe.num_params)
    op = TrainingOperator(recipe, theta0, dtype=np.float32, devices=one)
    got = op.rmatvec(W)
    ref = TrainingOperator(recipe, theta0, dtype=np.float64, devices=one).rmatvec(W)
    err = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
    assert err.max() < 1e-4, err
    op.gram(W[:8])
    assert op.float64_retries == 0


def test_checkpointed_train_equals_plain_train(tiny64):
    recipe, theta0, _ = tiny64
    assert default_segment(9) == 3 and default_segment(10) == 4 and default_segment(1) == 1
    plain = np.asarray(recipe.train(theta0.astype(np.float32)))
    for seg in (None, 4, 100):
        got = np.asarray(recipe.train_checkpointed(theta0.astype(np.float32), seg))
        np.testing.assert_allclose(got, plain, rtol=0, atol=1e-6)


def test_bad_block_shape_is_a_clear_error(tiny64):
    recipe, theta0, _ = tiny64
    op = TrainingOperator(recipe, theta0, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match=r"\(k, 39\)"):
        op.matvec(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="segment"):
        recipe.train_checkpointed(theta0, -1)


# ----------------------------------------------------------------------------- lanczos
def test_block_lanczos_extreme_triplets_match_dense_svd():
    P = 120
    s = np.concatenate([np.geomspace(30, 2, 10), np.ones(80) + np.linspace(-0.05, 0.05, 80),
                        np.geomspace(0.5, 1e-3, 30)])
    J = _matrix_with_spectrum(s, seed=3)
    U, S, Vt = np.linalg.svd(J)
    st = block_lanczos(dense_operator(J), rademacher(4, P, seed=0, dtype=np.float64), steps=20)
    top = extreme_triplets(st, 6, "top")
    np.testing.assert_allclose(top.sigma, S[:6], rtol=1e-8)
    assert np.all(top.rel_residuals < 1e-6)
    cos = np.abs(np.sum(top.V * Vt[:6], axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-8)
    cosu = np.abs(np.sum(top.U * U[:, :6].T, axis=1))
    np.testing.assert_allclose(cosu, 1.0, atol=1e-8)
    # residual norms are real diagnostics: ‖JᵀJ v − σ² v‖ recomputed densely
    r = np.linalg.norm(top.V @ J.T @ J - (top.sigma**2)[:, None] * top.V, axis=1)
    np.testing.assert_allclose(top.residuals, r, atol=1e-8)


def test_block_lanczos_bottom_triplets_when_the_stable_end_is_separated():
    s = np.concatenate([np.geomspace(3, 1.5, 10), np.ones(80) + np.linspace(-0.05, 0.05, 80),
                        np.geomspace(0.6, 0.3, 27), [0.1, 0.05, 0.02]])
    J = _matrix_with_spectrum(s, seed=3)
    U, S, Vt = np.linalg.svd(J)
    st = block_lanczos(dense_operator(J), rademacher(4, s.size, seed=0, dtype=np.float64), steps=20)
    bottom = extreme_triplets(st, 3, "bottom")
    np.testing.assert_allclose(bottom.sigma, S[::-1][:3], rtol=1e-6)
    assert np.all(bottom.rel_residuals < 1e-6)
    np.testing.assert_allclose(np.abs(np.sum(bottom.V * Vt[::-1][:3], axis=1)), 1.0, atol=1e-6)


def test_early_ritz_residuals_flag_non_convergence():
    P = 200
    s = np.linspace(3.0, 0.1, P)  # no gaps: nothing converges in 2 steps
    st = block_lanczos(dense_operator(_matrix_with_spectrum(s, 4)), rademacher(2, P, 0, np.float64), 2)
    pairs = ritz(st)
    assert pairs.residuals.max() > 1e-2


def test_exhausted_krylov_space_gives_the_exact_spectrum():
    P = 12
    J = _matrix_with_spectrum(np.linspace(2, 0.2, P), 5)
    st = block_lanczos(dense_operator(J), rademacher(3, P, 0, np.float64), steps=4)  # 3·4 = P
    np.testing.assert_allclose(np.sort(ritz(st).sigma), np.sort(np.linspace(2, 0.2, P)), rtol=1e-9)
    with pytest.raises(ValueError, match="exceeds the dimension"):
        block_lanczos(dense_operator(J), rademacher(3, P, 0, np.float64), steps=5)


# ----------------------------------------------------------------------------- slq
def test_quadrature_is_exact_for_low_degree_moments():
    """Block Gauss quadrature with m steps integrates θ^p exactly for p ≤ 2m − 1, per probe."""
    P, m = 150, 3
    J = _matrix_with_spectrum(np.random.default_rng(0).uniform(0, 2, P), 6)
    A = J.T @ J
    Z = rademacher(5, P, 1, np.float64)
    q = quadrature(block_lanczos(dense_operator(J), Z, m))
    for p in range(2 * m):
        quad = P * (q.nodes[:, None] ** p * q.weights).sum(axis=0)
        exact = np.einsum("ji,ji->j", Z @ np.linalg.matrix_power(A, p), Z)
        np.testing.assert_allclose(quad, exact, rtol=1e-8)


def test_slq_counts_agree_with_eigvalsh():
    P = 400
    rng = np.random.default_rng(7)
    s = np.concatenate([rng.uniform(1.3, 6, 60), 1 + rng.uniform(-0.08, 0.08, 240), rng.uniform(0, 0.7, 100)])
    J = _matrix_with_spectrum(s, 8)
    ev = np.linalg.eigvalsh(J.T @ J)  # the independent route: σ² from a dense eigensolver
    exact = {"chaotic": int((ev > 1.21).sum()), "stable": int((ev < 0.81).sum())}
    exact["bulk"] = P - exact["chaotic"] - exact["stable"]
    c = slq_counts(dense_operator(J), P, num_probes=10, steps=12, seed=0)
    for r, n in exact.items():
        err = abs(c[r]["count"] - n)
        assert err < max(4 * c[r]["std_err"], 0.05 * n), (r, c[r], n)
        lo, hi = c[r]["quadrature_range"]
        assert lo - 4 * c[r]["std_err"] <= n <= hi + 4 * c[r]["std_err"]
    assert abs(sum(c[r]["count"] for r in exact) - P) < 1e-6 * P


# ----------------------------------------------------------------------------- pipeline
def test_analyze_scale_tiny_matches_exact_and_resumes(tmp_path, tiny64):
    recipe, theta0, J = tiny64
    S = np.linalg.svd(J, compute_uv=False)
    th = Thresholds()
    kwargs = dict(method="lanczos", rank=4, probes=3, steps=13, dtype=np.float64, progress=False,
                  devices=jax.devices()[:1])  # 3 · 13 = P = 39: the Krylov space is complete
    with pytest.raises(KeyboardInterrupt):  # 5 steps with the basis in memory ...
        analyze_scale(recipe, theta0, tmp_path / "a", stop_after=5, basis="memory", **kwargs)
    # ... resumed with it on disk (the checkpoint files, one block mapped at a time)
    s = analyze_scale(recipe, theta0, tmp_path / "a", resume=True, basis="disk", **kwargs)
    assert s["lanczos"]["steps_resumed"] == 5 and s["lanczos"]["steps"] == 13
    assert s["lanczos"]["basis"]["on_disk"] and s["lanczos"]["product_s"] > 0
    full = analyze_scale(recipe, theta0, tmp_path / "b", **kwargs)
    assert not full["lanczos"]["basis"]["on_disk"]
    for name in ("top_sigma.npy", "bottom_sigma.npy", "slq_nodes.npy"):  # same basis, other sweeps
        np.testing.assert_allclose(np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name),
                                   rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(full["top"]["sigma"], S[:4], rtol=1e-8)
    np.testing.assert_allclose(full["bottom"]["sigma"], S[::-1][:4], rtol=1e-6, atol=1e-9)
    exact = {"chaotic": (S > th.high).sum(), "bulk": ((S >= th.low) & (S <= th.high)).sum(),
             "stable": (S < th.low).sum()}
    for r, n in exact.items():  # Hutchinson noise (3 probes) and the quadrature range remain
        lo, hi = full[r]["quadrature_range"]
        tol = 4 * full[r]["std_err"] + 1
        assert lo - tol <= n <= hi + tol
        assert abs(full[r]["count"] - n) <= tol + (hi - lo) / 2, (r, full[r], n)
    out = tmp_path / "b"
    for name in ("config.json", "summary.json", "density.png", "extreme_sigma.png", "manifest.json",
                 "slq_nodes.npy", "slq_weights.npy", "top_V.npy", "top_U.npy", "bottom_V.npy"):
        assert (out / name).exists(), name
    V = np.load(out / "top_V.npy")
    assert V.shape == (4, recipe.num_params)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["estimated"] and summary["method"] == "lanczos"
    assert "warnings" in summary and summary["peak_memory_mb"] > 0
    with pytest.raises(FileExistsError):
        analyze_scale(recipe, theta0, out, **kwargs)
    with pytest.raises(ValueError, match="unknown method"):
        analyze_scale(recipe, theta0, tmp_path / "c", **{**kwargs, "method": "power"})


def test_memory_budget_moves_the_basis_to_disk_then_refuses(tmp_path, tiny64):
    from trainmap.jacobian.matrix_free.pipeline import MemoryBudget, MemoryBudgetError

    GiB = 2**30
    budget = MemoryBudget(10, "auto", row_bytes=GiB // 8, block=2, readoff_rows=8)  # 1 GiB readoff
    # 10 steps planned: the basis still to come is 2 · (10 − s) · 2 rows of 1/8 GiB
    assert not budget.check(2, 10, peak_bytes=4 * GiB)  # 4 + 4 + 1 = 9 ≤ 10
    assert budget.check(3, 10, peak_bytes=6 * GiB)  # 6 + 3.5 + 1 > 10: move now
    assert budget.on_disk and budget.moved_at == 3
    assert not budget.check(4, 10, peak_bytes=8 * GiB)  # on disk: 8 + 1 + 0.5 ≤ 10
    with pytest.raises(MemoryBudgetError, match="raise --memory-gb"):
        budget.check(5, 10, peak_bytes=9 * GiB)
    assert not MemoryBudget(10, "memory", GiB // 8, 2, 8).check(3, 10, peak_bytes=9 * GiB)
    unstored = MemoryBudget(10, "none", GiB // 8, 2, 8)  # no basis: nothing to move, the budget still holds
    assert not unstored.check(3, 10, peak_bytes=8 * GiB) and not unstored.on_disk
    with pytest.raises(MemoryBudgetError, match="not stored"):
        unstored.check(4, 10, peak_bytes=9 * GiB)
    # a whole basis that can never fit starts on disk (a resumed long run is never loaded into memory)
    assert MemoryBudget(10, "auto", GiB // 8, 2, 8).check_start(40, peak_bytes=GiB)  # 1 + 20 + 1 > 10
    assert not MemoryBudget(10, "auto", GiB // 8, 2, 8).check_start(10, peak_bytes=GiB)  # 1 + 5 + 1 ≤ 10
    # a real run under an impossible budget: one line, the steps done are saved for --resume
    recipe, theta0, _ = tiny64
    with pytest.raises(MemoryBudgetError, match="--resume"):
        analyze_scale(recipe, theta0, tmp_path / "m", method="slq", rank=2, probes=2, steps=6,
                      dtype=np.float64, progress=False, devices=jax.devices()[:1], memory_gb=0.01)
    assert json.loads((tmp_path / "m" / "checkpoint" / "progress.json").read_text())["steps"] >= 1


def test_cli_method_slq_writes_estimates(tmp_path):
    from typer.testing import CliRunner

    from trainmap.cli import app

    out = tmp_path / "slq"
    res = CliRunner().invoke(app, ["jacobian", "--hidden", "4", "--epochs", "1", "--batch-size", "200",
                                   "--method", "slq", "--probes", "4", "--lanczos-steps", "5",
                                   "--rank", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["method"] == "slq" and s["num_params"] == 310 and s["lanczos"]["vector_products"] == 20
    assert abs(sum(s[r]["count"] for r in ("chaotic", "bulk", "stable")) - 310) < 1e-6 * 310
    assert (out / "density.png").exists() and (out / "top_V.npy").exists()
    assert not (out / "bottom_V.npy").exists()  # slq writes the chaotic end only
    assert "chaotic" in res.output and "quadrature range" in res.output


def test_scipy_linear_operator_equals_dense_products(tiny64):
    """``to_scipy()`` is a LinearOperator: matvec, rmatvec and matmat equal the dense J."""
    import scipy.sparse.linalg as spla

    recipe, theta0, J = tiny64
    op = TrainingOperator(recipe, theta0, dtype=np.float64, devices=jax.devices()[:1])
    A = op.to_scipy()
    assert isinstance(A, spla.LinearOperator) and A.shape == J.shape
    rng = np.random.default_rng(4)
    v, V = rng.normal(size=J.shape[1]), rng.normal(size=(J.shape[1], 3))
    np.testing.assert_allclose(A @ v, J @ v, rtol=0, atol=1e-12 * np.abs(J).max() * 10)
    np.testing.assert_allclose(A.rmatvec(v), J.T @ v, rtol=0, atol=1e-12 * np.abs(J).max() * 10)
    np.testing.assert_allclose(A @ V, J @ V, rtol=0, atol=1e-12 * np.abs(J).max() * 10)
    top = spla.svds(A, k=2, return_singular_vectors=False)
    np.testing.assert_allclose(np.sort(top), np.sort(np.linalg.svd(J, compute_uv=False))[-2:], rtol=1e-8)


def test_golub_kahan_triplets_and_residuals_match_a_dense_svd():
    from trainmap.jacobian.matrix_free.golub_kahan import dense_vectors, gk_triplets, golub_kahan

    rng = np.random.default_rng(3)
    M = rng.standard_normal((60, 60)) / 8 + np.eye(60)
    M[:5] *= np.arange(6.0, 1.0, -1.0)[:, None]  # five separated chaotic directions
    S = np.linalg.svd(M, compute_uv=False)
    st = golub_kahan(*dense_vectors(M), rng.standard_normal(60), steps=30)
    t = gk_triplets(st, 5, vectors=True)
    np.testing.assert_allclose(t.sigma, S[:5], rtol=1e-9)
    for i in range(5):  # the residual read off B equals the one computed with the matrix
        v = t.V[i]
        direct = np.linalg.norm(M.T @ (M @ v) - t.sigma[i] ** 2 * v)
        assert abs(direct - t.residuals[i]) <= 1e-8 * max(t.sigma[i] ** 2, 1.0)
        np.testing.assert_allclose(M @ v, t.sigma[i] * t.U[i], atol=1e-8)
    full = golub_kahan(*dense_vectors(M), rng.standard_normal(60), steps=60)  # complete space
    np.testing.assert_allclose(gk_triplets(full, 60).sigma, S, rtol=1e-8, atol=1e-10)
