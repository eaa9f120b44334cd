"""The ``trainmap`` command line: ``trainmap <lens> <command>``.

Every command writes a results folder (config.json, summary.json, arrays, figures, report.html).
Lens modules are imported lazily inside each command, so ``trainmap --help`` is instant.
"""

from __future__ import annotations

import signal
import sys

import typer

from trainmap.commands import analyze, check, jacobian, koopman, report, rerun, ribbon
from trainmap.commands._common import DEBUG, USER_ERRORS, error_line

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
app.command(name="analyze")(analyze.analyze_command)
app.command(name="report")(report.report_command)
app.command(name="check")(check.check_command)
app.command(name="rerun")(rerun.rerun_command)


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
    compile_cache: bool = typer.Option(
        True, "--compile-cache/--no-compile-cache",
        help="Keep JAX's compiled programs in ~/.cache/trainmap/jax (or $TRAINMAP_CACHE_DIR), so that "
             "a second run does not compile again."),
) -> None:
    """Measure the geometry of neural-network training."""
    from trainmap._cache import enable_compilation_cache

    DEBUG["on"] = debug
    enable_compilation_cache(compile_cache)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (e.g. a batch scheduler) unwinds like Ctrl-C, so that temporary files are removed
    and finished chunks stay checkpointed."""
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def main() -> None:
    """Console-script entry point: one ``error: ...`` line and exit code 2 for a user error,
    exit code 130 for an interruption (``--resume`` continues), a traceback only with --debug."""
    signal.signal(signal.SIGTERM, _terminate)
    from trainmap.results import RUN_COMMAND

    RUN_COMMAND["args"] = sys.argv[1:]  # recorded in config.json: `trainmap rerun` replays it
    try:
        app()
    except KeyboardInterrupt as exc:
        if "--debug" in sys.argv:
            raise
        typer.secho(f"interrupted ({exc or 'Ctrl-C'}); finished work is kept: rerun with --resume to "
                    "continue", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)
    except USER_ERRORS as exc:
        if "--debug" in sys.argv:
            raise
        typer.secho(error_line(exc), fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
