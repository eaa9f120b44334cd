"""``trainmap report RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

import typer


def report_command(
    run_dir: Path = typer.Argument(..., help="A results folder (config.json, summary.json, figures)."),
    interactive: bool = typer.Option(True, help="Inline the plotly views (adds ~5 MB of plotly.js)."),
    title: str = typer.Option("", help="Page title (default: the folder name)."),
) -> None:
    """Write RUN_DIR/report.html: warnings, headline numbers, figures with captions, config.

    The page is self-contained (images, styles and scripts inline) and opens offline.
    """
    from trainmap.report.html import write_report

    try:
        path = write_report(run_dir, interactive=interactive, title=title or None)
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote {path}")
