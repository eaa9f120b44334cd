"""Are a study point's float32 products JᵀJ·v consistent? vᵀ(JᵀJ v) against ‖J v‖², per probe,
compiled as XLA does by default and with the product path's ``REVERSE_PASS_OPTIONS``.

Reverse mode is the transpose of forward mode, so the two agree up to rounding unless the float32
reverse pass breaks down (``matrix_free.operator.gram_consistent``, which the operator applies to
every block, recomputing failing ones in float64). For one point per family of the scaling study
(2 epochs), one block of 8 normalised Rademacher probes through the float32 program alone (no
retry), compiled both ways, with the time of one block (median of 3 calls after compilation;
the 1M MLP, width 1000, times what the option costs where nothing was wrong).

Then, for the SGD transformer (d = 16): the batched reverse pass Jᵀ W of 16 normalised probes in
one program against each probe alone (``segment=0``), in float32 and float64, compiled both ways,
to tell a row that fails for its vector from one that fails for its place in the batch.

    python bench/gram_check.py            # about four minutes
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
POINTS = (("mlp", 300), ("mlp", 1000), ("cnn", 20), ("transformer", 16), ("transformer-sgd", 16))
REPEATS = 3  # timed calls per compilation (median)


def _compilations() -> dict:
    from trainmap.jacobian.matrix_free.operator import REVERSE_PASS_OPTIONS

    return {"xla default": None, "product path (REVERSE_PASS_OPTIONS)": REVERSE_PASS_OPTIONS}


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
            for how, opts in _compilations().items():
                f = jax.jit(lambda t, w: recipe.vjp(t, w, 0), compiler_options=opts)
                single = np.stack([np.asarray(f(th, W[i:i + 1]))[0] for i in range(k)])
                for name, order in (("in order", np.arange(k)), ("reversed", np.arange(k)[::-1])):
                    batch = np.asarray(f(th, W[order]))
                    diff = np.abs(batch - single[order]).max(axis=1) / np.abs(single[order]).max(axis=1)
                    out[f"{np.dtype(dtype).name}, {how}, probes {name}"] = diff.tolist()
                    print(f"{np.dtype(dtype).name}, {how}, probes {name}: max {diff.max():.2e}", flush=True)
    return out


def check_point(family: str, width: int) -> dict:
    """Consistency and block time of one study point's float32 JᵀJ·V, compiled both ways."""
    import jax

    from trainmap.jacobian.matrix_free.lanczos import rademacher
    from trainmap.jacobian.matrix_free.operator import gram_consistent
    from trainmap.jacobian.scaling import Point, build

    recipe, theta0, _ = build(Point(family, width, 2))
    V = rademacher(8, recipe.num_params, 0)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    th = jax.numpy.asarray(np.asarray(theta0, np.float32))
    row = {"family": family, "width": width, "num_params": int(recipe.num_params)}
    for how, opts in _compilations().items():
        def gram(t, v):
            JV = recipe.jvp(t, v)
            return recipe.vjp(t, JV), JV
        f = jax.jit(gram, compiler_options=opts)
        jax.block_until_ready(f(th, V))
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            AV, JV = (np.asarray(a) for a in f(th, V))
            times.append(time.perf_counter() - t0)
        seconds = float(np.median(times))
        quad = np.einsum("ij,ij->i", V.astype(np.float64), np.asarray(AV, np.float64))
        n2 = np.einsum("ij,ij->i", np.asarray(JV, np.float64), np.asarray(JV, np.float64))
        row[how] = {"consistent": gram_consistent(V, AV, JV).tolist(),
                    "relative_mismatch": (np.abs(quad - n2) / n2).tolist(), "block_seconds": seconds}
        print(family, width, how, f"consistent {sum(row[how]['consistent'])}/8, "
              f"max mismatch {max(row[how]['relative_mismatch']):.1e}, block {seconds:.2f} s", flush=True)
    return row


def main() -> None:
    import jax

    rows = [check_point(family, width) for family, width in POINTS]
    res = {"benchmark": __doc__.splitlines()[0], "command": "python bench/gram_check.py",
           "machine": {"platform": platform.platform(), "jax": jax.__version__}, "points": rows,
           "batched_against_single_rows": batched_against_single(16)}
    (HERE / "results" / "gram_check.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
