"""``trainmap jacobian``: the exact training Jacobian of the reference (or a configured) MLP."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(help="Training-Jacobian lens: J = dθ_T/dθ₀, its SVD and chaotic/bulk/stable regions.")


class Optimizer(str, Enum):
    sgd = "sgd"
    adam = "adam"


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"


@app.callback(invoke_without_command=True)
def jacobian(
    ctx: typer.Context,
    hidden: int = typer.Option(64, help="Hidden width of the MLP 64→hidden→10."),
    epochs: int = typer.Option(25, help="Training epochs over the 1,600 training digits."),
    batch_size: int = typer.Option(64, help="Batch size."),
    lr: float = typer.Option(0.1, help="Peak learning rate (cosine-decayed to 0)."),
    optimizer: Optimizer = typer.Option(Optimizer.sgd, help="sgd (momentum 0.9) or adam."),
    activation: str = typer.Option("gelu", help="gelu, relu or tanh."),
    seed: int = typer.Option(0, help="Seed of the initialisation and the data order."),
    dtype: DType = typer.Option(DType.float32, help="Precision of the Jacobian and its SVD."),
    bulk_tol: float = typer.Option(0.1, help="Bulk is |σ−1| ≤ bulk_tol."),
    chunk_size: int = typer.Option(0, help="Tangents per chunk (0: chosen from --memory-gb)."),
    memory_gb: float = typer.Option(2.0, help="Memory budget of one chunk, GiB."),
    out: Path = typer.Option(Path("results/jacobian"), help="Results folder."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out."),
    overwrite: bool = typer.Option(False, help="Replace a previous results folder at --out."),
) -> None:
    """Run the exact training-Jacobian analysis (no options: the reference experiment)."""
    if ctx.invoked_subcommand is not None:
        return
    from trainmap.jacobian.analysis import analyze
    from trainmap.jacobian.regions import Thresholds
    from trainmap.presets import digits_mlp

    setup = digits_mlp(hidden=hidden, activation=activation, optimizer=optimizer.value, lr=lr,
                       epochs=epochs, batch_size=batch_size, seed=seed)
    d = setup.data
    try:
        summary = analyze(setup.recipe, setup.theta0, out,
                          eval_sets={"train": (d.x_train, d.y_train), "test": (d.x_test, d.y_test)},
                          dtype=dtype.value, thresholds=Thresholds.symmetric(bulk_tol),
                          chunk_size=chunk_size or None, memory_budget_gb=memory_gb,
                          resume=resume, overwrite=overwrite)
    except (FileExistsError, ValueError, RuntimeError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    _print_summary(summary, out)


def _print_summary(s: dict, out: Path) -> None:
    P = s["num_params"]
    typer.echo(f"\n{P} parameters; σ_max = {s['sigma_max']:.3f}, σ_min = {s['sigma_min']:.3g}")
    for r in ("chaotic", "bulk", "stable"):
        c = s[r]
        cos = c["median_abs_cos_uv"]
        typer.echo(f"  {r:8s} {c['count']:5d} ({100 * c['fraction']:5.1f}%)  median |cos(u,v)| = "
                   f"{cos if cos is None else round(cos, 4)}")
    for name, m in s["metrics"].items():
        typer.echo(f"  {name}: loss {m['before']['loss']:.3f} -> {m['after']['loss']:.3f}, "
                   f"accuracy {m['before']['accuracy']:.3f} -> {m['after']['accuracy']:.3f}")
    for w in s.get("warnings", []):
        typer.secho(f"  warning: {w}", fg=typer.colors.YELLOW)
    typer.echo(f"  wall time {s['wall_time_s']['total']:.1f} s; results in {out}/ (open report.html)")


from trainmap.commands import jacobian_experiments  # noqa: E402

jacobian_experiments.register(app)
