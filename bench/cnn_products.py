"""One JᵀJ block product of the scaling study's residual CNN, with its convolution written two ways.

``trainmap.models.resnet1d`` computes its 'SAME' 1-D convolution as k shifted matrix products;
the alternative is ``jax.lax.conv_general_dilated``, which XLA on the CPU lowers, for a block of
tangents, to grouped convolutions. In the same process, for each way: one plain training run,
the first product (compilation included) and a second one (8 Rademacher probes), and the largest
difference between the two ways' products.

    python bench/cnn_products.py                 # the 5,170-parameter point, about a minute
    python bench/cnn_products.py --channels 64   # 50,314 parameters
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _lax_conv(x, w, b):
    import jax

    return jax.lax.conv_general_dilated(x, w, window_strides=(1,), padding="SAME",
                                        dimension_numbers=("NWC", "WIO", "NWC")) + b


def _time_product(channels: int) -> tuple[dict, object]:
    import jax
    import numpy as np

    from trainmap.jacobian.matrix_free import TrainingOperator
    from trainmap.jacobian.matrix_free.lanczos import rademacher
    from trainmap.jacobian.scaling import Point, build

    recipe, theta0, _ = build(Point("cnn", channels, 2))
    train = jax.jit(recipe.train)
    jax.block_until_ready(train(theta0))
    t = time.perf_counter()
    jax.block_until_ready(train(theta0))
    train_s = time.perf_counter() - t
    apply = TrainingOperator(recipe, np.asarray(theta0)).block_operator()
    V = rademacher(8, recipe.num_params, 0, np.float32)
    t = time.perf_counter()
    apply(V)
    first = time.perf_counter() - t
    t = time.perf_counter()
    out = np.asarray(apply(V)[0])
    second = time.perf_counter() - t
    return {"num_params": recipe.num_params, "num_steps": recipe.num_steps, "train_s": train_s,
            "first_product_s": first, "product_s": second}, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=20)
    ap.add_argument("--json", default=None, help="default: bench/results/cnn_products_c<channels>.json")
    args = ap.parse_args()
    import importlib

    import jax
    import numpy as np

    r1d = importlib.import_module("trainmap.models.resnet1d")  # the module (the package exports the function)

    shifted, a = _time_product(args.channels)
    ours = r1d._conv
    r1d._conv = _lax_conv
    try:
        lax, b = _time_product(args.channels)
    finally:
        r1d._conv = ours
    result = {"benchmark": "one JᵀJ block product (8 probes) of the residual CNN: shifted products vs lax conv",
              "command": "python bench/cnn_products.py " + " ".join(sys.argv[1:]),
              "machine": {"platform": platform.platform(), "jax": jax.__version__},
              "shifted_matrix_products": shifted, "lax_conv_general_dilated": lax,
              "speedup_product": lax["product_s"] / shifted["product_s"],
              "max_abs_difference": float(np.abs(a - b).max()), "max_abs_product": float(np.abs(b).max())}
    from trainmap._io import atomic_write_json

    atomic_write_json(args.json or str(HERE / "results" / f"cnn_products_c{args.channels}.json"), result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
