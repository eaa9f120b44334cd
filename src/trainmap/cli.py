"""The ``trainmap`` command line: ``trainmap <lens> <command>``.

Every command writes a results folder (config.json, summary.json, arrays, figures, report.html).
Lens modules are imported lazily inside each command, so ``trainmap --help`` is instant.
"""

from __future__ import annotations

import typer

from trainmap.commands import jacobian, koopman, report, ribbon

app = typer.Typer(
    name="trainmap",
    help="Measure the geometry of neural-network training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(jacobian.app, name="jacobian")
app.add_typer(koopman.app, name="koopman")
app.add_typer(ribbon.app, name="ribbon")
app.command(name="report")(report.report_command)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
