"""``trainmap koopman ...`` commands.

Every command writes a results folder (config.json, summary.json, .npy arrays, PNG figures,
captions.json, report.html); lens modules are imported inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from trainmap.commands._common import run_lens, usage_error

app = typer.Typer(help="Koopman lens: DMD spectra of training dynamics and conjugacy tests.",
                  no_args_is_help=True)

OUT_HELP = "results folder (default results/koopman-<command>)"
OVERWRITE_HELP = "replace what trainmap wrote in --out before (a folder holding results is refused otherwise)"


def _out(out: Optional[Path], name: str) -> Path:
    return out if out is not None else Path("results") / f"koopman-{name}"


def _layers(layers: Optional[str]) -> Optional[List[str]]:
    return [s.strip() for s in layers.split(",") if s.strip()] if layers else None


def _finish(out: Path, lines: List[str]) -> None:
    """Print the lens's headline lines, then build the report of ``out``."""
    from trainmap.report.html import write_report

    for line in lines:
        typer.echo(line)
    typer.echo(f"wrote {write_report(out)}")


@app.command("spectrum")
def spectrum_command(
    traj: Optional[Path] = typer.Argument(None, help="trajectory store (.zarr) written by a trainmap recorder "
                                                      "(or give --recipe)"),
    recipe: Optional[str] = typer.Option(None, help="path.py:function or module:function returning (recipe, theta0), "
                                                    "JAX or PyTorch: train it once and use its weight trajectory."),
    recipe_arg: Optional[List[str]] = typer.Option(
        None, "--recipe-arg", help="name=value passed to the --recipe function (repeatable; values read as JSON)."),
    every: int = typer.Option(0, help="with --recipe: record θ_t every k steps (0: T // 50)."),
    out: Optional[Path] = typer.Option(None, help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    layers: Optional[str] = typer.Option(None, help="comma-separated layer names to keep (default: all)"),
    pca: Optional[int] = typer.Option(None, help="project on this many principal components"),
    projection: Optional[int] = typer.Option(None, help="Gaussian random projection dimension"),
    delays: int = typer.Option(0, help="number of time delays (Hankel embedding)"),
    rank: Optional[int] = typer.Option(None, help="DMD rank = number of eigenvalues (default: numerical rank)"),
    seed: int = typer.Option(0, help="seed of the random projection"),
) -> None:
    """DMD spectrum of a recorded trajectory: pooled over its runs and per run."""
    from trainmap.commands._recipe import keep_store, load_recipe, record_weights
    from trainmap.koopman.experiments.stores import spectrum_of_store

    out = _out(out, "spectrum")
    if (traj is None) == (recipe is None):
        usage_error("give a trajectory store or --recipe path.py:function (not both)")
    source, weights = None, traj
    if recipe is not None:
        loaded = run_lens(lambda: load_recipe(recipe, recipe_arg or []))
        weights = run_lens(lambda: record_weights(loaded, every or None))
        source = {"recipe_source": loaded.source, "every": weights.meta["every"]}
    summary = run_lens(lambda: spectrum_of_store(weights, out, layers=_layers(layers), pca=pca,
                                                 projection=projection, delays=delays, rank=rank, seed=seed,
                                                 overwrite=overwrite, config=source))
    if recipe is not None:
        keep_store(out, "trajectory.zarr", weights)
    _finish(out, [f"{summary['n_eigenvalues']} eigenvalues, max |λ| = {summary['max_modulus']:.6g}"])


@app.command("compare")
def compare_command(
    traj_a: Path = typer.Argument(..., help="trajectory store of condition A"),
    traj_b: Path = typer.Argument(..., help="trajectory store of condition B"),
    out: Optional[Path] = typer.Option(None, help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    layers: Optional[str] = typer.Option(None, help="comma-separated layer names to keep (default: all)"),
    pca: Optional[int] = typer.Option(None, help="principal components fitted on the runs of both"),
    projection: Optional[int] = typer.Option(None, help="Gaussian random projection dimension"),
    delays: int = typer.Option(0, help="number of time delays"),
    rank: Optional[int] = typer.Option(None, help="DMD rank = number of eigenvalues"),
    n_permutations: int = typer.Option(9999, help="random relabellings when exact enumeration is too big"),
    alpha: float = typer.Option(0.05, help="significance level of the verdict"),
    seed: int = typer.Option(0, help="seed of the permutations and the random projection"),
) -> None:
    """Compare the dynamics of two recorded trajectories: W1 between spectra and the permutation test."""
    from trainmap.koopman.experiments.stores import compare_stores

    out = _out(out, "compare")
    summary, line = run_lens(lambda: compare_stores(
        traj_a, traj_b, out, layers=_layers(layers), pca=pca, projection=projection, delays=delays,
        rank=rank, n_permutations=n_permutations, alpha=alpha, seed=seed, overwrite=overwrite))
    _finish(out, [f"W1(pooled) = {summary['W1_pooled']:.4g}", line])


@app.command("omd-ogd")
def omd_ogd_command(
    out: Optional[Path] = typer.Option(None, help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    replicates: int = typer.Option(10, help="independent draws of initial conditions per method (test)"),
    grid: int = typer.Option(5, help="grid size (grid x grid initial conditions)"),
    eta: float = typer.Option(1e-2, help="step size"),
    steps: int = typer.Option(100, help="iterations"),
    delays: int = typer.Option(4, help="time delays"),
    rank: int = typer.Option(10, help="eigenvalues kept"),
    n_permutations: int = typer.Option(9999, help="permutations of the test"),
    seed: int = typer.Option(0, help="seed of the replicate draws and permutations"),
) -> None:
    """Validation: OMD (log barrier) vs OGD (x = exp u) are conjugate, the bisection method is not."""
    from trainmap.koopman.experiments import omd_ogd

    out = _out(out, "omd-ogd")
    s = run_lens(lambda: omd_ogd.run(out, eta=eta, steps=steps, grid=grid, delays=delays, rank=rank,
                                      replicates=replicates, n_permutations=n_permutations, seed=seed,
                                      overwrite=overwrite))
    _finish(out, [f"W(OMD,OGD) = {s['W_OMD_OGD']:.4g}, W(OGD,BM) = {s['W_OGD_BM']:.4g}, "
                     f"ratio = {s['ratio_W_OGD_BM_over_W_OMD_OGD']:.3g}",
                     f"OMD vs OGD: {s['test_OMD-OGD']['verdict']}", f"OGD vs BM: {s['test_OGD-BM']['verdict']}"])


@app.command("mlp-width")
def mlp_width_command(
    out: Optional[Path] = typer.Option(None, help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    widths: str = typer.Option("5,10,40", help="comma-separated hidden widths"),
    seeds: int = typer.Option(10, help="number of seeds per width"),
    steps: int = typer.Option(1000, help="SGD steps (logged every step)"),
    lr: float = typer.Option(0.1, help="learning rate"),
    batch_size: int = typer.Option(60, help="batch size"),
    embed_dim: int = typer.Option(400, help="target embedded dimension 10 h (delays + 1)"),
    rank: int = typer.Option(10, help="eigenvalues kept"),
    mnist: Optional[Path] = typer.Option(None, help="local MNIST .npz (x_train, y_train[, x_test, y_test]); default digits"),
    n_permutations: int = typer.Option(9999, help="permutations of the test"),
) -> None:
    """Narrow vs wide MLPs (input -> h -> 10, ReLU, no bias): conjugate early training or not?"""
    from trainmap.koopman.experiments import mlp_width

    out = _out(out, "mlp-width")
    s = run_lens(lambda: mlp_width.run(
        out, widths=tuple(int(w) for w in widths.split(",")), seeds=tuple(range(seeds)), steps=steps, lr=lr,
        batch_size=batch_size, embed_dim=embed_dim, rank=rank, mnist=str(mnist) if mnist else None,
        n_permutations=n_permutations, overwrite=overwrite))
    _finish(out, [f"{k}: {v['verdict']}" for k, v in s.items() if isinstance(v, dict) and "verdict" in v])


@app.command("cnn-early")
def cnn_early_command(
    out: Optional[Path] = typer.Option(None, help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    seeds: int = typer.Option(6, help="number of seeds"),
    steps: int = typer.Option(400, help="early-training steps recorded"),
    window: int = typer.Option(50, help="recorded points per window"),
    stride: int = typer.Option(25, help="points between window starts"),
    lr: float = typer.Option(0.05, help="SGD learning rate"),
    momentum: float = typer.Option(0.9, help="SGD momentum"),
    n_permutations: int = typer.Option(9999, help="permutations of the tests"),
) -> None:
    """CNN early training: spectra over successive windows and a heat map of their distances."""
    from trainmap.koopman.experiments import cnn_early

    out = _out(out, "cnn-early")
    s = run_lens(lambda: cnn_early.run(out, seeds=tuple(range(seeds)), steps=steps, window=window, stride=stride,
                                        lr=lr, momentum=momentum, n_permutations=n_permutations,
                                        overwrite=overwrite))
    _finish(out, [f"largest spectral change between windows {s['largest_change_between_windows']} "
                     f"(steps {s['largest_change_steps']}), W1 = {s['largest_consecutive_W1']:.4g}"])


@app.command("grokking")
def grokking_command(
    out: Optional[Path] = typer.Option(None, help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    p: int = typer.Option(113, help="modulus of the spectra runs"),
    seeds: int = typer.Option(5, help="seeds per condition"),
    steps: int = typer.Option(100, help="early steps analysed"),
    delays: int = typer.Option(32, help="time delays"),
    long_p: int = typer.Option(59, help="modulus of the long runs (0 skips them)"),
    long_steps: int = typer.Option(3000, help="maximum steps of the long runs"),
    long_train_fraction: float = typer.Option(0.6, help="train fraction of the long runs"),
    n_permutations: int = typer.Option(9999, help="permutations of the test"),
) -> None:
    """Transformers with and without grokking: early spectra, the test, and long runs."""
    from trainmap.koopman.experiments import grokking

    out = _out(out, "grokking")
    s = run_lens(lambda: grokking.run(out, p=p, seeds=tuple(range(seeds)), steps=steps, delays=delays,
                                       long_p=long_p or None, long_steps=long_steps,
                                       long_train_fraction=long_train_fraction, n_permutations=n_permutations,
                                       overwrite=overwrite))
    lines = [f"grokking vs non-grokking: {s['test']['verdict']}"]
    if "long_run" in s:
        lr = s["long_run"]
        lines.append(f"long runs (p={lr['p']}): grokking test acc {lr['grokking_final_test_accuracy']:.3f}, "
                     f"non-grokking {lr['non-grokking_final_test_accuracy']:.3f}")
    _finish(out, lines)
