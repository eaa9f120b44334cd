"""``trainmap ribbon ...`` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Hyper-ribbon lens: InPCA of prediction trajectories and linear-model theory.",
                  no_args_is_help=True)
