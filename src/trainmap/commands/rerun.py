"""``trainmap rerun DIR``: run the command that wrote a results folder again, into another folder,
and check that its summary.json comes out the same."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import typer

#: summary keys that measure the machine, not the run
VOLATILE = ("wall_time", "time_s", "peak_memory", "peak_rss", "warnings", "seconds")


def _leaves(prefix: str, obj: Any, out: dict) -> dict:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _leaves(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(obj, list) and all(isinstance(v, (int, float)) or v is None for v in obj):
        for i, v in enumerate(obj):
            out[f"{prefix}[{i}]"] = v
    else:
        out[prefix] = obj
    return out


def compare_summaries(old: dict, new: dict, rtol: float) -> list[str]:
    """The headline numbers that differ by more than ``rtol`` (relative; absolute below 1e-12),
    and any other value that differs; machine measurements (:data:`VOLATILE`) are skipped."""
    a, b = _leaves("", old, {}), _leaves("", new, {})
    problems = []
    for key in sorted(set(a) | set(b)):
        if any(v in key for v in VOLATILE):
            continue
        x, y = a.get(key, "(absent)"), b.get(key, "(absent)")
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            if not (math.isclose(x, y, rel_tol=rtol, abs_tol=1e-12) or (math.isnan(x) and math.isnan(y))):
                problems.append(f"{key}: {x!r} -> {y!r}")
        elif x != y:
            problems.append(f"{key}: {x!r} -> {y!r}")
    return problems


def _with_out(args: list[str], folder: Path, out: Path, cwd: Path) -> list[str]:
    """The command's arguments writing to ``out`` where they wrote ``folder`` (no --resume/--overwrite);
    relative paths of the command are relative to ``cwd``."""
    res, i, replaced = [], 0, False
    while i < len(args):
        a = args[i]
        if a in ("--resume", "--overwrite"):
            i += 1
            continue
        if a == "--out" and i + 1 < len(args) and (cwd / args[i + 1]).resolve() == folder.resolve():
            res += ["--out", str(out)]
            i, replaced = i + 2, True
            continue
        if a.startswith("--out=") and (cwd / a[6:]).resolve() == folder.resolve():
            res.append(f"--out={out}")
            i, replaced = i + 1, True
            continue
        res.append(a)
        i += 1
    return res if replaced else [*res, "--out", str(out)]


def rerun_command(
    folder: Path = typer.Argument(..., help="A results folder written by a trainmap command."),
    out: Optional[Path] = typer.Option(None, help="Where the rerun writes (default: FOLDER-rerun)."),
    rtol: float = typer.Option(1e-5, help="Relative tolerance on every number of summary.json."),
) -> None:
    """Run FOLDER's command again into --out and compare the two summary.json files; exit code 1
    when a number differs by more than --rtol."""
    from trainmap._io import read_json

    cfg_path, sum_path = folder / "config.json", folder / "summary.json"
    if not cfg_path.is_file() or not sum_path.is_file():
        typer.secho(f"error: {folder} is not a finished trainmap results folder (no config.json and summary.json)",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    command = read_json(cfg_path).get("command") or {}
    args, cwd = command.get("args"), Path(command.get("cwd") or ".")
    if not args:
        typer.secho(f"error: {folder}/config.json records no command (written from Python or by an older "
                    "trainmap); rerun it from Python with the recipe in config.json", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if args[0] == "rerun":
        typer.secho("error: that folder was written by `trainmap rerun`; rerun the original", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(2)
    out = (out or folder.with_name(folder.name + "-rerun")).resolve()
    new_args = _with_out(list(args), folder, out, cwd)
    typer.echo("rerunning: trainmap " + " ".join(new_args))
    res = subprocess.run([sys.executable, "-m", "trainmap.cli", *new_args], cwd=cwd if cwd.is_dir() else None)
    if res.returncode != 0:
        typer.secho(f"error: the rerun failed (exit code {res.returncode})", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    problems = compare_summaries(read_json(sum_path), read_json(out / "summary.json"), rtol)
    for line in problems:
        typer.secho(f"  {line}", fg=typer.colors.RED)
    typer.echo(f"summary.json of {out}: " + ("the same as the original" if not problems else
                                              f"{len(problems)} number(s) differ beyond rtol {rtol:g}"))
    if problems:
        raise typer.Exit(1)
