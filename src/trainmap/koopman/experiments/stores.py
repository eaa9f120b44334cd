"""The Koopman lens on recorded trajectory stores: the DMD spectrum of one store, and the
comparison of two (``trainmap koopman spectrum`` and ``compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from trainmap.results import check_folder, mode_of


def spectrum_of_store(traj: Any, out: Path, *, layers: Optional[Sequence[str]] = None,
                      pca: Optional[int] = None, projection: Optional[int] = None, delays: int = 0,
                      rank: Optional[int] = None, seed: int = 0, overwrite: bool = False,
                      config: Optional[dict] = None) -> dict[str, Any]:
    """DMD spectrum of a recorded trajectory, pooled over its runs and per run; writes ``out``.

    ``traj``: a trajectory store's path, or a :class:`~trainmap.record.store.Trajectory` in memory
    (``config`` then says where it came from).

    Returns:
        The summary (also in ``summary.json``).
    """
    from trainmap.koopman import figures
    from trainmap.koopman.analysis import ObservableConfig, spectrum
    from trainmap.koopman.results import ragged, write_results
    from trainmap.record.store import Trajectory

    mode = mode_of(overwrite=overwrite)
    check_folder(out, mode, kind="koopman-spectrum")
    if isinstance(traj, Trajectory):
        t, traj = traj, Path("trajectory")
    else:
        traj = Path(traj)
        t = Trajectory.load(traj)
    cfg = ObservableConfig(list(layers) if layers else None, pca, projection, delays, rank, seed)
    per_run = t.shape[1] - delays - 1 >= (rank or 1)
    res = spectrum(t, cfg, per_run=per_run)
    mod = np.abs(res.pooled)
    summary = {"runs": t.shape[0], "steps": t.shape[1], "features": t.shape[2], "n_eigenvalues": len(res.pooled),
               "max_modulus": float(mod.max()), "n_outside_unit_circle": int(np.sum(mod > 1 + 1e-9)),
               "one_step_residual": res.score, "warnings": []}
    figs = {"spectrum.png": figures.eigenvalue_figure({"pooled": res.pooled, **({"per run": res.per_run} if res.per_run else {})},
                                                      f"DMD eigenvalues of {traj.name}")}
    arrays = {"eigenvalues": res.pooled, "modes": res.dmd.modes_}
    if res.per_run:
        arrays["per_run_eigenvalues"] = ragged(res.per_run)
    config = {"trajectory": str(traj), "layers": cfg.layers, "pca": pca, "projection": projection,
              "delays": delays, "rank": rank, "seed": seed, **(config or {})}
    write_results(out, config, summary, arrays, figs, kind="koopman-spectrum", mode=mode, captions=
                  {"spectrum.png": "Eigenvalues near 1 are slow modes; outside the unit circle means growth."})
    return summary


def compare_stores(traj_a: Path, traj_b: Path, out: Path, *, layers: Optional[Sequence[str]] = None,
                   pca: Optional[int] = None, projection: Optional[int] = None, delays: int = 0,
                   rank: Optional[int] = None, n_permutations: int = 9999, alpha: float = 0.05,
                   seed: int = 0, overwrite: bool = False) -> tuple[dict[str, Any], str]:
    """W1 between the spectra of two trajectory stores and the permutation test over runs.

    Returns:
        (the summary, also in ``summary.json``; the verdict line).
    """
    from trainmap.koopman import figures
    from trainmap.koopman.analysis import ObservableConfig, compare
    from trainmap.koopman.results import ragged, write_results
    from trainmap.record.store import Trajectory

    traj_a, traj_b = Path(traj_a), Path(traj_b)
    mode = mode_of(overwrite=overwrite)
    check_folder(out, mode, kind="koopman-compare")
    ta, tb = Trajectory.load(traj_a), Trajectory.load(traj_b)
    cfg = ObservableConfig(list(layers) if layers else None, pca, projection, delays, rank, seed)
    names = (traj_a.stem or "A", traj_b.stem or "B")
    if names[0] == names[1]:
        names = (names[0] + " (A)", names[1] + " (B)")
    res = compare(ta, tb, cfg, n_permutations=n_permutations, alpha=alpha, seed=seed, names=names)
    summary: dict = {"runs_a": ta.shape[0], "runs_b": tb.shape[0], "W1_pooled": res.pooled_distance,
                     "warnings": []}
    figs = {"spectra.png": figures.eigenvalue_figure({f"{names[0]} (pooled)": res.a.pooled,
                                                      f"{names[1]} (pooled)": res.b.pooled}, "pooled DMD eigenvalues"),
            "per_run_spectra.png": figures.eigenvalue_figure({names[0]: res.a.per_run, names[1]: res.b.per_run},
                                                             "per-run DMD eigenvalues"),
            "distance_matrix.png": figures.distance_matrix_figure(res.distances, res.labels, "W1 between runs")}
    captions = {"spectra.png": "Overlapping eigenvalues suggest conjugate dynamics.",
                "per_run_spectra.png": "Seed-to-seed spread: the scale the permutation test compares against.",
                "distance_matrix.png": "Block structure means the conditions are distinguishable."}
    if res.test is not None:
        summary["test"] = res.test.summary()
        figs["null.png"] = figures.null_figure(res.test.null, res.test.statistic, "permutation null",
                                               "between - within W1")
        captions["null.png"] = "Observed statistic against the null of exchangeable condition labels."
        line = res.test.verdict
    else:
        summary["warnings"].append("each trajectory needs >= 2 runs for the permutation test; only W1 is reported")
        line = f"W1 between pooled spectra = {res.pooled_distance:.4g} (no test: fewer than 2 runs per side)"
    config = {"trajectory_a": str(traj_a), "trajectory_b": str(traj_b), "layers": cfg.layers, "pca": pca,
              "projection": projection, "delays": delays, "rank": rank, "n_permutations": n_permutations,
              "alpha": alpha, "seed": seed}
    arrays = {"eigenvalues_a": res.a.pooled, "eigenvalues_b": res.b.pooled, "distance_matrix": res.distances,
              "per_run_eigenvalues_a": ragged(res.a.per_run), "per_run_eigenvalues_b": ragged(res.b.per_run)}
    write_results(out, config, summary, arrays, figs, captions, kind="koopman-compare", mode=mode)
    return summary, line
