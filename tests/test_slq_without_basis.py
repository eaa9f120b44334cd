"""SLQ without a stored Krylov basis: each block orthogonalised against its two neighbours only.

Independent routes: dense ``eigvalsh``/``svd`` of explicit matrices, the fully reorthogonalised
run, and the measured orthogonality of every block of the run (recorded by the test, not kept by
the run).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from conftest import tiny_recipe
from trainmap.jacobian.matrix_free.basis import WindowBlocks
from trainmap.jacobian.matrix_free.lanczos import (
    BlockLanczosState,
    block_lanczos_step,
    dense_operator,
    extreme_triplets,
    orthogonality_loss,
    rademacher,
    without_side,
)
from trainmap.jacobian.matrix_free.pipeline import analyze_scale
from trainmap.jacobian.matrix_free.slq import slq_counts


def _matrix(s: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.normal(size=(s.size, s.size)))[0]
    V = np.linalg.qr(rng.normal(size=(s.size, s.size)))[0]
    return (U * s) @ V.T


def _gapped(P: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """A training-Jacobian-like spectrum: a chaotic tail up to 30 (fast convergence, so early
    loss of orthogonality), a bulk near 1 and a stable tail."""
    rng = np.random.default_rng(0)
    s = np.concatenate([np.geomspace(30, 1.2, P // 15), 1 + 0.05 * rng.standard_normal(2 * P // 3),
                        np.geomspace(0.85, 1e-3, P - P // 15 - 2 * P // 3)])
    return np.sort(s)[::-1], _matrix(s, 1)


class RecordingMixin:
    """A block store that also keeps an exact copy of every block, for a test to measure with."""

    @property
    def seen(self) -> list[np.ndarray]:
        """Every block appended so far, in float64."""
        return self.__dict__.setdefault("_seen", [])

    def append(self, block: np.ndarray) -> None:
        super().append(block)  # type: ignore[misc]
        self.seen.append(np.array(block, dtype=np.float64))

    def measured_loss(self) -> float:
        """max |q_iᵀ q_j − δ_ij| over every block appended so far."""
        Q = np.concatenate(self.seen)
        return float(np.abs(Q @ Q.T - np.eye(Q.shape[0])).max())


class _Recording(RecordingMixin, WindowBlocks):
    """A window store that also remembers every block."""


def test_window_blocks_keep_the_last_blocks_and_count_all():
    w = WindowBlocks(2)
    blocks = [np.full((3, 5), float(j)) for j in range(5)]
    for b in blocks:
        w.append(b)
    assert len(w) == 5 and w.rows == 15 and w.first_kept == 3
    np.testing.assert_array_equal(w[-1], blocks[4])
    np.testing.assert_array_equal(w[3], blocks[3])
    with pytest.raises(IndexError, match="last 2 blocks"):
        w[2]
    assert [(start, float(b[0, 0])) for start, b in w.sweep()] == [(9, 3.0), (12, 4.0)]
    resumed = WindowBlocks(2, count=3, blocks=blocks[3:])
    assert len(resumed) == 5 and [s for s, _ in resumed.sweep()] == [9, 12]
    none = WindowBlocks(0)
    none.append(blocks[0])
    assert len(none) == 1 and list(none.sweep()) == []


def test_counts_without_a_stored_basis_agree_with_eigvalsh_and_the_full_run():
    s, J = _gapped()
    ev = np.linalg.eigvalsh(J.T @ J)  # the independent route: σ² from a dense eigensolver
    exact = {"chaotic": int((ev > 1.21).sum()), "stable": int((ev < 0.81).sum())}
    exact["bulk"] = s.size - exact["chaotic"] - exact["stable"]
    op = dense_operator(J.astype(np.float32))
    kw = dict(num_probes=8, steps=30, seed=0, dtype=np.float32)
    window, full = slq_counts(op, s.size, basis="window", **kw), slq_counts(op, s.size, **kw)
    for r, n in exact.items():
        c = window[r]
        assert abs(c["count"] - n) < max(4 * c["std_err"], 0.05 * n), (r, c, n)
        assert abs(c["count"] - full[r]["count"]) < 2 * (c["std_err"] + full[r]["std_err"]), (r, c, full[r])
    assert abs(sum(window[r]["count"] for r in exact) - s.size) < 1e-4 * s.size


def test_paige_estimate_bounds_the_measured_loss_of_orthogonality():
    """On a spectrum without gaps the loss grows slowly; the estimate stays above the measured loss,
    within two orders of magnitude of it, in float32 and float64."""
    P = 600
    J = _matrix(np.sqrt(np.linspace(0.01, 4, P)), 2)
    for dt in (np.float32, np.float64):
        op = dense_operator(J.astype(dt))
        store = _Recording()
        state = BlockLanczosState.start(rademacher(4, P, 0, dt), blocks=store)
        for m in range(1, 55):
            block_lanczos_step(state, without_side(op))
            if m % 9 == 0:
                measured, est = store.measured_loss(), orthogonality_loss(state)
                floor = float(np.finfo(dt).eps)
                assert measured <= est <= 100 * max(measured, floor), (dt, m, measured, est)
        assert store.measured_loss() > 1e3 * float(np.finfo(dt).eps)  # it was lost, and tracked


def test_distinct_top_triplets_skip_the_copies_of_converged_values():
    s, J = _gapped()
    op = dense_operator(J.astype(np.float32))
    state = BlockLanczosState.start(rademacher(8, s.size, 0, np.float32), blocks=_Recording())
    for _ in range(30):
        block_lanczos_step(state, without_side(op))
    assert orthogonality_loss(state) > 0.1  # σ = 30 converged in the first steps: orthogonality is gone
    raw = extreme_triplets(state, 6, "top", vectors=False)
    assert np.sum(np.abs(raw.sigma - s[0]) < 1e-5 * s[0]) >= 2  # the copies the run produced
    top = extreme_triplets(state, 6, "top", vectors=False, distinct=True)
    assert top.repeats >= 1 and top.V.size == 0
    np.testing.assert_allclose(top.sigma, s[:6], rtol=1e-5)


def test_analyze_scale_without_a_basis_keeps_three_blocks_and_resumes(tmp_path):
    recipe, theta0 = tiny_recipe(epochs=3)
    with jax.enable_x64(True):
        J = np.asarray(jax.jit(jax.jacfwd(recipe.train))(jax.numpy.asarray(theta0, np.float64)))
    S = np.linalg.svd(J, compute_uv=False)
    kw = dict(method="slq", rank=3, probes=3, steps=9, dtype=np.float64, progress=False,
              devices=jax.devices()[:1], basis="none")
    with pytest.raises(KeyboardInterrupt):
        analyze_scale(recipe, theta0, tmp_path / "a", stop_after=4, **kw)
    assert len(list((tmp_path / "a" / "checkpoint").glob("Q_*.npy"))) == 3  # the window and the next block
    s = analyze_scale(recipe, theta0, tmp_path / "a", resume=True, **kw)
    once = analyze_scale(recipe, theta0, tmp_path / "b", **kw)
    assert s["lanczos"]["steps_resumed"] == 4 and s["lanczos"]["steps"] == 9
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "slq_nodes.npy"), np.load(tmp_path / "b" / "slq_nodes.npy"))
    assert len(list((tmp_path / "b" / "checkpoint").glob("Q_*.npy"))) == 3
    assert not (tmp_path / "b" / "top_V.npy").exists() and not list((tmp_path / "b" / "checkpoint").glob("side_*"))
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    orth = summary["lanczos"]["orthogonality"]
    assert not orth["basis_stored"] and 0 < orth["paige_estimate"] <= 1
    assert any("not stored" in w for w in summary["warnings"]) and summary["lanczos"]["basis"]["mode"] == "none"
    np.testing.assert_allclose(once["top"]["sigma"][0], S[0], rtol=1e-6)
    for r, n in {"chaotic": (S > 1.1).sum(), "stable": (S < 0.9).sum()}.items():
        lo, hi = once[r]["quadrature_range"]
        assert lo - 4 * once[r]["std_err"] - 1 <= n <= hi + 4 * once[r]["std_err"] + 1, (r, once[r], n)
    with pytest.raises(ValueError, match="slq method only"):
        analyze_scale(recipe, theta0, tmp_path / "c", **{**kw, "method": "lanczos"})


def test_a_non_finite_product_is_one_clear_error_that_names_the_reverse_pass():
    P = 50
    J = _matrix(np.linspace(0.5, 2, P), 3)

    def apply(X):  # J·v finite, JᵀJ·v broke down in the second row
        JX = X @ J.T
        out = JX @ J
        out[1, 3] = np.inf
        return out, JX

    state = BlockLanczosState.start(rademacher(3, P, 0))
    with pytest.raises(FloatingPointError, match=r"1 of 3 vectors \(J·v itself was finite: the float32 reverse pass broke down"):
        block_lanczos_step(state, apply)
    from trainmap.commands._common import USER_ERRORS

    assert FloatingPointError in USER_ERRORS  # the CLI prints it as one line, exit code 2
