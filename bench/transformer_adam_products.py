"""Why JᵀJ·v fails for the Adam-trained 1M-parameter transformer: overflow of the range, or not.

The 1M-parameter transformer of ``bench/matrix_free_1m.py --model decoder`` (203 steps), trained
with Adam (lr 1e-3, ``--eps-root``), in float32: one block of 8 normalised Rademacher probes V,
then J V (forward mode) and JᵀJ V = Jᵀ (J V) (reverse mode, checkpointed), as the pipeline's
products. For the rows of JᵀJ V that are not finite, the reverse pass is repeated with the
cotangent J V scaled by 2⁻⁶⁴ and by 2⁻¹⁰⁰ (the result divided back): the products are linear in
the cotangent, so if an intermediate cotangent merely left float32's range, a scaled one stays in
it and the row becomes finite, while the finite rows must agree (exactly, for a power of two,
until the scaled values underflow). Each row is also checked against the identity
vᵀ(JᵀJ v) = ‖J v‖² (in float64 from the float32 products): reverse mode is the transpose of
forward mode, so the two sides differ only by rounding unless the reverse pass is not the
transpose of the forward one numerically. The rows that were not finite are then recomputed
in float64 (θ₀, the training run and both passes), one vector at a time, with the same check.

    python bench/transformer_adam_products.py            # about 10 minutes on 2 cores
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps-root", type=float, default=1e-8)
    ap.add_argument("--json", default=str(HERE / "results" / "transformer_adam_products.json"))
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(HERE))
    from matrix_free_1m import _decoder_run
    from trainmap.jacobian.matrix_free.lanczos import rademacher

    recipe, _, theta0 = _decoder_run("adam", args.eps_root)
    th = jnp.asarray(theta0)
    V = rademacher(8, recipe.num_params, 0)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    t0 = time.perf_counter()
    JV = np.asarray(jax.jit(recipe.jvp)(th, jnp.asarray(V)))
    jv_s = time.perf_counter() - t0
    vjp = jax.jit(recipe.vjp)
    t0 = time.perf_counter()
    A = np.asarray(vjp(th, jnp.asarray(JV)))
    vjp_s = time.perf_counter() - t0
    bad = ~np.isfinite(A).all(axis=1)
    res = {"benchmark": __doc__.splitlines()[0],
           "command": "python bench/transformer_adam_products.py"
                      + (f" --eps-root {args.eps_root:g}" if args.eps_root != 1e-8 else ""),
           "machine": {"platform": platform.platform(), "jax": jax.__version__},
           "num_params": int(recipe.num_params), "num_steps": int(recipe.num_steps),
           "optimizer": f"adam lr 1e-3 eps_root {args.eps_root:g}", "dtype": "float32",
           "JV": {"seconds": jv_s, "finite_rows": np.isfinite(JV).all(axis=1).tolist(),
                  "max_abs_per_row": np.abs(JV).max(axis=1).tolist()},
           "JtJV": {"seconds": vjp_s, "non_finite_rows": np.flatnonzero(bad).tolist(),
                    "nan_entries_per_row": np.isnan(A).sum(axis=1).tolist(),
                    "inf_entries_per_row": np.isinf(A).sum(axis=1).tolist(),
                    "row_norms_of_finite_rows": np.linalg.norm(A[~bad], axis=1).tolist()},
           "scaled_cotangent": []}
    for e in (-64, -100):
        s = np.float32(2.0 ** e)
        raw = np.asarray(vjp(th, jnp.asarray(JV * s)))
        B = raw.astype(np.float64) / float(s)
        good = ~bad
        res["scaled_cotangent"].append({
            "scale": f"2^{e}",
            "raw_finite_rows": np.isfinite(raw).all(axis=1).tolist(),
            "raw_nan_entries_per_row": np.isnan(raw).sum(axis=1).tolist(),
            "max_abs_of_raw_per_row": [float(np.abs(r[np.isfinite(r)]).max()) if np.isfinite(r).any() else None
                                       for r in raw],
            "finite_rows_max_rel_diff": float(np.abs(B[good] - A[good]).max() / np.abs(A[good]).max()),
            "v_dot_JtJv": np.sum(V.astype(np.float64) * B, axis=1).tolist(),
            "norm_Jv_squared": np.sum(JV.astype(np.float64) ** 2, axis=1).tolist()})
    from trainmap.jacobian.precision import precision_context

    res["float64_rows"] = []
    with precision_context(np.float64):
        th64 = jnp.asarray(np.asarray(theta0, np.float64))
        jvp64, vjp64 = jax.jit(recipe.jvp), jax.jit(recipe.vjp)
        for i in np.flatnonzero(bad):
            t0 = time.perf_counter()
            v = jnp.asarray(V[i:i + 1].astype(np.float64))
            jv = jvp64(th64, v)
            a = np.asarray(vjp64(th64, jv))
            jv = np.asarray(jv)
            res["float64_rows"].append({
                "row": int(i), "seconds": time.perf_counter() - t0, "finite": bool(np.isfinite(a).all()),
                "max_abs_JtJv": float(np.abs(a).max()), "v_dot_JtJv": float(np.sum(V[i] * a[0])),
                "norm_Jv_squared": float(np.sum(jv ** 2)), "max_abs_Jv": float(np.abs(jv).max())})
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
