"""Benchmark: InPCA embedding of 20,000 checkpoints × 1,797 samples × 10 classes.

Synthetic prediction trajectories (200 runs × 100 checkpoints drifting from uniform towards
one-hot truth with run-specific mistakes) are embedded with the blocked Bhattacharyya
distances and the partial (Lanczos) eigensolver. Reported: wall time, peak resident memory
(must stay under 8 GB), and a speed ratio against a baseline measured in the same run:
a direct row-by-row NumPy float64 loop (one model against all others at a time) on a subset.

    python bench/ribbon_embed.py                 # full size (tens of minutes on 2 CPU cores)
    python bench/ribbon_embed.py --runs 20       # smaller smoke run

Writes bench/results/ribbon_embed.json.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import numpy as np

from trainmap._io import atomic_write_json
from trainmap.ribbon import InPCA, bhattacharyya


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def synthetic_predictions(runs: int, steps: int, samples: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(runs*steps, samples, classes) float32 softmax trajectories and (samples,) targets."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, classes, samples)
    onehot = np.eye(classes, dtype=np.float32)[targets]
    out = np.empty((runs * steps, samples, classes), dtype=np.float32)
    s = np.geomspace(0.01, 1.0, steps, dtype=np.float32)
    for r in range(runs):
        bias = rng.normal(size=(samples, classes)).astype(np.float32)
        for j in range(steps):
            logits = 6.0 * s[j] * onehot + (1.5 * (1 - s[j]) + 0.3) * bias
            logits -= logits.max(-1, keepdims=True)
            e = np.exp(logits)
            out[r * steps + j] = e / e.sum(-1, keepdims=True)
    return out, targets


def baseline_matrix(P: np.ndarray) -> np.ndarray:
    """Direct route: each model against all others with NumPy float64, one row at a time."""
    m = len(P)
    D = np.zeros((m, m))
    for i in range(m):
        D[i] = bhattacharyya(P[i][None], P)
    return D


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--samples", type=int, default=1797)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--subset", type=int, default=256, help="models in the same-run baseline comparison")
    ap.add_argument("--components", type=int, default=10)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ribbon_embed.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    P, _ = synthetic_predictions(args.runs, args.steps, args.samples, args.classes, seed=0)
    t_gen = time.perf_counter() - t0
    n = len(P)
    print(f"generated {P.shape} float32 predictions in {t_gen:.1f}s, {P.nbytes / 1e9:.2f} GB")

    # same-run comparison on a subset: direct NumPy loop vs blocked kernel
    sub = P[np.linspace(0, n - 1, min(args.subset, n)).astype(int)]
    t0 = time.perf_counter()
    D_base = baseline_matrix(sub)
    t_base = time.perf_counter() - t0
    from trainmap.ribbon import bhattacharyya_matrix

    bhattacharyya_matrix(sub[:8], block=args.block)  # compile outside the timing
    t0 = time.perf_counter()
    D_fast = bhattacharyya_matrix(sub, block=args.block)
    t_fast = time.perf_counter() - t0
    err = float(np.abs(D_fast - D_base).max())
    ratio = t_base / t_fast
    print(f"subset of {len(sub)} models: direct NumPy loop {t_base:.2f}s, blocked {t_fast:.2f}s "
          f"-> {ratio:.1f}x faster (max |ΔD| = {err:.2e})")

    # full embedding
    rss_before = peak_rss_gb()
    t0 = time.perf_counter()
    model = InPCA(n_components=args.components, solver="partial", block=args.block, progress=True).fit(P)
    t_full = time.perf_counter() - t0
    peak = peak_rss_gb()
    pairs = n * (n + 1) / 2
    sub_pairs = len(sub) * (len(sub) + 1) / 2
    result = dict(
        shape=[n, args.samples, args.classes], runs=args.runs, steps=args.steps,
        embed_seconds=round(t_full, 1), peak_rss_gb=round(peak, 2), peak_rss_before_embed_gb=round(rss_before, 2),
        under_8gb=bool(peak < 8.0), input_gb=round(P.nbytes / 1e9, 2),
        w_matrix_gb=round(n * n * 8 / 1e9, 2),
        explained_stress=[round(float(v), 4) for v in model.explained_stress_],
        eigenvalues=[float(v) for v in model.eigenvalues_],
        baseline=dict(kind="direct row-by-row NumPy float64 loop", models=len(sub),
                      seconds=round(t_base, 2), blocked_seconds=round(t_fast, 3),
                      speedup=round(ratio, 1), max_abs_diff=err,
                      extrapolated_full_seconds=round(t_base / sub_pairs * pairs, 0)),
        machine=dict(python=platform.python_version(), cpu_count=__import__("os").cpu_count(),
                     processor=platform.processor() or platform.machine()),
    )
    atomic_write_json(args.out, result)
    print(f"embedded {n} checkpoints in {t_full:.1f}s, peak RSS {peak:.2f} GB "
          f"({'under' if peak < 8 else 'OVER'} 8 GB); chi_3 = {model.explained_stress_[2]:.3f}")
    print(f"baseline ratio: blocked kernel {ratio:.1f}x faster than the direct loop; the direct loop "
          f"would need ~{t_base / sub_pairs * pairs / 3600:.1f} h for the full matrix")


if __name__ == "__main__":
    main()
