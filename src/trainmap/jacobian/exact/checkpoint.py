"""Finished chunks of J on disk, checksummed, so that an interrupted computation resumes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainmap._io import atomic_save_npy, atomic_write_json, load_npy, read_json
from trainmap.protocol import TrainingMap

MANIFEST = "chunks.json"
#: the name earlier versions gave it, the same as a results folder's manifest (read, then renamed)
_OLD_MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint folder is corrupt or belongs to a different computation."""


def fingerprint(recipe: TrainingMap, theta0: np.ndarray, dtype: np.dtype, chunk: int,
                engine: str = "") -> str:
    """A hash of everything that determines the chunks: the training map's own
    :meth:`~trainmap.protocol.TrainingMap.fingerprint` (data, data order, the step's program),
    θ₀, dtype, K and (``engine``) the program that computes them (mode, primal, device count)."""
    h = hashlib.sha256()
    h.update(recipe.fingerprint().encode())
    h.update(np.ascontiguousarray(theta0).tobytes())
    h.update(f"{dtype.str}|{chunk}|{recipe.num_params}".encode())
    if engine:
        h.update(engine.encode())
    return h.hexdigest()


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@dataclass
class ChunkStore:
    """Finished chunks of J's columns on disk: ``chunk_00000.npy`` ... plus ``chunks.json``.

    ``chunks.json`` records the computation's fingerprint and every finished chunk's SHA-256; a
    checkpoint written by an earlier version under ``manifest.json`` is recognised by its keys
    (not a results folder's manifest) and renamed when the store is opened.

    Chunk i holds the (K_i, P) array whose rows are columns [i·K, i·K + K_i) of J (forward mode)
    or rows [i·K, i·K + K_i) of J (reverse mode; the fingerprint records the mode), or, when the
    engine skips unit columns, J times the chunk's directions in the driver's order
    (``_Directions``; the fingerprint records that too).
    """

    folder: Path
    num_params: int
    chunk: int
    dtype: np.dtype
    fp: str

    @property
    def n_chunks(self) -> int:
        return -(-self.num_params // self.chunk)

    def path(self, i: int) -> Path:
        return self.folder / f"chunk_{i:05d}.npy"

    def _manifest(self) -> dict:
        return read_json(self.folder / MANIFEST)

    def _migrate(self) -> None:
        """Rename an earlier version's ``manifest.json`` chunk record to ``chunks.json``."""
        old = self.folder / _OLD_MANIFEST
        if (self.folder / MANIFEST).exists() or not old.exists():
            return
        man = read_json(old)
        if {"fingerprint", "chunk", "checksums"} <= set(man):  # ours, not a results manifest
            atomic_write_json(self.folder / MANIFEST, man)
            old.unlink()

    def open(self, resume: bool) -> None:
        """Create the folder, or check that an existing one belongs to this computation."""
        self._migrate()
        man_path = self.folder / MANIFEST
        if man_path.exists():
            man = self._manifest()
            if not resume:
                raise CheckpointError(
                    f"{self.folder} already holds {len(man.get('checksums', {}))} finished chunks "
                    "of a Jacobian; pass resume=True (CLI: --resume) to continue it, or remove the "
                    "folder (CLI: --overwrite) to start over"
                )
            if man.get("fingerprint") != self.fp:
                raise CheckpointError(
                    f"the checkpoint in {self.folder} belongs to a different run (other recipe, θ₀, "
                    "dtype or chunk size); use another output folder or --overwrite"
                )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(man_path, dict(fingerprint=self.fp, num_params=self.num_params,
                                         chunk=self.chunk, dtype=self.dtype.name, checksums={}))

    def done(self) -> dict[int, str]:
        return {int(k): v for k, v in self._manifest().get("checksums", {}).items()}

    def save(self, i: int, block: np.ndarray) -> None:
        atomic_save_npy(self.path(i), block)
        man = self._manifest()
        man["checksums"][str(i)] = array_sha256(block)
        atomic_write_json(self.folder / MANIFEST, man)

    def load(self, i: int, checksum: str, rows: int | None = None) -> np.ndarray | None:
        """Chunk i as saved, or None when its file was deleted (it is then recomputed).

        ``rows`` is the chunk's expected row count (default: as many as columns ``i·K ..`` of J).

        Raises:
            CheckpointError: the file is corrupt (the message says to delete it and resume).
        """
        p = self.path(i)
        rows = min(self.chunk, self.num_params - i * self.chunk) if rows is None else rows
        hint = f"delete {p.name} (the other chunks are kept) and resume to recompute it"
        if not p.exists():
            self.drop(i)
            return None
        try:
            block = load_npy(p)
        except ValueError as exc:
            raise CheckpointError(f"{exc}; {hint}") from exc
        if block.shape != (rows, self.num_params) or block.dtype != self.dtype:
            raise CheckpointError(
                f"chunk file {p} has shape {block.shape} and dtype {block.dtype}, expected "
                f"{(rows, self.num_params)} {self.dtype}; it is corrupt: {hint}"
            )
        if array_sha256(block) != checksum:
            raise CheckpointError(f"chunk file {p} fails its checksum; it is corrupt: {hint}")
        return block

    def drop(self, i: int) -> None:
        """Forget chunk i (its file was deleted): the next run recomputes it."""
        man = self._manifest()
        man["checksums"].pop(str(i), None)
        atomic_write_json(self.folder / MANIFEST, man)
