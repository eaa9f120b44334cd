"""SLQ region counts with a full, a half-precision and no stored Krylov basis, on a known spectrum.

The operator is JᵀJ = diag(σ²) with P = 100,000 and a training-Jacobian-like spectrum (the shape
of the 1M-parameter MLP's estimate, see docs/jacobian_scale.md):

* chaotic, 1.67%: σ = 1.1 · (14 / 1.1)^(u⁴), u uniform (crowded just above 1.1, a few up to 14);
* bulk, 92.6%: σ ~ N(1, 0.03) clipped to [0.901, 1.099];
* stable, 5.7%: σ = 0.9 · √u.

On a diagonal operator Rademacher probes have no Hutchinson error (zᵀ f(A) z = tr f(A) for
z ∈ {±1}ᴾ), so every difference from the exact counts is the quadrature's or the rounding's.
For each basis (``full``: every block, ``half``: older blocks in float16, ``window``: the last two
blocks only), each dtype and number of block steps (8 probes), the script records the counts with
their quadrature ranges, the top-20 σ error, the repeated Ritz values among the top, and the
orthogonality diagnostics the pipeline reports; one more row runs the products in float32 with a
float64 basis (``window``), to separate the products' rounding from the basis's.

    python bench/slq_orthogonality.py            # about a minute
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def spectrum(P: int, seed: int = 0) -> np.ndarray:
    """σ (P,), descending (see the module docstring)."""
    rng = np.random.default_rng(seed)
    nc, ns = int(0.0167 * P), int(0.057 * P)
    chaotic = 1.1 * (14 / 1.1) ** (rng.random(nc) ** 4)
    bulk = np.clip(1 + 0.03 * rng.standard_normal(P - nc - ns), 0.901, 1.099)
    stable = 0.9 * rng.random(ns) ** 0.5
    return np.sort(np.concatenate([chaotic, bulk, stable]))[::-1]


def run(sigma: np.ndarray, basis: str, dtype, steps: int, product_dtype=None) -> dict:
    from trainmap.jacobian.matrix_free.basis import HalfBlocks, max_overlap
    from trainmap.jacobian.matrix_free.lanczos import block_lanczos, extreme_triplets, orthogonality_loss, rademacher
    from trainmap.jacobian.matrix_free.slq import quadrature, region_counts

    pd = product_dtype or dtype
    lam = (sigma ** 2).astype(pd)

    def apply(X):
        return (np.asarray(X, dtype=pd) * lam).astype(dtype), None

    t0 = time.perf_counter()
    state = block_lanczos(apply, rademacher(8, sigma.size, 0, dtype), steps, basis=basis)
    seconds = time.perf_counter() - t0
    counts = region_counts(quadrature(state))
    top = extreme_triplets(state, 20, vectors=False, distinct=basis == "window")
    row = {"basis": basis, "dtype": np.dtype(dtype).name, "product_dtype": np.dtype(pd).name, "steps": steps,
           "seconds": seconds, "top20_sigma_max_rel_error": float(np.abs(top.sigma / sigma[:20] - 1).max()),
           "repeated_ritz_values_in_top": int(top.repeats) if basis == "window" else
           int(np.sum(np.abs(np.diff(top.sigma)) < 1e-6 * top.sigma[0])),
           "counts": {r: {"count": c["count"], "quadrature_range": c["quadrature_range"]} for r, c in counts.items()}}
    if basis == "window":
        row["paige_estimate"] = orthogonality_loss(state)
    else:
        row["next_block_overlap"] = max_overlap(state.next_block, state.blocks)
        if isinstance(state.blocks, HalfBlocks):
            row["float16_rounding"] = state.blocks.rounding
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=int, default=100_000)
    ap.add_argument("--json", default=str(HERE / "results" / "slq_orthogonality.json"))
    args = ap.parse_args()
    sigma = spectrum(args.params)
    exact = {"chaotic": int((sigma > 1.1).sum()), "bulk": int(((sigma >= 0.9) & (sigma <= 1.1)).sum()),
             "stable": int((sigma < 0.9).sum())}
    rows = []
    for dtype in (np.float32, np.float64):
        for steps in (48, 96, 192):
            for basis in ("full", "half", "window"):
                rows.append(run(sigma, basis, dtype, steps))
                r = rows[-1]
                print(f"{r['dtype']} {steps:3d} {basis:6s} " + "  ".join(
                    f"{k} {v['count']:7.0f} [{v['quadrature_range'][0]:.0f}, {v['quadrature_range'][1]:.0f}]"
                    for k, v in r["counts"].items()) + f"  top-20 σ err {r['top20_sigma_max_rel_error']:.1e}", flush=True)
    for steps in (48, 96):
        rows.append(run(sigma, "window", np.float64, steps, product_dtype=np.float32))
        print("float32 products, float64 window basis", steps, {k: round(v["count"]) for k, v in rows[-1]["counts"].items()})
    result = {"benchmark": "SLQ counts against the Krylov basis kept (diagonal operator, known spectrum)",
              "command": "python bench/slq_orthogonality.py " + " ".join(sys.argv[1:]),
              "machine": {"platform": platform.platform(), "numpy": np.__version__},
              "num_params": args.params, "probes": 8, "exact_counts": exact, "rows": rows}
    from trainmap._io import atomic_write_json

    atomic_write_json(args.json, result)
    print(json.dumps(exact))


if __name__ == "__main__":
    main()
