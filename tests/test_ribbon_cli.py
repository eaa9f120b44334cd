"""The ribbon commands write complete results folders (tiny sizes)."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from trainmap.commands.ribbon import app
from trainmap.record import predictions_from_arrays


def test_embed_and_linear_commands(tmp_path):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 9)
    s = np.linspace(0, 1, 6)[None, :, None, None]
    logits = 4 * s * np.eye(3)[targets][None, None] + rng.normal(size=(2, 1, 9, 3))
    paths = []
    for i in range(2):  # t0.zarr holds two runs, t1.zarr one
        traj = predictions_from_arrays(logits=logits[i:2] + 0 * s, targets=targets, probe=np.arange(9))
        paths.append(str(traj.save(tmp_path / f"t{i}.zarr")))
    runner = CliRunner()
    res = runner.invoke(app, ["embed", *paths, "--out", str(tmp_path / "emb"), "--components", "4", "--references"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "emb" / "summary.json").read_text())
    assert summary["num_points"] == 3 * 6 + 2 and 0 < summary["chi_3"] <= 1
    for f in ("report.html", "embedding3d.png", "spectrum.png", "captions.json", "embedding.npy", "progress.npy"):
        assert (tmp_path / "emb" / f).exists(), f
    # the interactive view: coloured by condition (input store), each condition once in the legend
    view = json.loads((tmp_path / "emb" / "embedding3d.plotly.json").read_text())
    runs = [t for t in view["data"] if t.get("legendgroup")]
    assert [t["legendgroup"] for t in runs] == ["t0", "t0", "t1"]
    assert [t["showlegend"] for t in runs] == [True, False, True]
    assert runs[0]["line"]["color"] == runs[1]["line"]["color"] != runs[2]["line"]["color"]
    page = (tmp_path / "emb" / "report.html").read_text()
    assert page.count("Plotly.newPlot(") == 1  # the explicit view replaces the index-coloured one

    res = runner.invoke(app, ["linear", "--decay", "0.3", "--scale", "3", "--steps", "30", "--dim", "24",
                              "--runs", "4", "--records", "9", "--out", str(tmp_path / "lin")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "lin" / "summary.json").read_text())
    assert summary["max_rel_diff_top5"] < 1e-6
    assert summary["closed_form_vs_gd_max_abs"] < 1e-10
    assert summary["kernel_closed_form_vs_gd_max_abs"] < 1e-10
    assert (tmp_path / "lin" / "report.html").exists()


def test_phase_diagram_command(tmp_path):
    res = CliRunner().invoke(app, ["phase-diagram", "--decays", "0,2", "--scales", "0.1,30", "--steps", "10",
                                   "--dim", "16", "--runs", "4", "--records", "6", "--out", str(tmp_path / "pd")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "pd" / "summary.json").read_text())
    assert summary["cells"] == 4
    assert (tmp_path / "pd" / "phase_diagram.png").exists() and (tmp_path / "pd" / "report.html").exists()
