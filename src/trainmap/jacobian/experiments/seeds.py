"""Experiment 5 — overlap of bulk subspaces across random seeds.

The Jacobian is computed for the same recipe family at several seeds (with the presets, a seed
sets both the initialisation and the data order). For every pair of seeds the bulks are compared
at a common dimension k (the smallest bulk size; in each run the k directions with the smallest
|σ − 1|) by the mean cos² of their principal angles, ‖P_A P_B‖²_F / k, against the
random-subspace baseline k / P. The distribution of the principal cosines is plotted.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from trainmap._io import atomic_save_npy
from trainmap.jacobian.experiments import _common as C
from trainmap.jacobian.experiments import plots
from trainmap.jacobian.regions import JacobianSVD, Thresholds, region_mask
from trainmap.recipe import Recipe

CAPTIONS = {
    "seed_cosines.png": "Cosines of the principal angles between the bulks of two seeds (common "
                        "dimension k), one curve per pair, with a pair of random k-subspaces for "
                        "reference. Mass near 1 = directions the seeds share.",
    "sigma_minus_one_sorted.png": "|σ − 1| sorted ascending for each seed.",
}


def seed_overlap(
    make_run: Callable[[int], tuple[Recipe, Any]],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    known: Mapping[int, JacobianSVD] | None = None,
    jacobian_root: str | Path | None = None,
    thresholds: Thresholds = Thresholds(),
    chunk_size: int | None = None,
    jacobian_dtype: Any = np.float32,
    baseline_seed: int = 0,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Pairwise bulk overlaps of the training Jacobians of several seeds.

    Args:
        make_run: ``seed -> (recipe, theta0)``, e.g. ``lambda s: digits_mlp(seed=s)[:2]``.
        seeds: at least 2 distinct seeds (the paper's comparison uses ≥ 3).
        out_dir: results folder.
        known: Jacobian SVDs/spectra already computed, by seed (e.g. seed 0's).
        jacobian_root: cache folder of the other seeds' Jacobians (default ``out_dir/jacobians``).
        baseline_seed: seed of the random subspaces drawn for the reference histogram.

    Returns:
        Summary: k, P, the baseline k/P, per pair "a-b" the overlap and its ratio to the
        baseline, and their mean/min over pairs; the overlap of one random pair of k-subspaces.

    Arrays: ``sigma_seed<s>.npy`` (P,), ``cosines_<a>-<b>.npy`` (k,), ``cosines_random.npy``.
    """
    t = C.Timer()
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) < 2:
        raise ValueError(f"need at least two distinct seeds, got {seeds}")
    out = C.prepare_folder(out_dir, resume=resume, overwrite=overwrite)
    if resume and (done := C.finished(out)):
        return done
    root = Path(jacobian_root) if jacobian_root is not None else out.dir("jacobians")
    known = dict(known or {})
    decs: dict[int, JacobianSVD] = {}
    P = None
    for s in seeds:
        if s in known:
            decs[s] = known[s]
        else:
            recipe, theta0 = make_run(s)
            decs[s] = C.jacobian_spectrum(recipe, theta0, root / f"seed{s}", thresholds=thresholds, dtype=jacobian_dtype,
                                          chunk_size=chunk_size, progress=progress, resume=True)
        if P is not None and decs[s].S.size != P:
            raise ValueError(f"seed {s} has {decs[s].S.size} parameters, others {P}; seeds must "
                             "share the model")
        P = decs[s].S.size
    assert P is not None
    k = int(min(region_mask(d.codes, "bulk").sum() for d in decs.values()))
    if k == 0:
        raise C.ExperimentError("one of the seeds has an empty bulk; nothing to compare "
                                "(check the thresholds)")
    bases = {s: C.bulk_basis(d, k) for s, d in decs.items()}
    pairs: dict[str, Any] = {}
    cosines: dict[str, np.ndarray] = {}
    for a, b in combinations(seeds, 2):
        key = f"{a}-{b}"
        ov = C.overlap(bases[a], bases[b])
        regions = C.overlap(decs[a].basis("bulk"), decs[b].basis("bulk"))
        pairs[key] = {"overlap": ov, "ratio_to_baseline": ov / (k / P), "overlap_regions": regions}
        cosines[f"seeds {key}"] = C.principal_cosines(bases[a], bases[b])
        atomic_save_npy(out / f"cosines_{key}.npy", cosines[f"seeds {key}"])
    R1 = C.random_orthonormal(P, k, baseline_seed, np.float32)
    R2 = C.random_orthonormal(P, k, baseline_seed + 1, np.float32)
    rand_ov = C.overlap(R1, R2)
    cosines["random pair"] = C.principal_cosines(R1, R2)
    atomic_save_npy(out / "cosines_random.npy", cosines["random pair"])
    for s, d in decs.items():
        atomic_save_npy(out / f"sigma_seed{s}.npy", d.S)
    vals = [p["overlap"] for p in pairs.values()]
    summary: dict[str, Any] = {
        "seeds": seeds, "k": k, "num_params": P, "baseline": k / P, "random_pair_overlap": rand_ov,
        "pairs": pairs, "mean_overlap": float(np.mean(vals)), "min_overlap": float(np.min(vals)),
        "mean_ratio_to_baseline": float(np.mean(vals) / (k / P)),
        # (overlap − k/P) / (1 − k/P): 0 at chance, 1 for identical subspaces
        "mean_excess_over_chance": float((np.mean(vals) - k / P) / (1 - k / P)) if k < P else None,
        "bulk_counts": {str(s): int(region_mask(d.codes, "bulk").sum()) for s, d in decs.items()},
        "wall_time_s": t(),
    }
    summary["finding"] = {
        "claim": "bulk subspaces of different seeds overlap substantially beyond chance "
                 "(every pair's excess over chance (overlap − k/P)/(1 − k/P) ≥ 0.5)",
        "holds": bool(min(vals) >= k / P + 0.5 * (1 - k / P)),
        "statement": f"mean overlap {np.mean(vals):.3f} (min {np.min(vals):.3f}) at k = {k} of "
                     f"P = {P}; random baseline k/P = {k / P:.3f} (one random pair: {rand_ov:.3f})",
    }
    plots.cosine_histogram(out, cosines, "seed_cosines.png", f"principal cosines, k = {k}")
    plots.sorted_distance_figure(out, {f"seed {s}": d.S for s, d in decs.items()}, thresholds.high - 1.0)
    cfg = {**(config or {}), "experiment": "seeds", "seeds": seeds, "baseline_seed": baseline_seed,
           "thresholds": C.thresholds_config(thresholds)}
    return C.finish(out, cfg, summary, CAPTIONS)
