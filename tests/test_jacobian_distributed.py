"""Two processes of one jax.distributed job (CPU collectives through gloo) give the one-process
estimates: `trainmap jacobian --method slq --local-processes 2` against the same command in one
process, both as a user runs them (subprocesses of ``python -m trainmap``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

ARGS = ["jacobian", "--hidden", "4", "--epochs", "1", "--batch-size", "200", "--method", "slq",
        "--probes", "4", "--lanczos-steps", "5", "--rank", "4"]


def _trainmap(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "trainmap", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_two_local_processes_give_the_one_process_sigma_and_counts(tmp_path):
    one = _trainmap(*ARGS, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _trainmap(*ARGS, "--out", str(tmp_path / "two"), "--local-processes", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    s1, s2 = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("one", "two"))
    assert s1["lanczos"]["devices"] == 1 and s2["lanczos"]["devices"] == 2  # the block was split
    np.testing.assert_allclose(s2["top"]["sigma"], s1["top"]["sigma"], rtol=1e-5)
    for r in ("chaotic", "bulk", "stable"):
        assert abs(s2[r]["count"] - s1[r]["count"]) <= 1e-5 * s1["num_params"], (r, s1[r], s2[r])
    assert not (tmp_path / "two" / "process-1").exists()  # only process 0 writes
    # the float16 basis (process 0's alone) with its extra verification products, through the collectives
    half = _trainmap(*ARGS, "--out", str(tmp_path / "half"), "--local-processes", "2", "--basis", "half")
    assert half.returncode == 0, half.stderr[-3000:]
    sh = json.loads((tmp_path / "half" / "summary.json").read_text())
    np.testing.assert_allclose(sh["top"]["sigma"], s1["top"]["sigma"], rtol=1e-5)
    for r in ("chaotic", "bulk", "stable"):
        assert abs(sh[r]["count"] - s1[r]["count"]) <= 1e-3 * s1["num_params"], (r, s1[r], sh[r])
    assert np.load(tmp_path / "half" / "top_U.npy").shape == np.load(tmp_path / "one" / "top_U.npy").shape
    # a half-given job is one error line, before anything runs
    bad = _trainmap(*ARGS, "--out", str(tmp_path / "bad"), "--num-processes", "2")
    assert bad.returncode == 2 and "error: give --coordinator, --num-processes and --process-id" in bad.stderr
