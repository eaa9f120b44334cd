"""Benchmark: Golub–Kahan bidiagonalisation of J against block Lanczos on JᵀJ, for the top triplets.

On the reference run (`trainmap jacobian`'s default: digits MLP 64→64→10, P = 4,810, T = 625),
one process, one after the other:

1. the exact J (trainmap's engine) and its SVD, the reference σ;
2. block Lanczos on JᵀJ (``--probes`` Rademacher vectors per block, the pipeline's route): after
   every block step, the top-``--rank`` Ritz values and their relative residuals;
3. Golub–Kahan on J from one Rademacher vector: one J·v and one Jᵀ·u per step.

Both report, after every step, how many of the top-k triplets have converged (relative residual
‖JᵀJv − σ²v‖ / max(σ², 1) below 1e-3, the pipeline's criterion) and their largest relative error
against the exact σ. The result is the number of vector products (one JᵀJ·v = one J·v + one Jᵀ·u)
and the seconds each route needed until all top-k converged: Golub–Kahan multiplies one vector at
a time, block Lanczos ``--probes`` at once through one compiled program.

    python bench/golub_kahan.py [--rank 20] [--probes 8] [--max-products 480]

Writes ``bench/results/golub_kahan.json``.
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
RTOL = 1e-3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=20)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--max-products", type=int, default=480)
    ap.add_argument("--json", default=str(HERE / "results" / "golub_kahan.json"))
    args = ap.parse_args()

    import jax

    from trainmap._io import atomic_write_json
    from trainmap.commands._recipe import builtin_run
    from trainmap.jacobian.exact import exact_jacobian
    from trainmap.jacobian.matrix_free import TrainingOperator
    from trainmap.jacobian.matrix_free.golub_kahan import gk_triplets, golub_kahan
    from trainmap.jacobian.matrix_free.lanczos import (
        BlockLanczosState,
        block_lanczos_step,
        extreme_triplets,
        rademacher,
    )

    run = builtin_run()
    recipe, theta0 = run.recipe, run.theta0
    P, k, b = recipe.num_params, args.rank, args.probes
    J = np.asarray(exact_jacobian(recipe, theta0))
    exact = np.linalg.svd(J.astype(np.float64), compute_uv=False)[:k]
    op = TrainingOperator(recipe, theta0)

    def error(sigma: np.ndarray) -> float:
        return float(np.max(np.abs(sigma - exact) / exact))

    # ---- block Lanczos on JᵀJ
    state = BlockLanczosState.start(rademacher(b, P, 0))
    op.gram(state.next_block)  # compile outside the timing
    lanczos, t0, t_prod = [], time.perf_counter(), 0.0
    while state.steps * b < args.max_products:
        t1 = time.perf_counter()
        block_lanczos_step(state, op.block_operator())
        t_prod += time.perf_counter() - t1
        if state.steps * b >= k:
            tr = extreme_triplets(state, k, "top", vectors=False)
            lanczos.append({"products": state.steps * b, "seconds": time.perf_counter() - t0,
                            "product_seconds": t_prod, "converged": int((tr.rel_residuals < RTOL).sum()),
                            "max_rel_error": error(tr.sigma)})
            if lanczos[-1]["converged"] == k:
                break

    # ---- Golub–Kahan on J
    v0 = rademacher(1, P, 0)[0].astype(np.float64)
    f32 = np.float32

    def matvec(v: np.ndarray) -> np.ndarray:
        return op.matvec(v.astype(f32)[None])[0]

    def rmatvec(u: np.ndarray) -> np.ndarray:
        return op.rmatvec(u.astype(f32)[None])[0]

    matvec(v0), rmatvec(v0)  # compile outside the timing
    gk, st, t0, t_prod = [], None, time.perf_counter(), 0.0
    for step in range(1, args.max_products + 1):
        t1 = time.perf_counter()
        st = golub_kahan(matvec, rmatvec, v0, 1, state=st)
        t_prod += time.perf_counter() - t1
        if step >= k:
            tr = gk_triplets(st, k)
            gk.append({"products": step, "seconds": time.perf_counter() - t0, "product_seconds": t_prod,
                       "converged": int((tr.rel_residuals < RTOL).sum()), "max_rel_error": error(tr.sigma)})
            if gk[-1]["converged"] == k:
                break

    def done(trace: list) -> dict:
        last = trace[-1]
        return {**last, "all_converged": last["converged"] == k}

    result = {
        "benchmark": "Golub-Kahan on J vs block Lanczos on JtJ: products until the top-k triplets converge",
        "command": "python bench/golub_kahan.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpu_count": __import__("os").cpu_count(),
                    "jax": jax.__version__},
        "setup": "trainmap jacobian default (digits MLP 64-64-10, published setup)", "num_params": P,
        "rank": k, "probes": b, "convergence_rtol": RTOL,
        "block_lanczos": done(lanczos), "golub_kahan": done(gk),
        "trace": {"block_lanczos": lanczos, "golub_kahan": gk},
    }
    atomic_write_json(args.json, result)
    print(json.dumps({key: result[key] for key in ("num_params", "rank", "probes", "block_lanczos",
                                                   "golub_kahan")}, indent=1))


if __name__ == "__main__":
    main()
