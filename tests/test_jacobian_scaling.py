"""The scaling study: exact points agree with a standalone analysis, matrix-free points carry
error bars, the table/figure/report are written, and a resumed study reuses finished points."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from trainmap.jacobian.scaling import Point, build, scaling_study


def _check_rows(rows: list[dict]) -> None:
    for r in rows:
        total = sum(r[f"{g}_fraction"] for g in ("chaotic", "bulk", "stable"))
        assert abs(total - 1) < (1e-9 if r["route"] == "exact" else 1e-6), r
        if r["route"] != "exact":
            assert r["bulk_fraction_err"] > 0 and r["bulk_median_abs_cos_uv"] is None, r


def test_study_exact_and_matrix_free_points_table_and_resume(tmp_path):
    from trainmap.jacobian.exact import exact_jacobian
    from trainmap.jacobian.regions import region_summary, svd

    pts = [Point("mlp", 4, 1), Point("mlp", 6, 1)]  # P = 330 (exact) and 502 (matrix-free)
    s = scaling_study(tmp_path / "s", pts, exact_max=400, probes=4, steps=6, progress=False)
    assert [(r["num_params"], r["route"]) for r in s["points"]] == [(330, "exact"), (502, "slq")]
    _check_rows(s["points"])
    rows = {"mlp": s["points"][0]}
    # an exact point is the SVD of the same run's J, computed here on its own
    recipe, theta0, _ = build(pts[0])
    ref = region_summary(svd(exact_jacobian(recipe, theta0, progress=False)))
    for g in ("chaotic", "bulk", "stable"):
        assert rows["mlp"][f"{g}_fraction"] == ref[g]["count"] / ref["num_params"]
    assert rows["mlp"]["bulk_median_abs_cos_uv"] == pytest.approx(ref["bulk"]["median_abs_cos_uv"])
    with open(tmp_path / "s" / "scaling.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(t["num_params"]) for t in table] == [r["num_params"] for r in s["points"]]
    assert (tmp_path / "s" / "scaling.png").stat().st_size > 10_000
    # resume with one more point: the finished points are reused, not recomputed
    done = [tmp_path / "s" / "points" / n / "summary.json" for n in ("mlp-w4", "mlp-w6")]
    before = [d.stat().st_mtime_ns for d in done]
    s2 = scaling_study(tmp_path / "s", [*pts, Point("mlp", 3, 1)], exact_max=400, probes=4, steps=6,
                       progress=False, resume=True)
    assert [d.stat().st_mtime_ns for d in done] == before
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["points"] == s2["points"]
    np.testing.assert_equal([r["num_params"] for r in s2["points"]], [247, 330, 502])


@pytest.mark.slow
def test_study_covers_the_cnn_and_the_transformer(tmp_path):
    pytest.importorskip("mnist1d")
    pts = [Point("cnn", 4, 1), Point("transformer", 8, 1)]  # P = 274 (exact), 3,536 (matrix-free)
    s = scaling_study(tmp_path / "s", pts, exact_max=1000, probes=4, steps=6, progress=False)
    assert {(r["family"], r["route"]) for r in s["points"]} == {("cnn", "exact"), ("transformer", "slq")}
    _check_rows(s["points"])


def test_the_sgd_transformer_differs_from_the_adam_one_only_in_its_optimizer():
    import jax
    import jax.numpy as jnp

    (adam, th_a, ev_a), (sgd, th_s, ev_s) = build(Point("transformer", 8, 1)), build(Point("transformer-sgd", 8, 1))
    np.testing.assert_array_equal(th_a, th_s)  # same model and initialisation
    np.testing.assert_array_equal(ev_a["train"][0], ev_s["train"][0])  # same data
    np.testing.assert_array_equal(np.asarray(adam.batches), np.asarray(sgd.batches))  # same batch order
    # one SGD-momentum step by hand (its first step is θ₀ − lr·g) is the recipe's first step
    x, y = ev_s["train"]
    idx = np.asarray(sgd.batches)[0]

    def loss(th):
        return sgd.loss(sgd.apply(sgd.unravel(th), jnp.asarray(x)[idx]), jnp.asarray(y)[idx])

    want = th_s - 0.05 * np.asarray(jax.grad(loss)(jnp.asarray(th_s)))
    got = np.asarray(sgd.step(sgd.init(jnp.asarray(th_s)), jnp.asarray(idx)).theta)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    first_adam = np.asarray(adam.step(adam.init(jnp.asarray(th_a)), jnp.asarray(idx)).theta)
    assert np.abs(first_adam - th_a).max() == pytest.approx(1e-3, rel=1e-2)  # Adam's first step: lr·sign(g)
