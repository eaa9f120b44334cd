"""`trainmap jacobian reproduce` and an experiment subcommand through the real CLI, tiny setup."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from trainmap.cli import app

runner = CliRunner()
TINY = ["jacobian", "--hidden", "2", "--epochs", "1", "--batch-size", "400", "--chunk-size", "80"]


@pytest.mark.slow  # opt-in: `pytest -m slow` (keeps the default suite under its budget)
def test_reproduce_subset_then_subcommand_reuses_the_main_jacobian(tmp_path):
    out = tmp_path / "rep"
    res = runner.invoke(app, [*TINY, "reproduce", "--out", str(out), "--only", "change,seeds",
                              "--seeds", "0,1"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    P = 64 * 2 + 2 + 2 * 10 + 10
    assert s["reference"]["num_params"] == P
    assert set(s["experiments"]) == {"change", "seeds"} == set(s["findings"])
    assert s["experiments"]["seeds"]["seeds"] == [0, 1]
    assert s["experiments"]["seeds"]["baseline"] == s["experiments"]["seeds"]["k"] / P
    frac = s["experiments"]["change"]["energy_fraction"]
    assert abs(sum(frac.values()) - 1) < 1e-4
    for name in ("findings.md", "report.html", "0_spectrum.png", "5_seed_cosines.png",
                 "jacobians/seed0/jacobian.npy", "jacobians/seed1/summary.json", "seeds/report.html", "seeds/summary.json"):
        assert (out / name).exists(), name
    # a second run refuses to overwrite; --resume reuses everything
    again = runner.invoke(app, [*TINY, "reproduce", "--out", str(out), "--only", "change"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    resumed = runner.invoke(app, [*TINY, "reproduce", "--out", str(out), "--only", "change,seeds",
                                  "--seeds", "0,1", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "reusing finished results" in resumed.output
    # a subcommand reuses the main Jacobian given as the group's --out
    jdir = out / "jacobians" / "seed0"
    sub = runner.invoke(app, [*TINY, "--out", str(jdir), "change", "--out", str(tmp_path / "c")])
    assert sub.exit_code == 0, sub.output
    assert "reusing" in sub.output and (tmp_path / "c" / "change_by_index.png").exists()
    # ... and refuses one computed for another setup
    other = runner.invoke(app, [*TINY[:2], "3", *TINY[3:], "--out", str(jdir), "change",
                                "--out", str(tmp_path / "c2")])
    assert other.exit_code == 2 and "different" in other.output
    bad = runner.invoke(app, [*TINY, "--out", str(jdir), "seeds", "--seeds", "4,4",
                              "--out", str(tmp_path / "s")])
    assert bad.exit_code == 2 and "two distinct seeds" in bad.output


@pytest.mark.slow  # opt-in: `pytest -m slow` (keeps the default suite under its budget)
def test_group_dtype_reaches_the_experiments_jacobian(tmp_path):
    """`trainmap jacobian --dtype float64 change` builds its main Jacobian in float64 (the group's
    options travel in an explicit setup object), and a float32 folder is not reused for it."""
    import numpy as np

    jdir, out = tmp_path / "main64", tmp_path / "change64"
    res = runner.invoke(app, [*TINY, "--dtype", "float64", "--out", str(jdir), "change", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((jdir / "config.json").read_text())["dtype"] == "float64"
    assert np.load(jdir / "jacobian.npy", mmap_mode="r").dtype == np.float64
    assert np.load(jdir / "singular_values.npy").dtype == np.float64
    assert json.loads((out / "config.json").read_text())["setup"]["dtype"] == "float64"
    # the same main folder asked for in float32: refused, with the reason
    again = runner.invoke(app, [*TINY, "--out", str(jdir), "change", "--out", str(tmp_path / "c32")])
    assert again.exit_code == 2 and "float64" in again.output


def test_reproduce_only_takes_the_subcommand_names():
    import typer

    from trainmap.commands.jacobian_experiments import ONLY_NAMES
    from trainmap.jacobian.experiments.reproduce import EXPERIMENTS

    group = typer.main.get_command(app).commands["jacobian"]
    names = set(group.commands) - {"reproduce", "scaling"}
    assert sorted(ONLY_NAMES.get(n, n) for n in names) == sorted(EXPERIMENTS)
