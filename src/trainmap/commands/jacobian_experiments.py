"""``trainmap jacobian <experiment>`` subcommands (registered on the ``jacobian`` group)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the experiment subcommands to the ``trainmap jacobian`` group."""
    return None
