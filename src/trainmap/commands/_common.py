"""What every command shares: one error line for user errors (``--debug`` for the traceback)."""

from __future__ import annotations

from typing import Any, Callable

import typer

#: exceptions that mean "the user asked for something that cannot be done here": one line, exit 2.
#: OSError covers unusable --out paths and a full disk; FloatingPointError a training run that is not
#: differentiable in the chosen precision.
USER_ERRORS: tuple[type[BaseException], ...] = (FileExistsError, ValueError, RuntimeError, OSError,
                                                MemoryError, FloatingPointError)

#: set by ``trainmap --debug``: let exceptions through with their traceback
DEBUG = {"on": False}


def error_line(exc: BaseException) -> str:
    """The one line a user sees for ``exc``."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, FileExistsError) and exc.filename:
        text = f"{exc.strerror or type(exc).__name__}: {exc.filename}; choose another --out or free space"
    return "error: " + " ".join(text.split())


def run_lens(fn: Callable[[], Any]) -> Any:
    """Call one lens function; a user error becomes ``error: ...`` on stderr and exit code 2."""
    try:
        return fn()
    except USER_ERRORS as exc:
        if DEBUG["on"]:
            raise
        typer.secho(error_line(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc


def usage_error(message: str) -> None:
    """Stop a command with ``error: message`` on stderr and exit code 2 (nothing written)."""
    typer.secho(error_line(ValueError(message)), fg=typer.colors.RED, err=True)
    raise typer.Exit(2)
