"""``trainmap report RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

import typer


def report_command(run_dir: Path = typer.Argument(..., help="A results folder.")) -> None:
    """Write RUN_DIR/report.html from the folder's config, summary and figures."""
    from trainmap.report.html import write_report

    path = write_report(run_dir)
    typer.echo(f"wrote {path}")
