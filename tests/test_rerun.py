"""`trainmap rerun DIR` replays the command recorded in config.json and compares summary.json."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from trainmap import results
from trainmap.cli import app, main
from trainmap.commands.rerun import _with_out, compare_summaries

runner = CliRunner()
TINY = ["jacobian", "--hidden", "3", "--epochs", "1", "--batch-size", "400"]


def _run_cli(monkeypatch, args):
    monkeypatch.setitem(results.RUN_COMMAND, "args", None)  # restored after the test
    monkeypatch.setattr(sys, "argv", ["trainmap", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (0, None)


@pytest.mark.slow  # opt-in (the default suite reruns an analyze folder in tests/test_report_browser.py)
def test_rerun_reproduces_summary_and_catches_a_changed_number(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run_cli(monkeypatch, [*TINY, "--out", "orig"])
    cfg = json.loads((tmp_path / "orig" / "config.json").read_text())
    assert cfg["command"] == {"args": [*TINY, "--out", "orig"], "cwd": str(tmp_path)}
    res = runner.invoke(app, ["rerun", str(tmp_path / "orig"), "--out", str(tmp_path / "again")])
    assert res.exit_code == 0 and "the same as the original" in res.output, res.output
    assert (tmp_path / "again" / "jacobian.npy").exists()
    orig = json.loads((tmp_path / "orig" / "summary.json").read_text())
    moved = {**json.loads((tmp_path / "again" / "summary.json").read_text())}
    moved["sigma_max"] = orig["sigma_max"] * 1.01  # a number that moved: the comparison the command makes
    assert compare_summaries(orig, moved, 1e-5) == [f"sigma_max: {orig['sigma_max']!r} -> {moved['sigma_max']!r}"]


def test_rerun_of_a_folder_without_a_command_is_one_error_line(tmp_path):
    results.open_results(tmp_path / "py", "new", kind="x", config={"a": 1}).finish({"n": 1})
    res = runner.invoke(app, ["rerun", str(tmp_path / "py")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "records no command" in res.output


def test_compare_and_out_replacement(tmp_path):
    old = {"a": 1.0, "b": {"c": [1.0, 2.0]}, "wall_time_s": {"total": 3.0}, "name": "x"}
    assert compare_summaries(old, {**old, "wall_time_s": {"total": 9.0}}, 1e-6) == []
    assert compare_summaries(old, {**old, "b": {"c": [1.0, 2.1]}}, 1e-6) == ["b.c[1]: 2.0 -> 2.1"]
    assert compare_summaries(old, {**old, "name": "y"}, 1e-6) == ["name: 'x' -> 'y'"]
    args = ["jacobian", "--out", "r/j", "--resume", "change", "--out", "r/c"]
    assert _with_out(args, tmp_path / "r" / "c", tmp_path / "new", tmp_path) == \
        ["jacobian", "--out", "r/j", "change", "--out", str(tmp_path / "new")]
    assert _with_out(["jacobian"], tmp_path / "results" / "jacobian", tmp_path / "n", tmp_path) == \
        ["jacobian", "--out", str(tmp_path / "n")]
