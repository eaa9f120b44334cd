"""Regenerate the README / docs gallery: the reference figure of each lens, in ``docs/img/``.

Usage (from the repository root)::

    python -m trainmap.report.gallery            # copy figures from existing results folders,
                                                 # running the reference command where one is missing
    python -m trainmap.report.gallery --list     # what would be done, without doing it
    python -m trainmap.report.gallery --rerun    # rerun every reference command first
    python -m trainmap.report.gallery --no-run   # only copy figures that already exist
    python -m trainmap.report.gallery --only jacobian --only koopman-omd-ogd

Each gallery entry names a ``trainmap`` command (the paper's reference experiment of a lens, run
with its defaults), the results folder it writes, the figure in that folder, and the image name
under ``docs/img/``. Entries whose command this installation does not have (a lens not built yet)
are reported and skipped. Reference commands can take minutes (the Jacobian one about three on
two CPU cores); figures already in a results folder are copied without rerunning.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class GalleryItem:
    """One gallery image.

    Attributes:
        key: short name (``--only`` selects by it).
        command: ``trainmap`` arguments of the reference run, without ``--out``.
        folder: the results folder the command writes (relative to the results root's parent).
        figure: the PNG inside that folder.
        image: the file name under the image folder.
        title: one line for the gallery.
    """

    key: str
    command: tuple[str, ...]
    folder: str
    figure: str
    image: str
    title: str


ITEMS: tuple[GalleryItem, ...] = (
    GalleryItem("jacobian", ("jacobian",), "results/jacobian", "spectrum.png", "jacobian_spectrum.png",
                "Training Jacobian of the reference MLP: singular values with the chaotic, bulk and stable regions"),
    GalleryItem("koopman-omd-ogd", ("koopman", "omd-ogd"), "results/koopman-omd-ogd", "spectra.png",
                "koopman_omd_ogd_spectra.png",
                "Koopman spectra of OMD, OGD and the bisection method: conjugate dynamics share eigenvalues"),
    GalleryItem("koopman-mlp-width", ("koopman", "mlp-width"), "results/koopman-mlp-width", "distance_matrix.png",
                "koopman_mlp_width_distances.png",
                "Wasserstein distances between DMD spectra of narrow and wide MLPs (per seed)"),
    GalleryItem("koopman-cnn-early", ("koopman", "cnn-early"), "results/koopman-cnn-early", "window_heatmap.png",
                "koopman_cnn_early_windows.png",
                "Early CNN training: distances between the spectra of successive windows mark transitions"),
    GalleryItem("ribbon-linear", ("ribbon", "linear"), "results/ribbon-linear", "linear_spectrum.png",
                "ribbon_linear_spectrum.png",
                "Linear models: closed-form and trained InPCA spectra agree; the ensemble forms a thin ribbon"),
    GalleryItem("ribbon-deepnets", ("ribbon", "deepnets"), "results/ribbon-deepnets", "embedding3d_config.png",
                "ribbon_deepnets_embedding.png",
                "Many digits classifiers in one InPCA embedding: the training trajectories share a low-dimensional manifold"),
)


def _has_command(args: Sequence[str]) -> bool:
    """Whether ``trainmap <args>`` exists in this installation (asks its --help)."""
    res = subprocess.run([sys.executable, "-m", "trainmap.cli", *args, "--help"], capture_output=True, text=True)
    return res.returncode == 0


def regenerate(items: Sequence[GalleryItem] = ITEMS, *, root: str | Path = ".", img_dir: str | Path = "docs/img",
               rerun: bool = False, dry_run: bool = False, run: bool = True, echo=print) -> dict[str, str]:
    """Copy (running first where needed) each item's reference figure into ``img_dir``.

    Args:
        items: gallery entries.
        root: the folder the results paths are relative to (the repository root).
        img_dir: where the images go (relative to ``root`` unless absolute).
        rerun: run every reference command even when its figure exists.
        dry_run: only report what would be done.
        run: run missing reference commands (False: skip entries without a results folder).
        echo: a print-like function for progress lines.

    Returns:
        ``{key: status}`` with status ``"copied"``, ``"ran+copied"``, ``"would copy"``,
        ``"would run"``, ``"not run"``, ``"no command"`` or ``"failed: ..."``.
    """
    root = Path(root)
    img = Path(img_dir) if Path(img_dir).is_absolute() else root / img_dir
    status: dict[str, str] = {}
    for it in items:
        folder = root / it.folder
        src = folder / it.figure
        need_run = rerun or not src.exists()
        if need_run and not run:
            status[it.key] = "not run"
            echo(f"[{it.key}] skipped: {src} is missing (run `trainmap {' '.join(it.command)}`)")
            continue
        if need_run and not _has_command(it.command):
            status[it.key] = "no command"
            echo(f"[{it.key}] skipped: `trainmap {' '.join(it.command)}` is not available")
            continue
        if dry_run:
            status[it.key] = "would run" if need_run else "would copy"
            echo(f"[{it.key}] {status[it.key]}: {src} -> {img / it.image}")
            continue
        if need_run:
            cmd = [sys.executable, "-m", "trainmap.cli", *it.command, "--out", str(folder)]
            if it.command[0] == "jacobian":
                cmd.append("--overwrite")
            echo(f"[{it.key}] running: trainmap {' '.join(it.command)} --out {it.folder}")
            res = subprocess.run(cmd, cwd=root)
            if res.returncode != 0 or not src.exists():
                status[it.key] = f"failed: exit {res.returncode}, {it.figure} {'missing' if not src.exists() else 'present'}"
                echo(f"[{it.key}] {status[it.key]}")
                continue
        img.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, img / it.image)
        status[it.key] = "ran+copied" if need_run else "copied"
        echo(f"[{it.key}] {status[it.key]}: {img / it.image}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``python -m trainmap.report.gallery``)."""
    ap = argparse.ArgumentParser(prog="python -m trainmap.report.gallery",
                                 description="Regenerate the gallery images in docs/img/ from the "
                                             "lenses' reference results folders.")
    ap.add_argument("--root", default=".", help="repository root (results/ and docs/img/ live here)")
    ap.add_argument("--img-dir", default="docs/img", help="where the images go")
    ap.add_argument("--only", action="append", default=[], choices=[it.key for it in ITEMS],
                    help="regenerate only this entry (repeatable)")
    ap.add_argument("--rerun", action="store_true", help="rerun every reference command")
    ap.add_argument("--no-run", action="store_true", help="only copy figures whose results folder exists")
    ap.add_argument("--list", action="store_true", help="show what would be done and exit")
    args = ap.parse_args(argv)
    items = [it for it in ITEMS if not args.only or it.key in args.only]
    status = regenerate(items, root=args.root, img_dir=args.img_dir, rerun=args.rerun, dry_run=args.list,
                        run=not args.no_run)
    return 1 if any(s.startswith("failed") for s in status.values()) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
