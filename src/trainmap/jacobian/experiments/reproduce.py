"""All seven experiments on one setup (default: the reference digits MLP), one results folder.

Layout of ``out_dir``::

    config.json  summary.json  findings.md  report.html  <key figures>.png  captions.json
    jacobians/seed0/           full analysis of the main run (or the folder given as jacobian_dir)
    jacobians/seed<s>/         σ and Vᵀ of the other seeds
    dependence/jacobians/...   σ and Vᵀ of the shuffled-label and noise-input runs
    perturbation/ ood/ restricted/ dependence/ seeds/ change/ linearized/

Every Jacobian checkpoints its chunks and every experiment writes its summary.json last, so a
killed run continues with ``resume=True`` (CLI ``--resume``) and redoes only unfinished work.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from trainmap._io import atomic_write_bytes
from trainmap.jacobian.experiments import _common as C
from trainmap.jacobian.experiments.change import parameter_change
from trainmap.jacobian.experiments.dependence import data_label_dependence
from trainmap.jacobian.experiments.linearized import linearized_explanation
from trainmap.jacobian.experiments.ood import ood_effect
from trainmap.jacobian.experiments.perturbation import perturbation_response
from trainmap.jacobian.experiments.restricted import restricted_training
from trainmap.jacobian.experiments.seeds import seed_overlap
from trainmap.jacobian.regions import JacobianSVD, Thresholds, region_mask

EXPERIMENTS = ("change", "perturbation", "ood", "dependence", "seeds", "restricted", "linearized")

KEY_FIGURES = {  # top-level copy name: (sub-folder, figure, caption)
    "0_spectrum.png": ("jacobians/seed0", "spectrum.png", "Singular values of J (reference run)."),
    "1_perturbation_response.png": ("perturbation", "response.png", "Experiment 1: response to θ₀ + ε v_i."),
    "2_ood_kl_medians.png": ("ood", "kl_medians.png", "Experiment 2: median KL per region and probe set."),
    "3_restricted_loss.png": ("restricted", "restricted_loss.png", "Experiment 3: restricted training."),
    "4_dependence_spectra.png": ("dependence", "sigma_minus_one_sorted.png",
                                 "Experiment 4: |σ−1| for real data, shuffled labels, noise inputs."),
    "4_dependence_cosines.png": ("dependence", "bulk_cosines.png",
                                 "Experiment 4: principal cosines vs the real run's bulk."),
    "5_seed_cosines.png": ("seeds", "seed_cosines.png", "Experiment 5: principal cosines between seeds."),
    "6_change.png": ("change", "change_by_index.png", "Experiment 6: θ_T − θ₀ in the singular basis."),
    "7_linearized_cosines.png": ("linearized", "null_bulk_cosines.png",
                                 "Experiment 7: bulk vs near-null space of the output Jacobian."),
}


def _headline(name: str, s: Mapping[str, Any]) -> dict[str, Any]:
    """The per-experiment headline numbers stored in the top-level summary (see the docs)."""
    if name == "perturbation":
        d = s["directions"]
        return {"eps_fail": {k: v["eps_fail"] for k, v in d.items()},
                "eps_linear_max": {k: v["eps_linear_max"] for k, v in d.items()},
                "sigma": {k: v["sigma"] for k, v in d.items()},
                "index": {k: v["index"] for k, v in d.items()}}
    if name == "ood":
        return {"median_kl": s["median_kl"], "bulk_over_chaotic": s["bulk_over_chaotic"],
                "bulk_over_stable": s["bulk_over_stable"], "bulk_ood_over_in": s.get("bulk_ood_over_in")}
    if name == "restricted":
        ch = s["choices"]
        return {"ks": s["ks"], "max_k": s["max_k"], "bulk_count": s["bulk_count"],
                "bulk_stays_up_to_k": s.get("bulk_stays_up_to_k"),
                "test_loss_initial": s["test_loss_initial"],
                "test_loss_unrestricted": s["test_loss_unrestricted"],
                "improvement_at_max_k": {c: v["improvement_at_max_k"] for c, v in ch.items()},
                "improvement_at_bulk_k": {c: v["improvement_at_bulk_k"] for c, v in ch.items()}}
    if name == "dependence":
        return {"bulk_fraction": {r: v["bulk_fraction"] for r, v in s["runs"].items()},
                "sigma_max": {r: v["sigma_max"] for r, v in s["runs"].items()},
                **{f"overlap_{v}": o["overlap"] for v, o in s["overlaps"].items()},
                **{f"k_{v}": o["k"] for v, o in s["overlaps"].items()},
                **{f"baseline_{v}": o["baseline"] for v, o in s["overlaps"].items()}}
    if name == "seeds":
        return {k: s[k] for k in ("seeds", "k", "baseline", "mean_overlap", "min_overlap",
                                  "mean_excess_over_chance", "random_pair_overlap")}
    if name == "change":
        r = s["regions"]
        return {"change_norm": s["change_norm"],
                "energy_fraction": {k: v["energy_fraction"] for k, v in r.items()},
                "dimension_fraction": {k: v["dimension_fraction"] for k, v in r.items()}}
    if name == "linearized":
        return {"k": s["k"], "baseline": s["baseline"], "n_inputs": s["n_inputs"],
                "overlap_theta0": s["theta0"]["overlap"], "overlap_trajectory": s["trajectory"]["overlap"],
                "exact_null_dim_trajectory": s["trajectory"]["exact_null_dim"],
                "null_in_bulk_trajectory": s["trajectory"]["null_in_bulk"]}
    raise KeyError(name)


def reproduce(
    out_dir: str | Path = "results/jacobian_reproduce",
    *,
    setup_kwargs: Mapping[str, Any] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    jacobian_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    thresholds: Thresholds = Thresholds(),
    chunk_size: int | None = None,
    memory_budget_gb: float = 2.0,
    dtype: Any = np.float32,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the seven experiments on a :func:`~trainmap.presets.digits_mlp` setup.

    Args:
        out_dir: results folder (sub-folders per experiment).
        setup_kwargs: arguments of :func:`~trainmap.presets.digits_mlp` (default: the reference
            experiment); ``seed`` is the main run's seed.
        seeds: seeds of the seed-overlap experiment (the main seed is reused, not recomputed).
        jacobian_dir: a finished ``trainmap jacobian`` folder of the same setup to reuse instead
            of computing the main Jacobian again.
        only: run only these experiments (names in :data:`EXPERIMENTS`).
        settings: extra keyword arguments per experiment, e.g. ``{"restricted": {"ks": [8, 64]}}``.
        thresholds, chunk_size, memory_budget_gb: Jacobian settings.
        resume: reuse finished Jacobians and experiments in ``out_dir``.
        overwrite: delete a previous results folder at ``out_dir`` first.
        log: where one-line progress messages go.

    Returns:
        The top-level summary (also in ``summary.json``): the reference run's regions, per
        experiment its headline numbers and its finding, and wall times.
    """
    from trainmap.presets import digits_mlp

    t = C.Timer()
    names = list(EXPERIMENTS if only is None else only)
    bad = [n for n in names if n not in EXPERIMENTS]
    if bad:
        raise ValueError(f"unknown experiments {bad}; choose from {EXPERIMENTS}")
    settings = {k: dict(v) for k, v in (settings or {}).items()}
    out = C.prepare_folder(out_dir, resume=resume, overwrite=overwrite, kind="jacobian-reproduce")
    kw = dict(setup_kwargs or {})
    main_seed = int(kw.get("seed", 0))
    seeds = [int(s) for s in seeds]
    cfg = {"setup": kw, "seeds": seeds, "experiments": names, "settings": settings,
           "thresholds": C.thresholds_config(thresholds), "jacobian_dir": jacobian_dir,
           "chunk_size": chunk_size, "memory_budget_gb": memory_budget_gb,
           "dtype": np.dtype(dtype).name}
    out.write_config(cfg)
    setup = digits_mlp(**kw)
    recipe, theta0, data = setup
    evals = {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test)}
    times: dict[str, float] = {}

    log("[reproduce] main Jacobian (seed %d)" % main_seed)
    t0 = C.Timer()
    jdir = Path(jacobian_dir) if jacobian_dir is not None else out.dir("jacobians") / f"seed{main_seed}"
    dec = C.jacobian_svd(recipe, theta0, jdir, eval_sets=evals, thresholds=thresholds, resume=True,
                         progress=progress, chunk_size=chunk_size, memory_budget_gb=memory_budget_gb,
                         dtype=dtype)
    times["main_jacobian"] = t0()
    main_summary = C.finished(jdir) or {}
    common = dict(thresholds=thresholds, progress=progress, resume=True, config={"setup": kw})

    def run(name: str, fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        sub = out.dir(name)
        done = C.finished(sub)
        if done is not None and resume:
            log(f"[reproduce] {name}: reusing finished results")
            return done
        if done is not None:
            shutil.rmtree(sub)
        log(f"[reproduce] {name}")
        t1 = C.Timer()
        res = fn(out_dir=sub, **{**common, **kwargs, **settings.get(name, {})})
        times[name] = t1()
        return res

    results: dict[str, dict[str, Any]] = {}
    test = (data.x_test, data.y_test)
    for name in names:
        if name == "change":
            results[name] = run(name, parameter_change, recipe=recipe, theta0=theta0, dec=dec)
        elif name == "perturbation":
            results[name] = run(name, perturbation_response, recipe=recipe, theta0=theta0, dec=dec,
                                eval_set=test)
        elif name == "ood":
            results[name] = run(name, ood_effect, recipe=recipe, theta0=theta0, dec=dec,
                                x_test=data.x_test)
        elif name == "restricted":
            results[name] = run(name, restricted_training, recipe=recipe, theta0=theta0, dec=dec,
                                eval_set=test)
        elif name == "linearized":
            results[name] = run(name, linearized_explanation, recipe=recipe, theta0=theta0, dec=dec)
        elif name == "dependence":
            results[name] = run(name, data_label_dependence, recipe=recipe, theta0=theta0, dec=dec,
                                chunk_size=chunk_size, jacobian_dtype=dtype)
        elif name == "seeds":
            results[name] = run(
                name, seed_overlap,
                make_run=lambda s: tuple(digits_mlp(**{**kw, "seed": s})[:2]),
                seeds=seeds, known={main_seed: _light(dec)},
                jacobian_root=out.dir("jacobians"), chunk_size=chunk_size, jacobian_dtype=dtype)
    times["total"] = t()

    summary = _top_summary(dec, main_summary, results, times)
    _write_top(out, cfg, summary, results)
    return summary


def _light(dec: JacobianSVD) -> JacobianSVD:
    """The decomposition without U (seed comparisons need S and Vt only)."""
    return JacobianSVD(None, dec.S, dec.Vt, dec.codes, dec.cos_uv, dec.thresholds)  # type: ignore[arg-type]


def _top_summary(dec: JacobianSVD, main: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
                 times: Mapping[str, float]) -> dict[str, Any]:
    P = dec.S.size
    ref = {"num_params": P, "sigma_max": float(dec.S[0]),
           **{f"{r}_count": int(region_mask(dec.codes, r).sum()) for r in ("chaotic", "bulk", "stable")},
           "bulk_fraction": float(region_mask(dec.codes, "bulk").sum() / P)}
    metrics = main.get("metrics", {})
    if "test" in metrics:
        ref["test_accuracy"] = metrics["test"]["after"]["accuracy"]
        ref["test_loss"] = metrics["test"]["after"]["loss"]
    findings = {n: dict(r["finding"]) for n, r in results.items()}
    holds = [f.get("holds") for f in findings.values()]
    summary: dict[str, Any] = {
        "reference": ref,
        "experiments": {n: _headline(n, r) for n, r in results.items()},
        "findings": findings,
        "findings_hold": int(sum(1 for h in holds if h is True)),
        "findings_fail": int(sum(1 for h in holds if h is False)),
        "wall_time_s": dict(times),
        "warnings": [f"{n}: the finding does not hold on this run — {f['statement']}"
                     for n, f in findings.items() if f.get("holds") is False],
    }
    return summary


def _write_top(out: C.ResultsFolder, cfg: Mapping[str, Any], summary: dict[str, Any],
               results: Mapping[str, Any]) -> None:
    captions = {}
    for name, (sub, fig, cap) in KEY_FIGURES.items():
        src = out.path / sub / fig
        exp = sub.split("/")[0]
        if src.exists() and (exp == "jacobians" or exp in results):
            atomic_write_bytes(out / name, src.read_bytes())
            f = summary["findings"].get(exp)
            captions[name] = cap + (f" {f['statement']}." if f else "")
    lines = ["# Findings", ""]
    for n, f in summary["findings"].items():
        mark = {True: "holds", False: "does NOT hold", None: "undecided"}[f.get("holds")]
        lines.append(f"- **{n}** ({mark}): {f['claim']}. Measured: {f['statement']}.")
    atomic_write_bytes(out / "findings.md", ("\n".join(lines) + "\n").encode())
    C.finish(out, cfg, summary, captions)


def headline_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table of the findings (printed by the CLI)."""
    rows = []
    for n, f in summary["findings"].items():
        mark = {True: "holds", False: "NO", None: "?"}[f.get("holds")]
        rows.append(f"  {n:13s} {mark:6s} {f['statement']}")
    return "\n".join(rows)

