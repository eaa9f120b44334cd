"""Benchmark: training-Jacobian spectrum of a 1,076,010-parameter MLP on digits, matrix-free.

MLP 64→1000→1000→10 (GELU), SGD momentum 0.9, cosine lr 0.1→0, batch 32, 2 epochs over the 1,600
training digits (100 steps). The exact method would need J with P² = 1.16e12 entries, 4.6 TB in
float32, and P = 1,076,010 forward passes through training; it cannot run here. The matrix-free
route (``trainmap jacobian --method slq``) runs one block Lanczos on JᵀJ with 8 Rademacher probes
and writes the estimated spectral density, region counts (with error bars) and the top-20
chaotic directions.

Usage (resumable: rerun the same command after an interruption; ``--resume`` is automatic when a
checkpoint exists):

    python bench/matrix_free_1m.py [--steps 48] [--probes 8] [--budget-min 42] [--out DIR]
    python bench/matrix_free_1m.py --hidden 3200 3200 --steps 4 --memory-gb 8 \
        --json bench/results/matrix_free_10m_budget.json   # 10.5M parameters under an 8 GiB budget
    python bench/matrix_free_1m.py --model decoder --optimizer sgd --rank 10 --steps 24 --budget-min 110 \
        --out results/bench_mf_transformer_1m \
        --json bench/results/matrix_free_transformer_1m.json  # 1.0M-parameter transformer, 203 steps

``--model decoder``: a decoder-only transformer (d_model 128, 4 heads, MLP 512, 5 layers;
1,018,496 parameters) on modular addition mod 113 (30% of the pairs for training), batch 128,
7 epochs = 203 steps; ``--optimizer sgd``: SGD with momentum 0.9, lr 0.05; ``--optimizer adam``
(default): Adam 1e-3 with ``--eps-root`` (1e-8). With Adam, eps_root 1e-8 or 1e-12, the first
block product JᵀJ·V is not finite in float32 for one of the 8 probes while J·V is (the float32
reverse pass breaks down: ``bench/transformer_adam_products.py``; the operator now recomputes such
blocks in float64), so the recorded run uses SGD.

Writes ``bench/results/matrix_free_1m.json``: wall time summed over resumed runs, peak resident
memory against the ``--memory-gb`` budget, training metrics, estimated counts, top-20 σ with
relative residuals, and, measured in the same process after the run: one plain training run and one
raw product JᵀJ·V with a block of ``--probes`` vectors, so that the Lanczos bookkeeping (time in the
run outside the products) and the product-to-training cost ratio are reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=48, help="block Lanczos steps")
    ap.add_argument("--probes", type=int, default=8, help="Rademacher probes (block size)")
    ap.add_argument("--rank", type=int, default=20, help="chaotic directions to report")
    ap.add_argument("--budget-min", type=float, default=42.0,
                    help="Lanczos compute budget in minutes (summed over resumed runs)")
    ap.add_argument("--model", default="mlp", choices=("mlp", "decoder"), help="the digits MLP or a transformer")
    ap.add_argument("--hidden", type=int, nargs="+", default=[1000, 1000], help="hidden widths of the MLP")
    ap.add_argument("--memory-gb", type=float, default=None, help="peak-memory budget (GiB) of the run")
    ap.add_argument("--basis", default="auto", choices=("auto", "memory", "disk", "half", "none"),
                    help="Krylov basis storage (half: older blocks in float16; none: not stored)")
    ap.add_argument("--optimizer", default="adam", choices=("adam", "sgd"),
                    help="--model decoder: Adam (lr 1e-3) or SGD with momentum 0.9 (lr 0.05)")
    ap.add_argument("--eps-root", type=float, default=1e-8,
                    help="--model decoder: Adam's eps_root (the scaling study used 1e-12)")
    ap.add_argument("--out", default="results/bench_matrix_free_1m", help="results folder")
    ap.add_argument("--json", default=str(HERE / "results" / "matrix_free_1m.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    import jax

    from trainmap._io import atomic_write_json, read_json
    from trainmap.jacobian.matrix_free.pipeline import analyze_scale, peak_memory_mb
    from trainmap.presets import TORCH_DEFAULTS, digits_mlp  # the setup the recorded numbers were measured on

    out = Path(args.out)
    runs_path = out.parent / (out.name + ".runs.json")
    runs = read_json(runs_path) if runs_path.exists() else []
    resume = (out / "checkpoint" / "progress.json").exists()

    if args.model == "mlp":
        setup = digits_mlp(hidden=tuple(args.hidden), epochs=2, batch_size=32, lr=0.1, seed=0, **TORCH_DEFAULTS)
        r, d, theta0 = setup.recipe, setup.data, setup.theta0
        model_name = "MLP " + "-".join(map(str, (64, *args.hidden, 10))) + " GELU"
        training = {"optimizer": "sgd momentum 0.9", "lr": 0.1, "schedule": "cosine", "batch_size": 32,
                    "epochs": 2}
    else:
        r, d, theta0 = _decoder_run(args.optimizer, args.eps_root)
        model_name = "decoder-only transformer d128 h4 mlp512 L5, modular addition mod 113"
        training = {"optimizer": f"adam eps_root {args.eps_root:g}" if args.optimizer == "adam" else "sgd momentum 0.9",
                    "lr": 1e-3 if args.optimizer == "adam" else 0.05, "schedule": "constant", "batch_size": 128,
                    "epochs": 7}
    P = r.num_params
    try:
        summary = analyze_scale(
            r, theta0, out, method="slq", rank=args.rank, probes=args.probes, steps=args.steps,
            seed=0, eval_sets={"train": (d.x_train, d.y_train), "test": (d.x_test, d.y_test)},
            resume=resume, overwrite=not resume, time_budget_s=args.budget_min * 60.0,
            memory_gb=args.memory_gb, basis=args.basis,
        )
    finally:
        runs.append({"wall_s": time.perf_counter() - t0, "peak_memory_mb": peak_memory_mb(),
                         "resumed": resume})
        atomic_write_json(runs_path, runs)

    same_process = _raw_costs(r, theta0, args.probes)
    wall = sum(s["wall_s"] for s in runs)
    per_vector = summary["lanczos"]["compute_s"] / max(summary["lanczos"]["vector_products"], 1)
    result = {
        "benchmark": f"matrix-free training-Jacobian spectrum, {model_name}",
        "command": "python bench/matrix_free_1m.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": __import__("os").cpu_count(), "jax": jax.__version__,
                    "devices": [str(x) for x in jax.devices()]},
        "model": model_name, "num_params": P, "num_steps": r.num_steps, "training": training,
        "metrics": summary["metrics"],
        "exact_method": {"jacobian_bytes_float32": 4 * P * P,
                         "jacobian_TB_float32": 4 * P * P / 1e12,
                         "forward_passes_needed": P,
                         "projected_hours_at_measured_per_vector_cost": P * per_vector / 2 / 3600,
                         "note": f"J alone needs P^2 float32 = {4 * P * P / 1e12:.1f} TB; this machine has about 23 GB"},
        "lanczos": summary["lanczos"],
        "seconds_per_vector_product_JtJ": per_vector,
        "same_process": same_process,
        "product_to_training_ratio": same_process["raw_product_s_per_vector"] / same_process["train_s"],
        "bookkeeping_fraction_of_products": summary["lanczos"]["bookkeeping_fraction_of_products"],
        "bookkeeping_fraction_of_raw_products": (summary["lanczos"]["bookkeeping_s"]
                                                 / (same_process["raw_product_block_s"]
                                                    * max(summary["lanczos"]["products_timed"], 1))),
        "memory_budget_mb": summary["memory_budget_mb"],
        "basis": summary["lanczos"]["basis"],
        "wall_time_s_total": wall,
        "wall_time_min_total": wall / 60,
        "runs": runs,
        "peak_memory_mb": max(s["peak_memory_mb"] for s in runs),
        "under_60_minutes": wall < 3600,
        "estimated_counts": {k: {kk: summary[k][kk] for kk in ("count", "std_err", "fraction",
                                                                "quadrature_range")}
                             for k in ("chaotic", "bulk", "stable")},
        "sigma_max": summary["sigma_max"],
        "top": summary["top"],
        "warnings": summary["warnings"],
        "results_folder": str(out),
    }
    atomic_write_json(args.json, result)
    print(json.dumps({k: result[k] for k in ("num_params", "wall_time_min_total", "peak_memory_mb",
                                             "memory_budget_mb", "bookkeeping_fraction_of_products",
                                             "bookkeeping_fraction_of_raw_products",
                                             "product_to_training_ratio", "same_process",
                                             "estimated_counts", "sigma_max")}, indent=1))


def _decoder_run(optimizer: str = "adam", eps_root: float = 1e-8):
    """The 1M-parameter transformer on modular addition (see the module docstring)."""
    import optax

    from trainmap.data import modular_addition
    from trainmap.models import decoder
    from trainmap.recipe import flat_params, make_recipe

    data = modular_addition(p=113, train_fraction=0.3, seed=0)
    model = decoder(vocab=114, d_model=128, n_heads=4, d_mlp=512, n_layers=5, n_out=113)
    theta0, unravel = flat_params(model.init, 0)
    opt = optax.adam(1e-3, eps_root=eps_root) if optimizer == "adam" else optax.sgd(0.05, momentum=0.9)
    recipe = make_recipe(model.apply, unravel, theta0.size, data.x_train, data.y_train,
                         opt, batch_size=128, epochs=7, shuffle_seed=0)
    return recipe, data, theta0


def _raw_costs(recipe, theta0, probes: int) -> dict:
    """One plain training run and one raw JᵀJ·V (block of ``probes``), warm, in this process."""
    import jax
    import numpy as np

    from trainmap.jacobian.matrix_free import TrainingOperator

    train = jax.jit(recipe.train)
    jax.block_until_ready(train(theta0))
    t0 = time.perf_counter()
    jax.block_until_ready(train(theta0))
    t_train = time.perf_counter() - t0
    op = TrainingOperator(recipe, theta0)  # the compiled kernels of the run are reused
    V = np.random.default_rng(1).standard_normal((probes, recipe.num_params)).astype(np.float32)
    op.gram(V)
    t0 = time.perf_counter()
    op.gram(V)
    t_prod = time.perf_counter() - t0
    return {"train_s": t_train, "raw_product_block_s": t_prod, "raw_product_s_per_vector": t_prod / probes}


if __name__ == "__main__":
    main()
