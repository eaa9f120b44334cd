"""Benchmark: memory of the reverse pass Jᵀ W with and without rematerialisation.

Each variant runs in its own child process (so peak resident memory is its own):

* ``plain``: ``vjp`` of the plain ``lax.scan`` training run — the reverse pass stores the residuals
  of all T steps, O(T · residuals);
* ``checkpointed``: trainmap's ``Recipe.train_checkpointed`` (segments of s = ⌈√T⌉ steps under
  ``jax.checkpoint``) — stores the ⌈T/s⌉ segment boundaries and one segment's residuals.

Reported per variant: XLA's compiled temp memory (deterministic), peak RSS of the child above its
baseline after setup, wall time, and agreement of the two results. The stated bound for the
checkpointed pass (see ``trainmap.jacobian.matrix_free``) is

    (⌈T/s⌉ + 1) · |state|  +  s · r  +  2 k P · 4 bytes  (+ 25 % slack),

with |state| = θ and momentum = 2P floats and r = the per-step residual size measured from the
plain variant (its temp memory / T). The benchmark checks the checkpointed temp memory against it.

Usage:

    python bench/matrix_free_memory.py [--hidden 512] [--epochs 25] [--vectors 4]

Writes ``bench/results/matrix_free_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp, numpy as np
from trainmap.presets import TORCH_DEFAULTS, digits_mlp  # the setup the recorded numbers were measured on
from trainmap.recipe import default_segment
hidden, epochs, k, variant = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = digits_mlp(hidden=hidden, epochs=epochs, **TORCH_DEFAULTS)
r = s.recipe
f = jax.jit(lambda t, w: r.vjp(t, w, 0 if variant == "plain" else None))
W = jnp.asarray(np.random.default_rng(0).normal(size=(k, r.num_params)).astype(np.float32))
th = jnp.asarray(s.theta0)
compiled = f.lower(th, W).compile()
mem = compiled.memory_analysis()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
out = np.asarray(compiled(th, W))
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
np.save(sys.argv[5], out)
print("RESULT " + json.dumps({"variant": variant, "P": r.num_params, "T": r.num_steps,
      "segment": None if variant == "plain" else default_segment(r.num_steps),
      "temp_mb": mem.temp_size_in_bytes / 2**20, "rss_baseline_mb": base, "rss_peak_mb": peak,
      "rss_growth_mb": peak - base, "wall_s": wall}))
"""


def run_child(args: argparse.Namespace, variant: str, npy: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(args.hidden), str(args.epochs),
                           str(args.vectors), variant, str(npy)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} child failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--vectors", type=int, default=4, help="k, rows of W per reverse pass")
    ap.add_argument("--json", default=str(HERE / "results" / "matrix_free_memory.json"))
    args = ap.parse_args()
    import numpy as np

    tmp = Path(args.json).parent
    t0 = time.perf_counter()
    res = {v: run_child(args, v, tmp / f".mf_memory_{v}.npy") for v in ("plain", "checkpointed")}
    a, b = (np.load(tmp / f".mf_memory_{v}.npy") for v in ("plain", "checkpointed"))
    for v in ("plain", "checkpointed"):
        (tmp / f".mf_memory_{v}.npy").unlink()
    P, T, s = res["plain"]["P"], res["plain"]["T"], res["checkpointed"]["segment"]
    per_step = res["plain"]["temp_mb"] / T
    n_seg = -(-T // s)
    state_mb = 2 * P * 4 / 2**20
    bound = 1.25 * ((n_seg + 1) * state_mb + s * per_step + 2 * args.vectors * P * 4 / 2**20)
    out = {
        "benchmark": "reverse pass J^T W: plain scan vs checkpointed segments (child processes)",
        "command": "python bench/matrix_free_memory.py " + " ".join(sys.argv[1:]),
        "model": f"MLP 64-{args.hidden}-10 on digits", "num_params": P, "num_steps": T,
        "vectors": args.vectors, "segment": s, "variants": res,
        "temp_ratio_plain_over_checkpointed": res["plain"]["temp_mb"] / max(res["checkpointed"]["temp_mb"], 1e-9),
        "rss_growth_ratio": res["plain"]["rss_growth_mb"] / max(res["checkpointed"]["rss_growth_mb"], 1e-9),
        "time_ratio_checkpointed_over_plain": res["checkpointed"]["wall_s"] / max(res["plain"]["wall_s"], 1e-9),
        "stated_bound_mb": bound,
        "checkpointed_within_bound": res["checkpointed"]["temp_mb"] <= bound,
        "max_abs_diff": float(np.abs(a - b).max()), "scale": float(np.abs(a).max()),
        "total_wall_s": time.perf_counter() - t0,
    }
    from trainmap._io import atomic_write_json

    atomic_write_json(args.json, out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
