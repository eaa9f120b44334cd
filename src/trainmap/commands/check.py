"""``trainmap check DIR``: verify a results folder (and the folders and stores below it)."""

from __future__ import annotations

from pathlib import Path

import typer


def check_command(
    folder: Path = typer.Argument(..., help="A results folder (its sub-folders and zarr stores are checked too)."),
) -> None:
    """Check every file trainmap wrote against its checksum; exit code 1 when something differs."""
    from trainmap.record.store import verify_store
    from trainmap.results import FolderError, results_folders, verify

    if not folder.is_dir():
        typer.secho(f"error: {folder} is not a folder", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    problems, checked = [], 0
    for sub in sorted(results_folders(folder)):
        try:
            problems += verify(sub)
            checked += 1
        except (FolderError, ValueError) as exc:
            problems.append(str(exc))
    stores = sorted(p for p in folder.rglob("*.zarr") if p.is_dir())
    if folder.suffix == ".zarr":
        stores.insert(0, folder)
    for store in stores:
        problems += verify_store(store)
        checked += 1
    if not checked:
        typer.secho(f"error: {folder} holds no trainmap results folder or store", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    for line in problems:
        typer.secho(f"  {line}", fg=typer.colors.RED)
    typer.echo(f"{checked} folder(s)/store(s) checked: " + ("intact" if not problems else f"{len(problems)} problem(s)"))
    if problems:
        raise typer.Exit(1)
