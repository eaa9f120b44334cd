"""``trainmap koopman ...`` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Koopman lens: DMD spectra of training dynamics and conjugacy tests.",
                  no_args_is_help=True)
