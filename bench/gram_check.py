"""Are a study point's float32 products JᵀJ·v consistent? vᵀ(JᵀJ v) against ‖J v‖², per probe.

Reverse mode is the transpose of forward mode, so the two agree up to rounding unless the float32
reverse pass breaks down (``matrix_free.operator.gram_consistent``, which the operator applies to
every block, recomputing failing ones in float64). For one point per family of the scaling study
(2 epochs), one block of 8 normalised Rademacher probes, the float32 program alone:

Then, for the SGD transformer (d = 16), where a row fails: the batched reverse pass Jᵀ W of 16
normalised probes in one program against each probe alone (``segment=0``), in float32 and in
float64, to tell a row that fails for its vector from one that fails for its place in the batch.

    python bench/gram_check.py            # about two minutes
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
POINTS = (("mlp", 300), ("cnn", 20), ("transformer", 16), ("transformer-sgd", 16))


def batched_against_single(k: int) -> dict:
    """Max relative difference per row: Jᵀ W for k rows at once against each row alone."""
    import jax
    import jax.numpy as jnp

    from trainmap.jacobian.matrix_free.lanczos import rademacher
    from trainmap.jacobian.precision import precision_context
    from trainmap.jacobian.scaling import Point, build

    recipe, theta0, _ = build(Point("transformer-sgd", 16, 2))
    out = {}
    for dtype in (np.float32, np.float64):
        with precision_context(dtype):
            th = jnp.asarray(np.asarray(theta0, dtype))
            W = rademacher(k, recipe.num_params, 0, dtype)
            W /= np.linalg.norm(W, axis=1, keepdims=True)
            f = jax.jit(lambda t, w: recipe.vjp(t, w, 0))
            single = np.stack([np.asarray(f(th, W[i:i + 1]))[0] for i in range(k)])
            for name, order in (("in order", np.arange(k)), ("reversed", np.arange(k)[::-1])):
                batch = np.asarray(f(th, W[order]))
                diff = np.abs(batch - single[order]).max(axis=1) / np.abs(single[order]).max(axis=1)
                out[f"{np.dtype(dtype).name}, probes {name}"] = diff.tolist()
    print(out, flush=True)
    return out


def main() -> None:
    import jax

    from trainmap.jacobian.matrix_free import TrainingOperator
    from trainmap.jacobian.matrix_free.lanczos import rademacher
    from trainmap.jacobian.matrix_free.operator import gram_consistent
    from trainmap.jacobian.scaling import Point, build

    rows = []
    for family, width in POINTS:
        recipe, theta0, _ = build(Point(family, width, 2))
        op = TrainingOperator(recipe, theta0, devices=jax.devices()[:1])
        V = rademacher(8, recipe.num_params, 0)
        V /= np.linalg.norm(V, axis=1, keepdims=True)
        AV, JV = op._gram(op.theta0, V)  # the float32 program, without the operator's retry
        quad = np.einsum("ij,ij->i", V.astype(np.float64), np.asarray(AV, np.float64))
        n2 = np.einsum("ij,ij->i", np.asarray(JV, np.float64), np.asarray(JV, np.float64))
        rows.append({"family": family, "width": width, "num_params": int(recipe.num_params),
                     "consistent": gram_consistent(V, AV, JV).tolist(),
                     "relative_mismatch": (np.abs(quad - n2) / n2).tolist()})
        print(rows[-1], flush=True)
    res = {"benchmark": __doc__.splitlines()[0], "command": "python bench/gram_check.py",
           "machine": {"platform": platform.platform(), "jax": jax.__version__}, "points": rows,
           "batched_against_single_rows": batched_against_single(16)}
    (HERE / "results" / "gram_check.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
