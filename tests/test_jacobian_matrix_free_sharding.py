"""Sharding the vector axis over 2 forced host devices gives the single-device results.

``XLA_FLAGS=--xla_force_host_platform_device_count=2`` only takes effect before JAX is imported,
so the comparison runs in a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

CHILD = r"""
import json, sys
import jax
import numpy as np
sys.path.insert(0, sys.argv[1])
from conftest import tiny_recipe
from trainmap.jacobian.matrix_free.lanczos import block_lanczos, extreme_triplets, rademacher
from trainmap.jacobian.matrix_free import TrainingOperator
from trainmap.jacobian.matrix_free.slq import quadrature, region_counts

assert len(jax.devices()) == 2, jax.devices()
recipe, theta0 = tiny_recipe()
P = recipe.num_params
one = TrainingOperator(recipe, theta0, devices=jax.devices()[:1])
two = TrainingOperator(recipe, theta0)  # default: every device
V = np.random.default_rng(0).normal(size=(5, P)).astype(np.float32)  # odd: exercises the padding
out = {"devices": two.num_devices}
ref = {"jvp": one.matvec(V), "vjp": one.rmatvec(V), "gram": one.gram(V)[0]}
got = {"jvp": two.matvec(V), "vjp": two.rmatvec(V), "gram": two.gram(V)[0]}
for k in ref:
    out[k + "_max_abs_diff"] = float(np.abs(ref[k] - got[k]).max())
    out[k + "_scale"] = float(np.abs(ref[k]).max())
    out[k + "_shape_ok"] = got[k].shape == ref[k].shape
runs = {}
for name, op in (("one", one), ("two", two)):
    st = block_lanczos(op.gram, rademacher(4, P, 0), steps=6)
    runs[name] = (extreme_triplets(st, 3).sigma, region_counts(quadrature(st)))
out["sigma_max_rel_diff"] = float(np.max(np.abs(runs["one"][0] - runs["two"][0]) / runs["one"][0]))
out["count_max_abs_diff"] = max(abs(runs["one"][1][r]["count"] - runs["two"][1][r]["count"])
                                for r in ("chaotic", "bulk", "stable"))
print("RESULT " + json.dumps(out))
"""


def test_two_forced_host_devices_give_the_single_device_results():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(TESTS)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    assert res["devices"] == 2
    for k in ("jvp", "vjp", "gram"):
        assert res[k + "_shape_ok"]
        # each row runs the same program on either device; allow float32 reassociation only
        assert res[k + "_max_abs_diff"] <= 1e-5 * max(res[k + "_scale"], 1.0), (k, res)
    assert res["sigma_max_rel_diff"] < 1e-5, res
    assert res["count_max_abs_diff"] < 1e-3, res
