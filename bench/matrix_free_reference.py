"""Check the matrix-free estimates against the exact SVD on the reference MLP (4,810 parameters).

Runs ``analyze_scale(method="lanczos")`` on the reference recipe (the default ``trainmap
jacobian`` run) and compares with the exact decomposition of a finished exact results folder:

* top-50 singular values: max relative error |σ̂_i − σ_i| / σ_i;
* their right-singular subspace: principal-angle cosines (singular values of V_exactᵀ V̂);
* region counts: (estimate − exact) / exact for chaotic, bulk and stable.

Usage:

    trainmap jacobian                                 # the exact reference folder, results/jacobian
    python bench/matrix_free_reference.py [--exact results/jacobian] [--probes 16] [--steps 60]
    python bench/matrix_free_reference.py --resume --steps 40   # evaluate / extend a checkpointed run

Writes ``bench/results/matrix_free_reference.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exact", default="results/jacobian", help="finished exact results folder")
    ap.add_argument("--out", default="results/bench_matrix_free_reference")
    ap.add_argument("--probes", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rank", type=int, default=50)
    ap.add_argument("--resume", action="store_true",
                    help="continue (or, with --steps no larger than the steps done, just evaluate) "
                         "the checkpointed run in --out")
    ap.add_argument("--json", default=str(HERE / "results" / "matrix_free_reference.json"))
    args = ap.parse_args()

    from trainmap._io import atomic_write_json, load_npy, read_json
    from trainmap.jacobian.matrix_free.pipeline import analyze_scale
    from trainmap.presets import TORCH_DEFAULTS, digits_mlp  # the setup the recorded numbers were measured on

    exact = Path(args.exact)
    if not (exact / "singular_values.npy").exists():
        sys.exit(f"{exact} holds no exact SVD; run `trainmap jacobian --out {exact}` first")
    S = load_npy(exact / "singular_values.npy").astype(np.float64)
    Vt = load_npy(exact / "svd_Vt.npy", mmap=True)
    th = read_json(exact / "config.json")["thresholds"]
    low, high = th["stable_below"], th["chaotic_above"]
    exact_counts = {"chaotic": int((S > high).sum()), "bulk": int(((S >= low) & (S <= high)).sum()),
                    "stable": int((S < low).sum())}

    setup = digits_mlp(**TORCH_DEFAULTS)
    d = setup.data
    t0 = time.perf_counter()
    s = analyze_scale(setup.recipe, setup.theta0, args.out, method="lanczos", rank=args.rank,
                      probes=args.probes, steps=args.steps, seed=0, overwrite=not args.resume,
                      resume=args.resume,
                      eval_sets={"test": (d.x_test, d.y_test)})
    wall = time.perf_counter() - t0
    out = Path(args.out)
    k = args.rank
    sig = load_npy(out / "top_sigma.npy")[:k]
    V = load_npy(out / "top_V.npy")[:k].astype(np.float64)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    rel = np.abs(sig - S[:k]) / S[:k]
    cos = np.linalg.svd(np.asarray(Vt[:k], dtype=np.float64) @ V.T, compute_uv=False)
    counts = {r: {"estimate": s[r]["count"], "std_err": s[r]["std_err"], "exact": exact_counts[r],
                  "rel_error": (s[r]["count"] - exact_counts[r]) / exact_counts[r],
                  "quadrature_range": s[r]["quadrature_range"]}
              for r in ("chaotic", "bulk", "stable")}
    result = {
        "benchmark": "matrix-free vs exact SVD on the reference MLP",
        "command": "python bench/matrix_free_reference.py " + " ".join(sys.argv[1:]),
        "num_params": setup.recipe.num_params, "num_steps": setup.recipe.num_steps,
        "probes": args.probes, "steps": args.steps, "vector_products": s["lanczos"]["vector_products"],
        "wall_time_s": wall, "peak_memory_mb": s["peak_memory_mb"],
        "lanczos_compute_s_all_runs": s["lanczos"]["compute_s"],
        "top_k": k,
        "top_k_max_rel_error": float(rel.max()),
        "top_k_median_rel_error": float(np.median(rel)),
        "top_k_min_principal_cosine": float(cos.min()),
        "top_k_max_rel_residual": s["top"]["max_rel_residual"],
        "counts": counts,
        "max_abs_count_rel_error": max(abs(c["rel_error"]) for c in counts.values()),
        "bottom_sigma_estimate": s["bottom"]["sigma"][:5], "bottom_sigma_exact": S[::-1][:5].tolist(),
        "bottom_converged": s["bottom"]["converged"],
        "acceptance": {"top50_within_1pct": bool(rel.max() < 0.01),
                       "subspace_cos_above_0.99": bool(cos.min() > 0.99),
                       "counts_within_5pct": bool(max(abs(c["rel_error"]) for c in counts.values()) < 0.05)},
    }
    atomic_write_json(args.json, result)
    print(json.dumps({k: result[k] for k in ("top_k_max_rel_error", "top_k_min_principal_cosine",
                                             "counts", "wall_time_s", "acceptance")}, indent=1))


if __name__ == "__main__":
    main()
