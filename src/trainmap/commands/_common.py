"""What every command shares: one error line for user errors, and the report after a lens."""

from __future__ import annotations

from typing import Any, Callable

import typer

#: exceptions that mean "the user asked for something that cannot be done": one line, exit 2
USER_ERRORS: tuple[type[BaseException], ...] = (FileExistsError, ValueError, RuntimeError)


def run_lens(fn: Callable[[], Any]) -> Any:
    """Call one lens function; a user error becomes ``error: ...`` on stderr and exit code 2."""
    try:
        return fn()
    except USER_ERRORS as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
