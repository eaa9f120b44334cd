"""The one results-folder writer, used by every command of every lens.

A results folder holds ``config.json`` (everything needed to rerun), ``summary.json`` (headline
numbers; written last, it marks the folder finished), arrays (``.npy``), figures (``.png``) with
``captions.json``, optional sub-folders, and ``manifest.json``: the kind of results, and every
file and sub-folder trainmap wrote there, with SHA-256 checksums once the folder is finished.

Rules, the same for every command:

* :func:`open_results` validates before anything is written: a refused command writes nothing.
* ``mode="new"`` refuses a folder that holds anything; ``"resume"`` continues a folder of the
  same kind whose ``config.json`` equals this run's (the keys that differ are named);
  ``"overwrite"`` removes only what the manifest lists, and refuses a folder that holds
  anything else (a folder without a manifest is never emptied).
* Every write is atomic (temporary file, fsync, rename); :meth:`ResultsFolder.load_array`
  verifies the checksum of what it reads back.

Lenses write through a :class:`ResultsFolder`; the report (a leaf above the lenses) reads
finished folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from trainmap._io import atomic_save_npy, atomic_savefig, atomic_write_json, load_npy, read_json

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
CONFIG = "config.json"
MODES = ("new", "resume", "overwrite")
FORMAT = 1


class FolderError(FileExistsError):
    """A results folder cannot be used as asked (the message says what to do instead)."""


class IntegrityError(ValueError):
    """A file in a results folder differs from what trainmap wrote (corrupt or edited)."""


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def _as_json(obj: Any) -> Any:
    from trainmap._io import to_jsonable

    return json.loads(json.dumps(to_jsonable(obj)))


def _is_temp(name: str) -> bool:
    """Leftovers of an interrupted atomic write (``._name.XXXX.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


@dataclass
class ResultsFolder:
    """An open results folder (from :func:`open_results`).

    Attributes:
        path: the folder.
        kind: what it holds, e.g. ``"jacobian"``, ``"koopman-spectrum"``.
        resumed: True when it was opened with ``mode="resume"`` on an existing run.
    """

    path: Path
    kind: str
    resumed: bool = False
    _manifest: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ names
    def _save_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self._manifest)

    def file(self, name: str) -> Path:
        """The path of ``name`` inside the folder, recorded in the manifest before it is written
        (so that an interrupted run's files are still known to be trainmap's)."""
        files = self._manifest["files"]
        if name not in files:
            files[name] = None
            self._save_manifest()
        return self.path / name

    def dir(self, name: str, create: bool = True) -> Path:
        """A sub-folder that trainmap owns whole (e.g. ``checkpoint``), recorded (and created)."""
        dirs = self._manifest["dirs"]
        if name not in dirs:
            dirs.append(name)
            self._save_manifest()
        p = self.path / name
        if create:
            p.mkdir(parents=True, exist_ok=True)
        return p

    def __truediv__(self, name: str) -> Path:
        """``folder / "name"``: the same as :meth:`file` (so path-based writers record their files)."""
        return self.file(str(name))

    def has(self, name: str) -> bool:
        """Whether ``name`` was written into the folder (and is still there)."""
        return name in self._manifest["files"] and (self.path / name).exists()

    # ------------------------------------------------------------------ writes
    def save_array(self, name: str, array: Any) -> Path:
        """Save ``array`` as ``name`` (``.npy`` appended when missing), atomically."""
        name = name if name.endswith(".npy") else f"{name}.npy"
        return atomic_save_npy(self.file(name), np.asarray(array))

    def save_json(self, name: str, obj: Any) -> Path:
        """Save ``obj`` as pretty JSON, atomically."""
        return atomic_write_json(self.file(name), obj)

    def save_figure(self, name: str, fig: Any) -> Path:
        """Save a matplotlib Figure as PNG, atomically, and close it."""
        return atomic_savefig(fig, self.file(name))

    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Write ``config.json`` (done by :func:`open_results` when it is given a config), with the
        run's :func:`environment` under ``"environment"`` and, from the CLI, the command line under
        ``"command"``."""
        extra = ({COMMAND: {"args": list(RUN_COMMAND["args"]), "cwd": os.getcwd()}}
                 if RUN_COMMAND["args"] is not None else {})
        return self.save_json(CONFIG, {**dict(config), ENVIRONMENT: environment(), **extra})

    # ------------------------------------------------------------------ reads
    def load_array(self, name: str, mmap: bool = False) -> np.ndarray:
        """Read an array back, checking it against the manifest's checksum when it has one.

        Raises:
            IntegrityError: the file's bytes differ from what trainmap wrote.
        """
        name = name if name.endswith(".npy") else f"{name}.npy"
        path = self.path / name
        expected = self._manifest["files"].get(name)
        if expected is not None and sha256_file(path) != expected:
            raise IntegrityError(f"{path} differs from the file trainmap wrote (checksum mismatch): "
                                 "it was edited or is corrupt; rerun with --overwrite to recompute it")
        return load_npy(path, mmap=mmap)

    @property
    def summary(self) -> dict | None:
        """The finished folder's summary, or None while it is unfinished."""
        p = self.path / SUMMARY
        return read_json(p) if self._manifest.get("finished") and p.exists() else None

    # ------------------------------------------------------------------ finish
    def finish(self, summary: Mapping[str, Any], *, arrays: Mapping[str, Any] | None = None,
               figures: Mapping[str, Any] | None = None,
               captions: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Write the arrays, figures (``{"name.png": Figure}``), ``captions.json`` and, last,
        ``summary.json``; then record every file's checksum and mark the folder finished.

        Returns:
            ``summary`` as written (with a ``warnings`` list).
        """
        for name, arr in (arrays or {}).items():
            self.save_array(name, arr)
        for name, fig in (figures or {}).items():
            self.save_figure(name, fig)
        if captions is not None or not self.has("captions.json"):
            old = read_json(self.path / "captions.json") if self.has("captions.json") else {}
            self.save_json("captions.json", {**old, **dict(captions or {})})
        out = dict(summary)
        out.setdefault("warnings", [])
        self.save_json(SUMMARY, out)
        self.seal()
        return out

    def seal(self) -> None:
        """Record the checksum of every file trainmap wrote and mark the folder finished."""
        files = self._manifest["files"]
        for name in list(files):
            p = self.path / name
            files[name] = sha256_file(p) if p.is_file() else None
        self._manifest["finished"] = True
        self._save_manifest()

    def add_file(self, name: str) -> None:
        """Record a file written by a reader of finished folders (the report) with its checksum."""
        self._manifest["files"][name] = sha256_file(self.path / name)
        self._save_manifest()


# ----------------------------------------------------------------------------- open
def mode_of(resume: bool = False, overwrite: bool = False) -> str:
    """The ``mode`` of :func:`open_results` for a command's ``--resume`` / ``--overwrite`` flags."""
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: pass one of them")
    return "resume" if resume else "overwrite" if overwrite else "new"


def _read_manifest(out: Path) -> dict | None:
    p = out / MANIFEST
    if not p.exists():
        return None
    man = read_json(p)
    if not isinstance(man, dict) or "files" not in man:
        raise FolderError(f"{p} is not a trainmap manifest; choose another --out")
    man.setdefault("dirs", [])
    return man


def results_folders(root: str | Path) -> list[Path]:
    """``root`` and the folders below it that hold a results folder's ``manifest.json``, deepest first.

    The exact engine's chunk checkpoint kept a file of the same name in earlier versions (its keys
    ``fingerprint`` and ``checksums``; it is ``chunks.json`` now); those are skipped, so an
    interrupted run is neither reported nor read as a broken results folder. Any other manifest is
    kept, so that a damaged one is still found.
    """
    out = []
    for p in sorted(Path(root).rglob(MANIFEST), key=lambda p: (-len(p.parts), p)):
        try:
            man = read_json(p)
        except ValueError:
            man = None
        if not (isinstance(man, dict) and "files" not in man and {"fingerprint", "checksums"} <= set(man)):
            out.append(p.parent)
    return out


def _foreign(out: Path, man: dict | None) -> list[str]:
    """Entries of ``out`` that trainmap did not write there."""
    known = {MANIFEST, *(man or {}).get("files", {}), *(man or {}).get("dirs", [])}
    return sorted(p.name for p in out.iterdir() if p.name not in known and not _is_temp(p.name))


#: the config.json key that records the software and machine of a run (not part of its identity:
#: a resume after a package upgrade is allowed; the recipe's fingerprint still catches a changed program)
ENVIRONMENT = "environment"
#: the config.json key that records the trainmap command line that wrote a folder (``trainmap rerun``)
COMMAND = "command"
#: the running command's arguments, set by the CLI (``trainmap.cli.main``); None from Python
RUN_COMMAND: dict[str, list[str] | None] = {"args": None}
_PACKAGES = ("trainmap", "jax", "jaxlib", "numpy", "scipy", "optax")
_IF_USED = ("torch", "flax", "equinox", "mnist1d")


def environment() -> dict[str, Any]:
    """Package versions (trainmap, jax, jaxlib, numpy, scipy, optax; torch, flax, equinox and mnist1d
    when imported), Python and the platform, without importing anything."""
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    names = [*_PACKAGES, *(n for n in _IF_USED if n in sys.modules)]
    return {"packages": {n: ver(n) for n in names}, "python": platform.python_version(),
            "platform": platform.platform(), "machine": platform.machine()}


def _config_diff(old: Mapping[str, Any], new: Mapping[str, Any], skip: tuple[str, ...]) -> list[str]:
    keys = sorted((set(old) | set(new)) - set(skip) - {ENVIRONMENT, COMMAND})
    return [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in keys
            if old.get(k, "(absent)") != new.get(k, "(absent)")]


def check_folder(out: str | Path, mode: str = "new", *, kind: str,
                 config: Mapping[str, Any] | None = None, may_change: tuple[str, ...] = ()) -> dict | None:
    """The checks of :func:`open_results`, writing nothing: call it before long work, so that a
    folder that would be refused is refused before the work starts.

    Returns:
        The folder's manifest (None when there is none yet).

    Raises:
        FolderError: as :func:`open_results`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FolderError(f"{out} is a file, not a folder; choose another --out")
    cfg = _as_json(dict(config)) if config is not None else None
    man = _read_manifest(out) if out.exists() else None
    entries = _foreign(out, man) if out.exists() else []
    if man is None and entries:
        raise FolderError(f"{out} is not empty and was not written by trainmap (it holds "
                          f"{', '.join(entries[:5])}{' ...' if len(entries) > 5 else ''}); "
                          "refusing to write there: choose another --out")
    if man is not None and man.get("kind") != kind:
        raise FolderError(f"{out} holds {man.get('kind')!r} results, not {kind!r}; choose another --out")
    if man is not None and entries:
        raise FolderError(f"{out} holds files trainmap did not write ({', '.join(entries[:5])}"
                          f"{' ...' if len(entries) > 5 else ''}); move them away or choose another --out")
    if man is not None and mode == "new":
        state = "finished" if man.get("finished") else "unfinished"
        raise FolderError(f"{out} already holds {state} {kind} results; pass --resume to "
                          f"{'reuse' if state == 'finished' else 'continue'} them, --overwrite to "
                          "redo them, or --out to write elsewhere")
    if man is not None and mode == "resume":
        if cfg is not None and (out / CONFIG).exists():
            diff = _config_diff(read_json(out / CONFIG), cfg, may_change)
            if diff:
                raise FolderError(f"{out}/config.json differs from this run's settings ({'; '.join(diff)}); "
                                  "resume with the same options, or use --overwrite")
    return man


def open_results(out: str | Path, mode: str = "new", *, kind: str,
                 config: Mapping[str, Any] | None = None,
                 may_change: tuple[str, ...] = ()) -> ResultsFolder:
    """Open a results folder for writing, after checking that it may be used as asked.

    Args:
        out: the folder (created with its parents).
        mode: ``"new"`` (the folder must be absent or empty), ``"resume"`` (continue a run of
            the same kind and config; a missing folder starts a new one) or ``"overwrite"``
            (remove what trainmap wrote there before, then start anew).
        kind: what the folder holds (a resume or overwrite of another kind is refused).
        config: this run's JSON-able settings: compared with the stored ``config.json`` on
            resume, written as ``config.json`` otherwise.
        may_change: config keys that a resume may change (e.g. a step count that extends a run).

    Returns:
        The open :class:`ResultsFolder`.

    Raises:
        FolderError: the folder holds something else, another kind of results, a finished or
            unfinished run that ``mode`` does not allow, or a run with another config on resume.
            Nothing has been written when it is raised.
    """
    man = check_folder(out, mode, kind=kind, config=config, may_change=may_change)
    out = Path(out)
    resumed = man is not None and mode == "resume"
    if resumed:
        for p in out.iterdir():  # leftovers of a killed write (e.g. a P²-sized J) are never reused
            if _is_temp(p.name):
                p.unlink(missing_ok=True)
    cfg = _as_json(dict(config)) if config is not None else None
    if man is not None and mode == "overwrite":
        for name in [*man["files"], *man["dirs"]]:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        for p in out.iterdir():
            if _is_temp(p.name):
                p.unlink(missing_ok=True)
        (out / MANIFEST).unlink()
        man = None
    out.mkdir(parents=True, exist_ok=True)
    if man is None:
        man = {"format": FORMAT, "kind": kind, "finished": False, "files": {}, "dirs": []}
    else:
        man["finished"] = False if not man.get("finished") else man["finished"]
    folder = ResultsFolder(out, kind, resumed, man)
    folder._save_manifest()
    if cfg is not None:
        folder.write_config(cfg)
    return folder


def reopen(out: str | Path) -> ResultsFolder:
    """An existing trainmap results folder, as it is (for readers that add files, e.g. the report)."""
    out = Path(out)
    man = _read_manifest(out) if out.is_dir() else None
    if man is None:
        raise FolderError(f"{out} is not a trainmap results folder (no {MANIFEST})")
    return ResultsFolder(out, str(man.get("kind")), True, man)


def verify(out: str | Path) -> list[str]:
    """Check every file of a finished folder against its manifest checksum.

    Returns:
        One line per problem (missing or changed files); empty when the folder is intact.
    """
    folder = reopen(out)
    problems = []
    for name, sha in folder._manifest["files"].items():
        p = folder.path / name
        if sha is None:
            continue
        if not p.exists():
            problems.append(f"{p}: missing")
        elif sha256_file(p) != sha:
            problems.append(f"{p}: checksum mismatch (edited or corrupt)")
    return problems
