"""``trainmap ribbon ...`` commands: embed, linear, phase-diagram, deepnets.

Each command writes a results folder (config.json, summary.json, .npy arrays, PNG figures,
captions.json, report.html). Heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Hyper-ribbon lens: InPCA of prediction trajectories and linear-model theory.",
                  no_args_is_help=True)


def _finish(out: Path) -> None:
    from trainmap.report.html import write_report

    report = write_report(out)
    typer.echo(f"wrote {out}/ (report: {report})")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from exc


# ----------------------------------------------------------------------------- embed
@app.command("embed")
def embed(
    paths: List[Path] = typer.Argument(..., help="PredictionTrajectory stores (.zarr) recorded on one probe set."),
    out: Path = typer.Option(Path("results/ribbon-embed"), help="Results folder."),
    components: int = typer.Option(10, help="InPCA components kept."),
    references: bool = typer.Option(True, help="Add P0 (uniform) and P* (one-hot truth) when targets are known."),
    block: int = typer.Option(256, help="Checkpoints per Bhattacharyya block."),
    float64: bool = typer.Option(False, help="float64 products (slower; float32 is accurate to ~1e-7)."),
) -> None:
    """Joint InPCA embedding of one or more prediction trajectories."""
    import numpy as np

    from trainmap._io import atomic_save_npy, atomic_write_json
    from trainmap.record.predictions import check_compatible
    from trainmap.record.store import PredictionTrajectory
    from trainmap.ribbon.figures import embed_figures
    from trainmap.ribbon.inpca import InPCA
    from trainmap.ribbon.measures import (decay_fit, geodesic_points, geodesic_progress, onehot_prediction,
                                          uniform_prediction, widths)

    trajs = [PredictionTrajectory.load(p) for p in paths]
    check_compatible(trajs, [str(p) for p in paths])
    probs = np.concatenate([np.asarray(t.probs).reshape(-1, *t.shape[2:]) for t in trajs])
    run_of_point = np.concatenate([np.repeat(np.arange(t.shape[0]), t.shape[1]) + sum(u.shape[0] for u in trajs[:i])
                                   for i, t in enumerate(trajs)])
    labels = [f"{Path(p).stem}:{lab}" for p, t in zip(paths, trajs) for lab in t.labels]
    targets = trajs[0].targets
    N, C = probs.shape[1:]
    n_pts = len(probs)
    points = probs
    if references and targets is not None:
        points = np.concatenate([probs, uniform_prediction(N, C)[None], onehot_prediction(targets, C)[None]])
    model = InPCA(components, block=block, dtype=np.float64 if float64 else np.float32, progress=True).fit(points)
    out.mkdir(parents=True, exist_ok=True)
    emb = model.embedding_
    refs = {}
    prog = None
    if references and targets is not None:
        refs = {"P0": emb[n_pts], "P*": emb[n_pts + 1]}
        atomic_save_npy(out / "geodesic.npy", model.transform(geodesic_points(targets, C, 21)))
        prog = geodesic_progress(probs, targets)
        atomic_save_npy(out / "progress.npy", prog)
    atomic_save_npy(out / "embedding.npy", emb)
    atomic_save_npy(out / "eigenvalues.npy", model.eigenvalues_)
    atomic_write_json(out / "config.json", dict(command="ribbon embed", inputs=[str(p) for p in paths],
                                                components=components, references=references, block=block,
                                                float64=float64))
    chi = model.explained_stress_
    fit = decay_fit(model.eigenvalues_) if len(model.eigenvalues_) > 1 else None
    summary = dict(num_points=int(points.shape[0]), samples=int(N), classes=int(C),
                   chi_1=float(chi[0]), chi_2=float(chi[min(1, len(chi) - 1)]), chi_3=float(chi[min(2, len(chi) - 1)]),
                   explained_stress=chi, eigenvalues=model.eigenvalues_,
                   num_negative_eigenvalues_in_top=int(np.sum(model.eigenvalues_ < 0)),
                   eigenvalue_decay_ratio=fit.ratio if fit else None, widths=widths(emb),
                   total_stress=model.total_stress_)
    if prog is not None:
        summary["progress_final_mean"] = float(np.mean([prog[run_of_point == r][-1] for r in np.unique(run_of_point)]))
    atomic_write_json(out / "summary.json", summary)
    embed_figures(out, emb[:n_pts], model.eigenvalues_, chi, run_of_point, labels, prog,
                  {k: v for k, v in refs.items()})
    typer.echo(f"chi_3 = {summary['chi_3']:.3f} over {points.shape[0]} points")
    _finish(out)


# ----------------------------------------------------------------------------- linear
@app.command("linear")
def linear(
    decay: float = typer.Option(0.5, help="Input eigenvalue decay rate c."),
    scale: float = typer.Option(10.0, help="Ground-truth scale ‖w*‖/‖w0‖."),
    steps: int = typer.Option(100, help="Number of gradient-descent steps T."),
    kind: str = typer.Option("exponential", help="'exponential' (e^{-ck}) or 'power' (k^{-c}) decay."),
    dim: int = typer.Option(200, help="Input dimension d."),
    runs: int = typer.Option(16, help="Runs (initialisations) in the ensemble."),
    records: int = typer.Option(41, help="Recorded points per run (evenly spaced)."),
    lr_factor: float = typer.Option(0.5, help="η = lr_factor / λ_max."),
    kernel: bool = typer.Option(True, help="Also run the kernel-machine (random ReLU features) check."),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="Results folder (default results/ribbon-linear)."),
) -> None:
    """Linear regression: closed-form vs trained InPCA spectra of an ensemble."""
    import numpy as np

    from trainmap._io import atomic_save_npy, atomic_write_json
    from trainmap.ribbon.figures import linear_figures
    from trainmap.ribbon.inpca import InPCA
    from trainmap.ribbon.distances import gaussian_bhattacharyya_matrix
    from trainmap.ribbon.linear import (analytic_spectrum, closed_form_weights, crossover_scale, make_linear_problem,
                                        plateau_decay, ribbon_score, simulate_gd, exact_covariance_inputs,
                                        theory_score, trained_predictions)
    from trainmap.ribbon.measures import decay_fit

    out = out or Path("results/ribbon-linear")
    out.mkdir(parents=True, exist_ok=True)
    prob = make_linear_problem(dim, decay, scale, steps, runs, kind, lr_factor, num_records=records, seed=seed)
    k = 10
    lam_a, tot_a = analytic_spectrum(prob, k)
    F = trained_predictions(prob, 2 * dim, seed + 1)
    D = gaussian_bhattacharyya_matrix(F.reshape(-1, F.shape[-1]), prob.sigma**2)
    model = InPCA(k, solver="dense").fit_distances(D)
    lam_e = model.eigenvalues_
    rel = np.abs(lam_e[:5] - lam_a[:5]) / np.abs(lam_a[:5])
    X = exact_covariance_inputs(prob.eigenvalues, 2 * dim, seed + 1)
    gd = simulate_gd(X, X @ prob.w_star, prob.w0, prob.lr, prob.steps)
    cf = closed_form_weights(X.T @ X / len(X), prob.w0, prob.w_star, prob.lr, prob.steps)
    summary = dict(
        chi_3_numeric=ribbon_score(lam_a, tot_a), chi_3_theory=theory_score(prob.eigenvalues, scale, prob.lr, prob.steps),
        analytic_eigenvalues=lam_a, trained_eigenvalues=lam_e, max_rel_diff_top5=float(rel.max()),
        closed_form_vs_gd_max_abs=float(np.abs(gd - cf).max()),
        eigenvalue_decay_ratio=decay_fit(lam_a[:5]).ratio,
        crossover_scale_rb=crossover_scale(prob.eigenvalues, prob.lr, prob.steps),
        decay_boundary_cA=plateau_decay(steps, dim, kind, lr_factor, records),
    )
    summary["is_hyper_ribbon"] = bool(summary["chi_3_numeric"] >= 0.9)
    if kernel:
        summary.update(_kernel_check(decay, dim, steps, runs, records, seed))
    atomic_write_json(out / "config.json", dict(command="ribbon linear", decay=decay, scale=scale, steps=steps,
                                                kind=kind, dim=dim, runs=runs, records=records, lr_factor=lr_factor,
                                                kernel=kernel, seed=seed, lr=prob.lr))
    atomic_write_json(out / "summary.json", summary)
    atomic_save_npy(out / "analytic_eigenvalues.npy", lam_a)
    atomic_save_npy(out / "trained_eigenvalues.npy", lam_e)
    atomic_save_npy(out / "embedding.npy", model.embedding_)
    linear_figures(out, lam_a, lam_e, model.embedding_, runs, len(prob.steps),
                   f"c={decay:g}, ‖w*‖/‖w₀‖={scale:g}, T={steps}")
    typer.echo(f"chi_3 = {summary['chi_3_numeric']:.3f}; analytic vs trained top-5 max rel diff = "
               f"{summary['max_rel_diff_top5']:.1e}")
    _finish(out)


def _kernel_check(decay: float, dim: int, steps: int, runs: int, records: int, seed: int) -> dict:
    """Kernel machine on sloppy inputs: closed form in function space vs GD on the features."""
    import numpy as np

    from trainmap.data.synthetic import sloppy_inputs, tanh_teacher
    from trainmap.ribbon.linear import (inpca_spectrum_from_points, kernel_closed_form, random_relu_features,
                                        ribbon_score, simulate_feature_gd, uniform_steps)

    n = 120
    x = sloppy_inputs(n, dim, decay, seed=seed).astype(np.float64)
    y = tanh_teacher(dim, 50, 1, float(np.mean(np.sum(x**2, 1))), seed + 1)(x)[:, 0]
    Phi = random_relu_features(x, 256, seed + 2)
    K = Phi @ Phi.T
    kap = np.linalg.eigvalsh(K / n)[::-1]
    lr = 0.5 / kap[0]
    theta0 = np.random.default_rng(seed + 3).standard_normal((runs, Phi.shape[1])) * 0.1
    st = uniform_steps(steps, records)
    sim = simulate_feature_gd(Phi, y, theta0, lr, st)
    cf = kernel_closed_form(K, theta0 @ Phi.T, y, lr, st)
    lam, tot = inpca_spectrum_from_points(cf.reshape(-1, n) / np.sqrt(n), 1.0, 10)
    return dict(kernel_closed_form_vs_gd_max_abs=float(np.abs(sim - cf).max()),
                kernel_chi_3=ribbon_score(lam, tot), kernel_eigen_decay_top5=(kap[1:6] / kap[:5]).tolist())


# ----------------------------------------------------------------------------- phase diagram
@app.command("phase-diagram")
def phase_diagram_cmd(
    decays: str = typer.Option("0,0.1,0.25,0.5,0.75,1,1.5,2,3,4", help="Comma-separated decay rates c."),
    scales: str = typer.Option("0.01,0.03,0.1,0.3,1,3,10,30,100", help="Comma-separated ‖w*‖/‖w0‖."),
    steps: str = typer.Option("10,100,1000", help="Comma-separated numbers of steps T."),
    kind: str = typer.Option("exponential"),
    dim: int = typer.Option(200),
    runs: int = typer.Option(16),
    records: int = typer.Option(41),
    threshold: float = typer.Option(0.9, help="χ_3 at or above which an ensemble counts as a hyper-ribbon."),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="Results folder (default results/ribbon-phase-diagram)."),
) -> None:
    """Phase diagram of the hyper-ribbon score over (decay, scale, steps) with derived boundaries."""
    import numpy as np

    from trainmap._io import atomic_save_npy, atomic_write_json
    from trainmap.ribbon.figures import phase_figure
    from trainmap.ribbon.linear import phase_diagram

    out = out or Path("results/ribbon-phase-diagram")
    out.mkdir(parents=True, exist_ok=True)
    pd = phase_diagram(_floats(decays), _floats(scales), [int(v) for v in _floats(steps)], dim, runs, kind,
                       num_records=records, threshold=threshold, seed=seed, progress=True)
    num_phase = pd.numeric >= threshold
    theo_phase = pd.theory >= threshold
    pred = pd.predicted()
    atomic_write_json(out / "config.json", dict(command="ribbon phase-diagram", decays=pd.decays, scales=pd.scales,
                                                steps=pd.steps, kind=kind, dim=dim, runs=runs, records=records,
                                                threshold=threshold, seed=seed, lr_factor=0.5))
    for name in ("numeric", "theory", "crossover", "plateau"):
        atomic_save_npy(out / f"{name}.npy", getattr(pd, name))
    disagree = np.argwhere(num_phase != pred)
    summary = dict(
        cells=int(num_phase.size),
        ribbon_fraction_numeric=float(num_phase.mean()),
        agreement_numeric_vs_boundaries=float(np.mean(num_phase == pred)),
        agreement_numeric_vs_theory=float(np.mean(num_phase == theo_phase)),
        agreement_theory_vs_boundaries=float(np.mean(theo_phase == pred)),
        decay_boundary_cA={int(T): float(c) for T, c in zip(pd.steps, pd.plateau)},
        disagreements=[dict(steps=int(pd.steps[s]), decay=float(pd.decays[a]), scale=float(pd.scales[b]),
                            chi_3=float(pd.numeric[s, a, b]), boundaries_say_ribbon=bool(pred[s, a, b]))
                       for s, a, b in disagree],
    )
    atomic_write_json(out / "summary.json", summary)
    phase_figure(out, pd)
    typer.echo(f"numeric phase agrees with the derived boundaries in {summary['agreement_numeric_vs_boundaries']:.0%} "
               f"of {summary['cells']} cells (with the large-ensemble theory: {summary['agreement_numeric_vs_theory']:.0%})")
    _finish(out)


# ----------------------------------------------------------------------------- deep nets
@app.command("deepnets")
def deepnets(
    out: Path = typer.Option(Path("results/ribbon-deepnets"), help="Results folder (resumes if it has groups/)."),
    steps: int = typer.Option(1000, help="Optimizer steps per run."),
    checkpoints: int = typer.Option(24, help="Log-spaced checkpoints per run (plus step 0)."),
    seeds: str = typer.Option("0,1", help="Comma-separated seeds."),
    quick: bool = typer.Option(False, help="A tiny grid for a smoke test (not the experiment)."),
) -> None:
    """Train >=100 digits classifiers, embed all checkpoints jointly with P0 and P*, report chi_3."""
    from trainmap.ribbon.deepnets import DeepNetsConfig, run_experiment

    seed_list = tuple(int(v) for v in _floats(seeds))
    cfg = DeepNetsConfig(seeds=seed_list, num_steps=steps, checkpoints=checkpoints)
    if quick:
        cfg = DeepNetsConfig(architectures=("mlp32-relu", "cnn4-8"), optimizers=("sgd", "adam"), batch_sizes=(32,),
                             seeds=(0,), num_steps=min(steps, 60), checkpoints=min(checkpoints, 6), n_train=300)
    summary = run_experiment(out, cfg)
    typer.echo(summary["verdict"])
    _finish(out)
