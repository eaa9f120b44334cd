"""``trainmap analyze``: one training run through all three lenses, and the views that join them."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from trainmap.commands._common import run_lens
from trainmap.commands._recipe import builtin_run, load_recipe


def analyze_command(
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help="Your own run: path/to/file.py:function or package.module:function returning "
        "(recipe, theta0) (default: the published digits MLP of `trainmap jacobian`)."),
    recipe_arg: Optional[List[str]] = typer.Option(
        None, "--recipe-arg", help="name=value passed to the --recipe function (repeatable; values read as JSON)."),
    out: Path = typer.Option(Path("results/analyze"), help="Results folder (jacobian/, koopman/, ribbon/ inside)."),
    every: int = typer.Option(0, "--every", "--record-every",
                              help="Record θ_t and the predictions every k steps (0: T // 50)."),
    epsilon: float = typer.Option(0.1, help="Restarts θ₀ + ε‖θ₀‖ v along each region, v a random unit vector in it."),
    components: int = typer.Option(5, help="Principal components of the DMD fits and InPCA dimensions."),
    seed: int = typer.Option(0, help="Seed of the perturbation directions."),
    memory_gb: float = typer.Option(2.0, help="Memory budget (GiB) of the Jacobian engine; J and its SVD must fit."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out."),
    overwrite: bool = typer.Option(False, help="Replace a previous results folder at --out."),
) -> None:
    """Train once; the training Jacobian, the Koopman spectrum of θ_t and the InPCA ribbon of the
    predictions, each in a sub-folder, plus where training moves in J's regions, each region's Koopman
    spectrum and the predictions restarted along each region, in one joint report."""
    from trainmap._progress import stage
    from trainmap.joint import analyze_run
    from trainmap.report.html import write_reports

    run = run_lens(lambda: load_recipe(recipe, recipe_arg or []) if recipe else builtin_run())
    s = run_lens(lambda: analyze_run(
        run.recipe, run.theta0, out, eval_sets=run.eval_sets, every=every or None,
        epsilon=epsilon, components=components, seed=seed, memory_budget_gb=memory_gb, resume=resume,
        overwrite=overwrite, config=run.source and {"recipe_source": run.source}))
    with stage("report.html (joint and per lens)"):
        write_reports(out)
    typer.echo(f"\n{s['num_params']} parameters, {s['num_steps']} steps, {s['recorded_steps']} recorded")
    for r in ("chaotic", "bulk", "stable"):
        typer.echo(f"  {r:8s} {100 * s['dimension_share'][r]:5.1f}% of directions, "
                   f"{100 * s['energy_share_at_T'][r]:5.1f}% of ‖θ_T − θ₀‖², Koopman |λ|max "
                   f"{s['region_koopman_abs_max'].get(r, float('nan')):.3f}, restart moves predictions by "
                   f"{s['perturbed_final_bhattacharyya'].get(r, float('nan')):.2e} (Bhattacharyya)")
    typer.echo(f"  results in {out}/ (open report.html)")
