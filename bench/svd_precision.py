"""Precision of the float32 SVD of a training Jacobian against float64, both float32 routes.

Usage::

    trainmap jacobian                         # writes results/jacobian/jacobian.npy
    python bench/svd_precision.py             # or: --jacobian PATH/jacobian.npy

For the saved float32 J it computes the singular values three ways: float64 gesdd (the reference),
float32 gesdd on the whole Jᵀ, and trainmap's route (:func:`trainmap.jacobian.regions.svd`: the
decoupled indices split off, the coupled block through the float64 Gram matrix and dsyevr). It
prints, per float32 route, the largest |σ₃₂ − σ₆₄| / σ_max and the largest relative error among
σ ≥ 1e-2 and σ ≥ 1e-3, whether every region count is the same, the vectors' quality (largest
‖J v_i − σ_i u_i‖ / σ_max, largest entry of |UᵀU − I| and |VᵀV − I|, in float64), and the float32
bound ε·σ_max/σ at each floor; and writes ``bench/results/svd_precision.json`` atomically.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.linalg

HERE = Path(__file__).resolve().parent
FLOORS = (1e-2, 1e-3)


def errors(S: np.ndarray, ref: np.ndarray) -> dict:
    """Largest absolute error over σ_max and largest relative error above each floor."""
    err = np.abs(np.asarray(S, np.float64) - ref)
    return {"max_abs_over_sigma_max": float(err.max() / ref[0]),
            **{f"max_rel_sigma_ge_{f:g}": float((err[ref >= f] / ref[ref >= f]).max()) for f in FLOORS}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jacobian", type=Path, default=Path("results/jacobian/jacobian.npy"))
    ap.add_argument("--json", type=Path, default=HERE / "results" / "svd_precision.json")
    args = ap.parse_args(argv)
    from trainmap._io import atomic_write_bytes
    from trainmap.jacobian.regions import classify, svd

    J = np.load(args.jacobian)
    if J.dtype != np.float32:
        raise SystemExit(f"{args.jacobian} is {J.dtype}; this compares float32 SVDs of a float32 J")
    t = time.perf_counter()
    ref = np.linalg.svd(J.astype(np.float64), compute_uv=False)
    t64 = time.perf_counter() - t
    t = time.perf_counter()
    Vw, whole, Uwt = scipy.linalg.svd(J.T, lapack_driver="gesdd", check_finite=False)
    t_whole = time.perf_counter() - t
    t = time.perf_counter()
    dec = svd(J)
    t_mine = time.perf_counter() - t
    counts = np.bincount(classify(ref), minlength=3)

    J64 = J.astype(np.float64)

    def vectors(U: np.ndarray, S: np.ndarray, Vt: np.ndarray) -> dict:
        U, Vt, n = U.astype(np.float64), Vt.astype(np.float64), S.size
        return {"max_residual_over_sigma_max": float(np.linalg.norm(J64 @ Vt.T - U * S, axis=0).max() / ref[0]),
                "max_orthogonality_U": float(np.abs(U.T @ U - np.eye(n)).max()),
                "max_orthogonality_V": float(np.abs(Vt @ Vt.T - np.eye(n)).max())}

    def route(S: np.ndarray, wall_s: float, U: np.ndarray, Vt: np.ndarray) -> dict:
        return {**errors(S, ref), **vectors(U, S, Vt), "wall_s": wall_s,
                "counts_equal": bool(np.array_equal(np.bincount(classify(S), minlength=3), counts))}

    eps = float(np.finfo(np.float32).eps)
    result = {
        "benchmark": "float32 SVD of J against float64", "command": "python bench/svd_precision.py",
        "num_params": int(J.shape[0]), "decoupled": dec.decoupled,
        "sigma_max": float(ref[0]), "values_below": {f"{f:g}": int((ref < f).sum()) for f in FLOORS},
        "float32_bound_eps_sigma_max_over_sigma": {f"{f:g}": eps * float(ref[0]) / f for f in FLOORS},
        "routes": {"gesdd on the whole J^T": route(whole, t_whole, Uwt.T, Vw.T),
                   "trainmap (decoupled split, float64 Gram matrix and dsyevr on the block)":
                       route(dec.S, t_mine, dec.U, dec.Vt)},
        "float64_wall_s": t64,
    }
    for name, r in result["routes"].items():
        print(f"{name}: |Δσ|/σ_max {r['max_abs_over_sigma_max']:.2e}, rel σ≥1e-2 {r['max_rel_sigma_ge_0.01']:.2e}, "
              f"rel σ≥1e-3 {r['max_rel_sigma_ge_0.001']:.2e}, counts equal {r['counts_equal']}, "
              f"residual {r['max_residual_over_sigma_max']:.1e} σ_max, |UᵀU−I| {r['max_orthogonality_U']:.1e}, "
              f"|VᵀV−I| {r['max_orthogonality_V']:.1e}, {r['wall_s']:.1f} s")
    atomic_write_bytes(args.json, (json.dumps(result, indent=1) + "\n").encode())
    return result


if __name__ == "__main__":
    main()
