"""SLQ with a half-precision Krylov basis: the last two blocks exact, every older block in float16.

Independent routes: dense ``svd``/``eigvalsh`` of explicit matrices, the full-precision run, and
the orthogonality of every block measured from exact copies kept by the test (not by the run).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from conftest import tiny_recipe
from test_slq_without_basis import RecordingMixin, _gapped
from trainmap.jacobian.matrix_free import basis as basis_mod
from trainmap.jacobian.matrix_free.basis import HalfBlocks, MemoryBlocks, combine, half_to_single, max_overlap
from trainmap.jacobian.matrix_free.lanczos import (
    BlockLanczosState,
    block_lanczos,
    block_lanczos_step,
    dense_operator,
    extreme_triplets,
    rademacher,
    verified,
    without_side,
)
from trainmap.jacobian.matrix_free.pipeline import MemoryBudget, MemoryBudgetError, analyze_scale
from trainmap.jacobian.matrix_free.slq import quadrature, region_counts


class _Recording(RecordingMixin, HalfBlocks):
    """A half-precision store that also remembers every block exactly."""


def test_half_blocks_round_the_old_blocks_and_keep_the_last_two():
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((3, 7)).astype(np.float32) for _ in range(4)]
    h = HalfBlocks(2)
    for b in blocks:
        h.append(b)
    assert len(h) == 4 and h.rows == 12 and h.half_count == 2
    np.testing.assert_array_equal(h[3], blocks[3])  # exact
    np.testing.assert_array_equal(h[0], blocks[0].astype(np.float16).astype(np.float32))
    assert h.half_block(1).dtype == np.float16
    worst = max(float(np.linalg.norm(b.astype(np.float64) - b.astype(np.float16), axis=1).max()) for b in blocks[:2])
    assert h.rounding == pytest.approx(worst, rel=1e-12) and 0 < worst < 1e-2
    swept = list(h.sweep())
    assert [s for s, _ in swept] == [0, 3, 6, 9] and all(G.dtype == np.float32 for _, G in swept)
    resumed = HalfBlocks(2, half=[h.half_block(0), h.half_block(1)], blocks=blocks[2:])
    assert len(resumed) == 4 and all(np.array_equal(a, b) for (_, a), (_, b) in zip(resumed.sweep(), swept))
    W = rng.standard_normal((2, 7)).astype(np.float32)
    full = MemoryBlocks()
    for _, G in swept:
        full.append(G)
    assert max_overlap(W, h) == pytest.approx(float(np.abs(np.concatenate([G for _, G in swept]) @ W.T).max()))
    with pytest.raises(ValueError, match="at most 2 exact"):
        HalfBlocks(2, blocks=blocks)


def test_half_to_single_is_numpys_cast_bit_for_bit_on_every_finite_float16():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    h = bits[(bits & 0x7C00) != 0x7C00].view(np.float16).reshape(2, -1)  # subnormals, ±0 included
    for src in (h, h[:, 1::3]):  # contiguous, and a strided column slice as the tiles are
        out = half_to_single(src, np.empty(src.shape, np.float32))
        np.testing.assert_array_equal(out.view(np.uint32), src.astype(np.float32).view(np.uint32))


def test_half_products_and_updates_match_dense_float64_products_across_threads_and_tiles(monkeypatch):
    monkeypatch.setattr(basis_mod, "_cores", lambda: 3)  # three column ranges in threads
    monkeypatch.setattr(basis_mod, "_TILE_BYTES", 4096)  # several tiles in each
    rng = np.random.default_rng(1)
    P = 3 * 4096 + 77
    h = HalfBlocks(2)
    for _ in range(5):
        h.append((rng.standard_normal((4, P)) / np.sqrt(P)).astype(np.float32))
    Q = np.concatenate([G for _, G in h.sweep()]).astype(np.float64)  # 3 blocks rounded, 2 exact
    assert h.half_count == 3 and np.abs(Q[:12] - Q[:12].astype(np.float16)).max() == 0
    W = rng.standard_normal((3, P)).astype(np.float32)
    np.testing.assert_allclose(h.products(W), Q @ W.T.astype(np.float64), rtol=0, atol=1e-5)
    C = rng.standard_normal((20, 2))
    out = rng.standard_normal((2, P)).astype(np.float32)
    want = out + C.T @ Q
    np.testing.assert_allclose(h.accumulate(C, out), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(combine(C, h, np.float32), C.T @ Q, rtol=0, atol=1e-5)
    assert max_overlap(W, h) == pytest.approx(float(np.abs(Q @ W.T).max()), rel=1e-5)


def test_half_blocks_refuse_entries_float16_cannot_hold():
    for bad in (7e4, np.nan, np.inf):
        with pytest.raises(ValueError, match="float16's range"):
            HalfBlocks(0).append(np.array([[0.5, bad]], np.float32))


def test_half_basis_keeps_orthogonality_and_gives_the_full_runs_counts_and_sigma():
    """The spectrum on which the run without a basis loses orthogonality at once (σ up to 30)."""
    s, J = _gapped()
    op = dense_operator(J.astype(np.float32))
    V0 = rademacher(8, s.size, 0, np.float32)
    store = _Recording()
    half = BlockLanczosState.start(V0, blocks=store)
    for _ in range(30):
        block_lanczos_step(half, without_side(op))
    full = block_lanczos(op, V0, 30)
    window = block_lanczos(op, V0, 30, basis="window")
    # orthogonality of every block, measured exactly, stays at the float16 rounding (≈ 2⁻¹¹)
    assert 0 < store.rounding < 1e-3
    assert store.measured_loss() <= 4 * store.rounding
    true_next = float(np.abs(np.concatenate(store.seen) @ half.next_block.T.astype(np.float64)).max())
    assert true_next <= max_overlap(half.next_block, half.blocks) + store.rounding  # the reported bound holds
    # the same run without the old blocks has lost it: the ghosts come back in the top list
    raw = extreme_triplets(window, 6, vectors=False)
    assert np.sum(np.abs(raw.sigma - s[0]) < 1e-5 * s[0]) >= 2
    top = extreme_triplets(half, 20, vectors=True)  # no copies to skip
    np.testing.assert_allclose(top.sigma, s[:20], rtol=2e-6)
    ch, cf = region_counts(quadrature(half)), region_counts(quadrature(full))
    for r in ch:
        assert abs(ch[r]["count"] - cf[r]["count"]) < 1e-3 * s.size, (r, ch[r]["count"], cf[r]["count"])


def test_verified_triplets_measure_their_residuals_and_left_vectors_by_products():
    s, J = _gapped()
    J32 = J.astype(np.float32)
    op = dense_operator(J32)
    state = block_lanczos(op, rademacher(8, s.size, 0, np.float32), 30, basis="half")
    top = extreme_triplets(state, 10, vectors=True)
    v = verified(top, op, 8)
    V = v.V.astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(V, axis=1), 1, rtol=1e-6)
    dense = np.linalg.norm(V @ J.T @ J - (top.sigma[:, None] ** 2) * V, axis=1)  # independent: float64 J
    np.testing.assert_allclose(v.residuals, dense, rtol=1e-2, atol=1e-4 * s[0] ** 2)
    np.testing.assert_allclose(v.U, (V @ J.T) / top.sigma[:, None], atol=1e-5)
    assert v.rel_residuals.max() < 1e-3  # the float16 rounding of V, well within "converged"
    assert v.rel_residuals.max() > 10 * top.rel_residuals.max()  # which the projected residual does not see
    assert v.sigma is top.sigma


def test_analyze_scale_with_a_half_basis_resumes_and_matches_the_full_basis(tmp_path):
    recipe, theta0 = tiny_recipe(epochs=3)
    with jax.enable_x64(True):
        J = np.asarray(jax.jit(jax.jacfwd(recipe.train))(jax.numpy.asarray(theta0, np.float64)))
    U, S, Vt = np.linalg.svd(J)
    kw = dict(method="slq", rank=3, probes=3, steps=9, dtype=np.float64, progress=False,
              devices=jax.devices()[:1])
    with pytest.raises(KeyboardInterrupt):
        analyze_scale(recipe, theta0, tmp_path / "a", stop_after=5, basis="half", **kw)
    ck = tmp_path / "a" / "checkpoint"
    assert len(list(ck.glob("Q_*.npy"))) == 3 and len(list(ck.glob("Qh_*.npy"))) == 3
    assert np.load(ck / "Qh_0000.npy").dtype == np.float16 and not list(ck.glob("side_*"))
    s = analyze_scale(recipe, theta0, tmp_path / "a", resume=True, basis="half", **kw)
    once = analyze_scale(recipe, theta0, tmp_path / "b", basis="half", **kw)
    full = analyze_scale(recipe, theta0, tmp_path / "c", basis="memory", **kw)
    assert s["lanczos"]["steps_resumed"] == 5
    for name in ("slq_nodes", "top_V", "top_U"):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / f"{name}.npy"), np.load(tmp_path / "b" / f"{name}.npy"))
    np.testing.assert_allclose(once["top"]["sigma"], S[:3], rtol=1e-6)
    V = np.load(tmp_path / "b" / "top_V.npy")
    np.testing.assert_allclose(np.abs(np.sum(V * Vt[:3], axis=1)), 1, atol=1e-3)
    for r in ("chaotic", "bulk", "stable"):
        assert abs(once[r]["count"] - full[r]["count"]) < 1e-2 * recipe.num_params, (r, once[r], full[r])
    orth = json.loads((tmp_path / "b" / "summary.json").read_text())["lanczos"]["orthogonality"]
    assert orth["basis_stored"].startswith("float16") and 0 < orth["rounding"] < 1e-3
    assert orth["bound"] == pytest.approx(orth["next_block_overlap"] + orth["rounding"])
    assert orth["verification_products"] == 1 and once["lanczos"]["products_timed"] == 9  # 3 vectors, blocks of 3
    assert once["lanczos"]["basis"]["mode"] == "half" and not any("not stored" in w for w in once["warnings"])
    with pytest.raises(ValueError, match="slq method only"):
        analyze_scale(recipe, theta0, tmp_path / "d", basis="half", **{**kw, "method": "lanczos"})


def test_a_half_basis_that_cannot_fit_the_budget_stops_with_one_clear_error():
    # 10 GiB budget, 1 GiB in use; a step adds 2 probes x 2^28 entries x 2 bytes = 1 GiB in float16
    budget = MemoryBudget(10, "half", row_bytes=4 * 2**28, block=2, readoff_rows=0, itemsize=4)
    assert budget.step_bytes == 2**30
    assert not budget.check_start(8, peak_bytes=2**30)  # 1 + 8 ≤ 10: it fits, in memory
    with pytest.raises(MemoryBudgetError, match="float16 Krylov basis of 12 more block steps.*--basis disk"):
        budget.check_start(12, peak_bytes=2**30)
    with pytest.raises(MemoryBudgetError, match="--resume"):
        budget.check(2, 12, peak_bytes=2**30)  # 10 more steps: 1 + 10 > 10
