"""`trainmap jacobian` end to end on a small configuration, through the real CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from trainmap.cli import app

runner = CliRunner()
SMALL = ["jacobian", "--hidden", "4", "--epochs", "1", "--batch-size", "200", "--chunk-size", "64"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One finished ``trainmap jacobian`` run of SMALL, shared read-only by the tests below."""
    out = tmp_path_factory.mktemp("small") / "run"
    res = runner.invoke(app, [*SMALL, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_cli_writes_a_complete_results_folder(small_run):
    out = small_run
    for name in ("config.json", "summary.json", "jacobian.npy", "singular_values.npy", "svd_U.npy",
                 "svd_Vt.npy", "regions.npy", "cos_uv.npy", "delta_proj.npy", "spectrum.png",
                 "sigma_minus_one.png", "cos_uv.png", "sigma_histogram.png", "training_loss.png", "report.html"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    P = summary["num_params"]
    assert P == 64 * 4 + 4 + 4 * 10 + 10
    assert sum(summary[r]["count"] for r in ("chaotic", "bulk", "stable")) == P
    for key in ("sigma_max", "sigma_min", "metrics", "wall_time_s"):
        assert key in summary
    assert set(summary["metrics"]) == {"train", "test"}
    S = np.load(out / "singular_values.npy")
    assert summary["sigma_max"] == float(S[0])
    J = np.load(out / "jacobian.npy")
    np.testing.assert_allclose(np.linalg.svd(J, compute_uv=False), S, rtol=1e-4, atol=1e-5)
    assert not (out / "checkpoint").exists()
    assert "data:image/png;base64" in (out / "report.html").read_text()
    assert not list(out.glob(".*.tmp"))  # no temp files left behind


def test_cli_refuses_to_overwrite_without_flag_and_resume_finishes(tmp_path, small_run):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(small_run, out)
    again = runner.invoke(app, [*SMALL, "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, [*SMALL, "--out", str(out), "--overwrite"]).exit_code == 0


def test_cli_resume_with_other_options_is_refused(tmp_path, small_run):
    import pytest

    from trainmap.jacobian.analysis import analyze
    from trainmap.presets import digits_mlp

    out = tmp_path / "run"
    s = digits_mlp(hidden=4, epochs=1, batch_size=200)
    with pytest.raises(KeyboardInterrupt):
        analyze(s.recipe, s.theta0, out, chunk_size=64, progress=False, stop_after=1)
    other = runner.invoke(app, [*SMALL[:-2], "--chunk-size", "32", "--out", str(out), "--resume"])
    assert other.exit_code == 2 and "differs" in other.output
    done = runner.invoke(app, [*SMALL, "--out", str(out), "--resume"])
    assert done.exit_code == 0, done.output
    assert np.load(out / "jacobian.npy").tobytes() == np.load(small_run / "jacobian.npy").tobytes()


@pytest.mark.slow  # opt-in (every engine route is pinned bit for bit by tests/test_baseline.py)
def test_cli_engine_options_give_the_same_matrix(tmp_path):
    fwd, rev = tmp_path / "fwd", tmp_path / "rev"
    assert runner.invoke(app, [*SMALL, "--out", str(fwd)]).exit_code == 0
    res = runner.invoke(app, [*SMALL, "--out", str(rev), "--mode", "reverse", "--primal", "shared"])
    assert res.exit_code == 0, res.output
    assert json.loads((rev / "config.json").read_text())["mode"] == "reverse"
    np.testing.assert_allclose(np.load(rev / "jacobian.npy"), np.load(fwd / "jacobian.npy"),
                               rtol=1e-5, atol=1e-6)
    bad = runner.invoke(app, [*SMALL, "--out", str(tmp_path / "bad"), "--mode", "reverse",
                              "--primal", "per_chunk"])
    assert bad.exit_code == 2 and "reverse mode" in bad.output


def test_options_the_method_ignores_are_refused(tmp_path):
    """--chunk-size means nothing to the matrix-free route, --probes nothing to the exact one."""
    out = tmp_path / "never"
    for args, flag in ((["--method", "slq", "--chunk-size", "32"], "--chunk-size"),
                       (["--probes", "4"], "--probes"),
                       (["--method", "lanczos", "--mode", "reverse", "--primal", "shared"], "--mode, --primal")):
        res = runner.invoke(app, [*SMALL[:-2], *args, "--out", str(out)])
        assert res.exit_code == 2 and flag in res.output, res.output
        assert not out.exists()  # refused before anything is written


def test_bulk_tol_may_be_given_more_than_once(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, [*SMALL, "--bulk-tol", "0.05", "--bulk-tol", "0.2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["thresholds"] == {"stable_below": 0.8, "chaotic_above": 1.2}  # regions: the largest
    assert set(s["authors"]["bulk_counts"]) == {"0.2", "0.05"}
    S = np.load(out / "singular_values.npy")
    assert s["authors"]["bulk_counts"]["0.05"]["count"] == int(np.sum(np.abs(S - 1) <= 0.05))
    assert "authors' statistics" in res.output


def test_cli_choices_equal_their_sources_and_start_up_imports_no_jax():
    """The choice lists are written in the CLI (their sources import JAX); they must not drift."""
    import subprocess
    import sys

    from trainmap.commands import jacobian as cmd
    from trainmap.data.digits import SPLITS
    from trainmap.jacobian.exact.plan import MODES, PRIMALS
    from trainmap.jacobian.matrix_free.pipeline import BASES
    from trainmap.models.mlp import INITS
    from trainmap.optimizers import OPTIMIZERS

    for enum, source in ((cmd.Optimizer, OPTIMIZERS), (cmd.Init, INITS), (cmd.Split, SPLITS),
                         (cmd.Mode, MODES), (cmd.Primal, PRIMALS), (cmd.Basis, BASES)):
        assert {e.value for e in enum} == set(source), enum
    run = subprocess.run([sys.executable, "-c", "import sys, trainmap.cli; print('jax' in sys.modules)"],
                         capture_output=True, text=True)
    assert run.stdout.strip() == "False", run.stderr


def test_cli_without_vectors_writes_the_same_spectrum_and_no_vectors(tmp_path, small_run):
    from trainmap.jacobian import load_svd

    out = tmp_path / "nov"
    res = runner.invoke(app, [*SMALL, "--no-save-vectors", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert not (out / "svd_U.npy").exists() and not (out / "svd_Vt.npy").exists()
    for name in ("singular_values.npy", "regions.npy", "cos_uv.npy", "delta_proj.npy", "jacobian.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(small_run / name))
    assert json.loads((out / "config.json").read_text())["save_vectors"] is False
    assert "save_vectors" not in json.loads((small_run / "config.json").read_text())  # default: unchanged
    with pytest.raises(ValueError, match="no-save-vectors"):
        load_svd(out)
    res = runner.invoke(app, [*SMALL, "--method", "slq", "--no-save-vectors", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--save-vectors are not read by --method slq" in res.output
