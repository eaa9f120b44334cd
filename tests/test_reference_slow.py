"""Opt-in (``pytest -m slow``, ~3 minutes): the reference experiment lands in the published picture."""

from __future__ import annotations

import pytest

from trainmap.jacobian.analysis import analyze
from trainmap.presets import digits_mlp


@pytest.mark.slow
def test_reference_run_reproduces_the_published_picture(tmp_path):
    s = digits_mlp()
    d = s.data
    summary = analyze(s.recipe, s.theta0, tmp_path / "ref", progress=False,
                      eval_sets={"test": (d.x_test, d.y_test)})
    P = summary["num_params"]
    assert P == 4810
    assert 0.55 <= summary["bulk"]["fraction"] <= 0.70
    assert 300 <= summary["chaotic"]["count"] <= 1500
    assert 300 <= summary["stable"]["count"] <= 1500
    assert summary["bulk"]["median_abs_cos_uv"] > 0.99
    assert summary["metrics"]["test"]["after"]["accuracy"] > 0.90
