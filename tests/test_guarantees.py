"""What trainmap promises about a user's files and inputs (docs/guarantees.md), one test per case:
no folder it did not write is emptied, no two runs are spliced, what is read back is checksummed,
recovery is never a dead end, and bad input is one clear error, never garbage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from typer.testing import CliRunner

from conftest import tiny_recipe
from trainmap.cli import app
from trainmap.jacobian import analyze, exact_jacobian
from trainmap.jacobian.exact import CheckpointError, ChunkStore
from trainmap.models import mlp
from trainmap.recipe import flat_params, make_recipe
from trainmap.results import FolderError, IntegrityError

runner = CliRunner()
SMALL = ["jacobian", "--hidden", "4", "--epochs", "1", "--batch-size", "200"]


def _sgd_recipe(lr: float):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=24).astype(np.int32)
    model = mlp((5, 4, 3))
    theta0, unravel = flat_params(model.init, 0)
    # the same config for both learning rates: only the step's program tells them apart
    return make_recipe(model.apply, unravel, theta0.size, x, y, optax.sgd(lr), batch_size=8, epochs=2,
                       config={"name": "same"}), theta0


# ----------------------------------------------------------------------------- 2. run identity
@pytest.mark.slow  # opt-in: `pytest -m slow` (keeps the default suite under its budget)
def test_resume_with_another_optimizer_built_in_python_is_refused(tmp_path):
    r1, theta0 = _sgd_recipe(0.1)
    with pytest.raises(KeyboardInterrupt):
        analyze(r1, theta0, tmp_path / "run", chunk_size=8, progress=False, stop_after=1)
    r2, _ = _sgd_recipe(0.5)
    assert r1.fingerprint() != r2.fingerprint() and r1.config == r2.config
    with pytest.raises(FolderError, match="recipe_fingerprint"):
        analyze(r2, theta0, tmp_path / "run", chunk_size=8, progress=False, resume=True)
    # the same recipe resumes, and gives the matrix of an uninterrupted run
    s = analyze(r1, theta0, tmp_path / "run", chunk_size=8, progress=False, resume=True)
    clean = analyze(r1, theta0, tmp_path / "clean", chunk_size=8, progress=False)
    assert s["sigma_max"] == clean["sigma_max"]


# ----------------------------------------------------------------------------- 4. checksums
def test_an_edited_jacobian_is_not_reused_on_resume(tmp_path):
    recipe, theta0 = tiny_recipe()
    analyze(recipe, theta0, tmp_path / "run", progress=False)
    J = np.load(tmp_path / "run" / "jacobian.npy")
    J[0, 0] = 1000.0  # finite and plausible-looking
    np.save(tmp_path / "run" / "jacobian.npy", J)
    with pytest.raises(IntegrityError, match="jacobian.npy"):
        analyze(recipe, theta0, tmp_path / "run", progress=False, resume=True)


def test_edited_lanczos_checkpoints_are_refused(tmp_path):
    from trainmap.jacobian.matrix_free.pipeline import analyze_scale

    recipe, theta0 = tiny_recipe()
    kw = dict(method="slq", rank=2, probes=2, steps=6, progress=False, devices=jax.devices()[:1])
    with pytest.raises(KeyboardInterrupt):
        analyze_scale(recipe, theta0, tmp_path / "a", stop_after=3, **kw)
    coeff = tmp_path / "a" / "checkpoint" / "coeff_0001.npy"
    a = np.load(coeff)
    np.save(coeff, a * 1.5)
    with pytest.raises(CheckpointError, match="checksum"):
        analyze_scale(recipe, theta0, tmp_path / "a", resume=True, **kw)


def test_float64_retries_are_counted_across_a_resume(tmp_path, monkeypatch):
    """Every float32 block is made to fail the check: the summary counts the blocks of both runs."""
    from trainmap.jacobian.matrix_free import operator
    from trainmap.jacobian.matrix_free.pipeline import analyze_scale

    monkeypatch.setattr(operator, "gram_consistent", lambda V, AV, JV: np.zeros(len(V), bool))
    recipe, theta0 = tiny_recipe()
    kw = dict(method="slq", rank=2, probes=2, steps=5, progress=False, devices=jax.devices()[:1])
    with pytest.raises(KeyboardInterrupt):
        analyze_scale(recipe, theta0, tmp_path / "a", stop_after=3, **kw)
    analyze_scale(recipe, theta0, tmp_path / "a", resume=True, **kw)
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["lanczos"]["steps_resumed"] == 3 and s["lanczos"]["float64_retries"] == 5


def test_zarr_chunks_are_checksummed_and_missing_chunks_are_errors(tmp_path):
    from trainmap.record.store import PredictionTrajectory, Trajectory

    t = Trajectory(np.random.default_rng(0).random((2, 10, 3)).astype(np.float32), np.arange(10))
    p = t.save(tmp_path / "a.zarr", chunk_steps=4)
    chunk = p / "features" / "c" / "1" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="'features' could not be read"):
        Trajectory.load(p)
    chunk.unlink()
    with pytest.raises(ValueError, match="run 1, steps 4..7"):
        Trajectory.load(p)
    probs = np.full((1, 3, 4, 2), 0.5, np.float32)
    q = PredictionTrajectory(probs, np.arange(3), ["r"], np.array([0, 1, 0, 1])).save(tmp_path / "p.zarr")
    (q / "targets" / "c" / "0").unlink()
    with pytest.raises(ValueError, match="'targets' is missing"):
        PredictionTrajectory.load(q)


def test_stores_open_in_xarray(tmp_path):
    xr = pytest.importorskip("xarray")
    from trainmap.record.store import PredictionTrajectory, Trajectory

    t = Trajectory(np.zeros((2, 5, 3), np.float32), np.arange(5))
    ds = xr.open_zarr(t.save(tmp_path / "t.zarr"), consolidated=False)
    assert ds["features"].dims == ("run", "step", "feature")
    q = PredictionTrajectory(np.full((1, 3, 4, 2), 0.5, np.float32), np.arange(3), ["r"], np.array([0, 1, 0, 1]))
    ds = xr.open_zarr(q.save(tmp_path / "p.zarr"), consolidated=False)
    assert ds["probs"].dims == ("run", "step", "sample", "class") and ds["targets"].dims == ("sample",)


# ----------------------------------------------------------------------------- 5. recovery
def test_delete_a_corrupt_chunk_and_resume_recomputes_it(tmp_path):
    recipe, theta0 = tiny_recipe()
    clean = exact_jacobian(recipe, theta0, chunk_size=8, progress=False)
    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        exact_jacobian(recipe, theta0, chunk_size=8, progress=False, checkpoint_dir=ck, stop_after=2)
    chunk = ck / "chunk_00000.npy"
    np.save(chunk, np.load(chunk) + 1)
    with pytest.raises(CheckpointError, match="delete chunk_00000.npy"):
        exact_jacobian(recipe, theta0, chunk_size=8, progress=False, checkpoint_dir=ck, resume=True)
    chunk.unlink()  # as the message says
    J = exact_jacobian(recipe, theta0, chunk_size=8, progress=False, checkpoint_dir=ck, resume=True)
    np.testing.assert_array_equal(J, clean)


# ----------------------------------------------------------------------------- 6. validate first
def test_a_refused_cli_rerun_leaves_the_interrupted_run_resumable(tmp_path):
    out = tmp_path / "run"
    from trainmap.presets import digits_mlp

    s = digits_mlp(hidden=4, epochs=1, batch_size=200)
    with pytest.raises(KeyboardInterrupt):
        analyze(s.recipe, s.theta0, out, chunk_size=64, progress=False, stop_after=1)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    res = runner.invoke(app, [*SMALL, "--lr", "0.5", "--chunk-size", "64", "--out", str(out)])
    assert res.exit_code == 2 and "--resume" in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    ok = runner.invoke(app, [*SMALL, "--chunk-size", "64", "--out", str(out), "--resume"])
    assert ok.exit_code == 0, ok.output


# ----------------------------------------------------------------------------- 7. labels
@pytest.mark.parametrize("bad", [-1, 99, 3])
def test_labels_outside_the_model_classes_are_refused_with_the_right_cause(bad):
    recipe, theta0 = tiny_recipe()  # 3 classes
    y = np.asarray(recipe.y).copy()
    y[5] = bad
    wrong = recipe.with_data(y=y)
    for call in (lambda: wrong.train(theta0), lambda: exact_jacobian(wrong, theta0, progress=False)):
        with pytest.raises(ValueError, match=r"outside \[0, 3\).*y\[5\]"):
            call()


# ----------------------------------------------------------------------------- 8. statistics options
def test_statistics_options_are_validated():
    from trainmap.koopman import ObservableConfig, permutation_test
    from trainmap.ribbon.linear import make_linear_problem

    spectra = [np.array([0.9, 0.5]) + 0.01 * i for i in range(4)]
    for kw, msg in (({"n_permutations": 0}, "n_permutations"), ({"alpha": 1.5}, "alpha"), ({"alpha": 0}, "alpha")):
        with pytest.raises(ValueError, match=msg):
            permutation_test(spectra, [0, 0, 1, 1], **kw)
    for kw in ({"pca": 0}, {"projection": 0}, {"rank": 0}, {"delays": -1}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            ObservableConfig(**kw)
    for kw, msg in (({"num_steps": 0}, "steps"), ({"runs": 1}, "runs"), ({"lr_factor": 10}, "diverges")):
        with pytest.raises(ValueError, match=msg):
            make_linear_problem(20, **kw)


# ----------------------------------------------------------------------------- 9. one error line
@pytest.mark.parametrize("args", [["--hidden", "-1"], ["--epochs", "0"], ["--batch-size", "0"],
                                  ["--batch-size", "5000"], ["--memory-gb", "0"]])
def test_bad_jacobian_options_are_one_error_line(tmp_path, args):
    out = tmp_path / "never"
    res = runner.invoke(app, [*SMALL, *args, "--out", str(out)])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()


def test_ribbon_and_koopman_errors_are_one_line(tmp_path):
    res = runner.invoke(app, ["ribbon", "linear", "--steps", "0", "--out", str(tmp_path / "l")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "steps" in res.output
    from trainmap.record.store import Trajectory

    p = Trajectory(np.random.default_rng(0).random((2, 10, 3)), np.arange(10)).save(tmp_path / "t.zarr", chunk_steps=4)
    (p / "features" / "c" / "0" / "1" / "0").write_bytes(b"\x28\xb5\x2f\xfd truncated")
    res = runner.invoke(app, ["koopman", "spectrum", str(p), "--out", str(tmp_path / "k")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "Traceback" not in res.output
    res = runner.invoke(app, ["koopman", "compare", str(p), str(p), "--alpha", "2", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and res.output.startswith("error: ")


def test_an_unusable_out_path_is_one_error_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = runner.invoke(app, [*SMALL, "--chunk-size", "64", "--out", str(blocker / "sub")])
    assert res.exit_code == 2 and res.output.startswith("error: ")


def test_debug_shows_the_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "trainmap.cli", "--debug", *SMALL, "--epochs", "0",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert run.returncode != 0 and "Traceback" in run.stderr
    run = subprocess.run([sys.executable, "-m", "trainmap.cli", *SMALL, "--epochs", "0",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.startswith("error: ")


# ----------------------------------------------------------------------------- 10. smaller cases
def test_stale_temporary_files_are_removed_on_resume(tmp_path):
    recipe, theta0 = tiny_recipe()
    with pytest.raises(KeyboardInterrupt):
        analyze(recipe, theta0, tmp_path / "run", chunk_size=8, progress=False, stop_after=1)
    stale = tmp_path / "run" / ".jacobian.npy.abc123.tmp"  # what a SIGKILL mid-stream leaves
    stale.write_bytes(b"\0" * 1000)
    analyze(recipe, theta0, tmp_path / "run", chunk_size=8, progress=False, resume=True)
    assert not stale.exists()


def test_report_links_are_never_script_urls(tmp_path):
    from trainmap.report.html import _href

    assert _href("javascript:alert(1)") == "./javascript%3Aalert%281%29"  # a relative file name
    assert _href("ood/report.html") == "./ood/report.html"


def test_inpca_refuses_complex_input():
    from trainmap.ribbon import InPCA

    with pytest.raises(ValueError, match="complex"):
        InPCA(2).fit(np.full((3, 4, 2), 0.5 + 0.1j))


def test_check_command_reports_an_edited_file(tmp_path):
    recipe, theta0 = tiny_recipe()
    analyze(recipe, theta0, tmp_path / "run", progress=False)
    ok = runner.invoke(app, ["check", str(tmp_path / "run")])
    assert ok.exit_code == 0 and "intact" in ok.output
    np.save(tmp_path / "run" / "thetaT.npy", np.zeros(recipe.num_params, np.float32))
    bad = runner.invoke(app, ["check", str(tmp_path / "run")])
    assert bad.exit_code == 1 and "thetaT.npy" in bad.output


def test_check_command_passes_an_interrupted_run_and_its_chunk_checkpoint(tmp_path):
    """The exact engine's chunk checkpoint keeps its own record (chunks.json, not a results
    folder's manifest.json): an interrupted, resumable run is intact, not a broken results folder;
    a checkpoint from an earlier version, under manifest.json, is renamed and resumed."""
    recipe, theta0 = tiny_recipe()
    with pytest.raises(KeyboardInterrupt):
        analyze(recipe, theta0, tmp_path / "run", chunk_size=8, progress=False, stop_after=1)
    ckpt = tmp_path / "run" / "checkpoint"
    assert (ckpt / "chunks.json").exists() and not (ckpt / "manifest.json").exists()
    res = runner.invoke(app, ["check", str(tmp_path / "run")])
    assert res.exit_code == 0 and "1 folder(s)/store(s) checked: intact" in res.output, res.output
    (ckpt / "chunks.json").rename(ckpt / "manifest.json")  # as an earlier version left it
    res = runner.invoke(app, ["check", str(tmp_path / "run")])
    assert res.exit_code == 0 and "intact" in res.output, res.output
    old = json.loads((ckpt / "manifest.json").read_text())
    store = ChunkStore(ckpt, recipe.num_params, old["chunk"], np.dtype(old["dtype"]), old["fingerprint"])
    store.open(resume=True)
    assert (ckpt / "chunks.json").exists() and not (ckpt / "manifest.json").exists()
    done = store.done()
    assert len(done) == 1 and done == {int(k): v for k, v in old["checksums"].items()}
    assert store.load(0, done[0]) is not None  # the finished chunk, read back checksummed
    with pytest.raises(CheckpointError, match="different run"):  # the fingerprint came along too
        ChunkStore(ckpt, recipe.num_params, old["chunk"], np.dtype(old["dtype"]), "other").open(resume=True)


# ----------------------------------------------------------------------------- signals
CMD = [sys.executable, "-m", "trainmap.cli", "jacobian", "--hidden", "8", "--epochs", "2", "--chunk-size", "8"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref"
    ref = subprocess.run([*CMD, "--out", str(out)], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    return np.load(out / "singular_values.npy")


@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
                                 pytest.param(signal.SIGINT, marks=pytest.mark.slow)])  # SIGTERM, SIGINT: opt-in
def test_a_signal_mid_run_then_resume_gives_the_same_matrix(tmp_path, sig, clean_run):
    """The OS interrupts a real process once chunks are on disk; --resume finishes bit-identically."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*CMD, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "checkpoint").glob("chunk_*.npy"))) < 3:
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be interrupted: " + proc.stderr.read().decode())
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(60)
    assert proc.returncode != 0
    if sig != signal.SIGKILL:  # unwound: no half-written J left behind, and it says how to continue
        assert not list(out.glob(".*.tmp"))
    assert not (out / "summary.json").exists()
    done = subprocess.run([*CMD, "--out", str(out), "--resume"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(out / "singular_values.npy"), clean_run)
    assert json.loads((out / "manifest.json").read_text())["finished"] is True
    assert not list(Path(out).glob(".*.tmp"))


# ----------------------------------------------------------------------------- 3. other lenses
def test_a_second_spectrum_is_refused_and_overwrite_leaves_no_stale_file(tmp_path):
    from trainmap.record.store import Trajectory

    rng = np.random.default_rng(0)
    many = Trajectory(rng.random((3, 30, 4)), np.arange(30)).save(tmp_path / "many.zarr")
    short = Trajectory(rng.random((2, 3, 4)), np.arange(3)).save(tmp_path / "short.zarr")
    out = tmp_path / "k"
    first = runner.invoke(app, ["koopman", "spectrum", str(many), "--rank", "3", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert (out / "per_run_eigenvalues.npy").exists()
    again = runner.invoke(app, ["koopman", "spectrum", str(short), "--rank", "3", "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    redo = runner.invoke(app, ["koopman", "spectrum", str(short), "--rank", "3", "--out", str(out), "--overwrite"])
    assert redo.exit_code == 0, redo.output
    assert not (out / "per_run_eigenvalues.npy").exists()  # 2 pairs per run < rank 3: no per-run spectra
    assert "per_run_eigenvalues" not in (out / "report.html").read_text()
