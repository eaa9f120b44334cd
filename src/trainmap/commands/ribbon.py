"""``trainmap ribbon ...`` commands: embed, linear, phase-diagram, deepnets.

Each command writes a results folder (config.json, summary.json, .npy arrays, PNG figures,
captions.json, report.html). Heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from trainmap.commands._common import run_lens, usage_error
from trainmap.results import mode_of

app = typer.Typer(help="Hyper-ribbon lens: InPCA of prediction trajectories and linear-model theory.",
                  no_args_is_help=True)


def _finish(out: Path) -> None:
    from trainmap.report.html import write_report

    report = write_report(out)
    typer.echo(f"wrote {out}/ (report: {report})")


OVERWRITE_HELP = "Replace what trainmap wrote in --out before (a folder holding results is refused otherwise)."


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from exc


# ----------------------------------------------------------------------------- embed
@app.command("embed")
def embed(
    paths: Optional[List[Path]] = typer.Argument(None, help="PredictionTrajectory stores (.zarr) recorded on one "
                                                             "probe set (or give --recipe)."),
    recipe: Optional[str] = typer.Option(None, help="path.py:function or module:function returning (recipe, theta0), "
                                                    "JAX or PyTorch: train it once and embed its predictions on "
                                                    "the first --probe-size training inputs."),
    recipe_arg: Optional[List[str]] = typer.Option(
        None, "--recipe-arg", help="name=value passed to the --recipe function (repeatable; values read as JSON)."),
    every: int = typer.Option(0, help="with --recipe: record the predictions every k steps (0: T // 50)."),
    probe_size: int = typer.Option(256, help="with --recipe: probe samples (the first training inputs)."),
    out: Path = typer.Option(Path("results/ribbon-embed"), help="Results folder."),
    components: int = typer.Option(10, help="InPCA components kept."),
    references: bool = typer.Option(False, help="Also embed P0 (uniform) and P* (one-hot truth), when the stores "
                                                "carry targets (off by default, as InPCA().fit in Python)."),
    block: int = typer.Option(256, help="Checkpoints per Bhattacharyya block."),
    float64: bool = typer.Option(False, help="float64 products (slower; float32 is accurate to ~1e-7)."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Joint InPCA embedding of one or more prediction trajectories."""
    from trainmap.commands._recipe import keep_store, load_recipe, record_predictions
    from trainmap.ribbon.experiments.embed import embed_stores

    if bool(paths) == (recipe is not None):
        usage_error("give prediction-trajectory stores or --recipe path.py:function (not both)")
    source, inputs = None, paths
    if recipe is not None:
        loaded = run_lens(lambda: load_recipe(recipe, recipe_arg or []))
        preds = run_lens(lambda: record_predictions(loaded, every or None, probe_size))
        source, inputs = {"recipe_source": loaded.source, "every": preds.meta["every"], "probe_size": probe_size}, [preds]
    summary = run_lens(lambda: embed_stores(inputs, out, components=components, references=references,
                                            block=block, float64=float64, mode=mode_of(overwrite=overwrite),
                                            config=source))
    if recipe is not None:
        keep_store(out, "predictions.zarr", preds)
    typer.echo(f"chi_3 = {summary['chi_3']:.3f} over {summary['num_points']} points")
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
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Linear regression: closed-form vs trained InPCA spectra of an ensemble."""
    from trainmap.ribbon.experiments.linear_models import linear_ensemble

    out = out or Path("results/ribbon-linear")
    summary = run_lens(lambda: linear_ensemble(out, decay=decay, scale=scale, steps=steps, kind=kind, dim=dim,
                                               runs=runs, records=records, lr_factor=lr_factor,
                                               kernel=kernel, seed=seed, mode=mode_of(overwrite=overwrite)))
    typer.echo(f"chi_3 = {summary['chi_3_numeric']:.3f}; analytic vs trained top-5 max rel diff = "
               f"{summary['max_rel_diff_top5']:.1e}")
    _finish(out)


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
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Phase diagram of the hyper-ribbon score over (decay, scale, steps) with derived boundaries."""
    from trainmap.ribbon.experiments.linear_models import phase_diagram_experiment

    out = out or Path("results/ribbon-phase-diagram")
    summary = run_lens(lambda: phase_diagram_experiment(
        out, _floats(decays), _floats(scales), [int(v) for v in _floats(steps)], kind=kind, dim=dim,
        runs=runs, records=records, threshold=threshold, seed=seed, mode=mode_of(overwrite=overwrite)))
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
    overwrite: bool = typer.Option(False, help="Start over instead of resuming a folder of an earlier run."),
) -> None:
    """Train >=100 digits classifiers, embed all checkpoints jointly with P0 and P*, report chi_3."""
    from trainmap.ribbon.experiments.deepnets import DeepNetsConfig, run_experiment

    seed_list = tuple(int(v) for v in _floats(seeds))
    cfg = DeepNetsConfig(seeds=seed_list, num_steps=steps, checkpoints=checkpoints)
    if quick:
        cfg = DeepNetsConfig(architectures=("mlp32-relu", "cnn4-8"), optimizers=("sgd", "adam"), batch_sizes=(32,),
                             seeds=(0,), num_steps=min(steps, 60), checkpoints=min(checkpoints, 6), n_train=300)
    summary = run_lens(lambda: run_experiment(out, cfg, overwrite=overwrite))
    typer.echo(summary["verdict"])
    _finish(out)
