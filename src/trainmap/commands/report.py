"""``trainmap report RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

import typer


def report_command(
    run_dir: Path = typer.Argument(..., help="A results folder (config.json, summary.json, figures)."),
    interactive: bool = typer.Option(True, help="Inline the plotly views (adds ~5 MB of plotly.js)."),
    title: str = typer.Option("", help="Page title (default: the folder name)."),
    shared_plotly: bool = typer.Option(False, help="Write plotly.min.js once into RUN_DIR and load it from "
                                                   "there in RUN_DIR's report and the reports of the results "
                                                   "folders below it (instead of ~5 MB inlined into each)."),
) -> None:
    """Write RUN_DIR/report.html: warnings, headline numbers, figures with captions, config.

    The page is self-contained (images, styles and scripts inline) and opens offline.
    """
    from trainmap.report.html import write_report, write_reports

    try:
        path = (write_reports(run_dir, interactive=interactive, title=title or None, plotly="shared")
                if shared_plotly else write_report(run_dir, interactive=interactive, title=title or None))
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote {path}")
