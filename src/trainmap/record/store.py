"""On-disk trajectory store: chunked zarr arrays plus a JSON sidecar of metadata.

A store is a folder ``NAME.zarr`` holding one or more arrays whose first axis is *runs* and
second axis is *recorded steps*; the metadata (kind, step indices, run labels, free-form info)
is the JSON sidecar ``NAME.zarr/zarr.json``, under the group attribute ``"trainmap"``. Chunks are one run by a block of steps, so a trajectory
larger than memory streams from disk one run (or one block of steps) at a time.

Two kinds of trajectories share this store:

* :class:`Trajectory` — ``features: (runs, steps, F)`` parameter trajectories (or features of
  them), read by the Koopman lens.
* :class:`PredictionTrajectory` — ``probs: (runs, steps, N, C)`` predicted class probabilities
  on a fixed probe set, read by the hyper-ribbon lens.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainmap._io import to_jsonable

ATTR = "trainmap"
FORMAT_VERSION = 1

#: dimension names of every array a store may hold (so that ``xarray.open_zarr`` opens it)
DIMENSIONS = {
    "features": ("run", "step", "feature"),
    "probs": ("run", "step", "sample", "class"),
    "means": ("run", "step", "sample", "output"),
    "targets": ("sample",),
}


def _validate_steps(steps: np.ndarray, n_steps: int) -> np.ndarray:
    steps = np.asarray(steps, dtype=np.int64)
    if steps.shape != (n_steps,):
        raise ValueError(f"steps must have shape ({n_steps},) to match the data, got {steps.shape}")
    if n_steps > 1 and np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    return steps


@dataclass
class Trajectory:
    """Recorded training trajectories of one or many runs.

    Attributes:
        features: (runs, steps, F) array (NumPy, or a zarr array when opened lazily).
        steps: (steps,) training-step index of each recorded point.
        labels: (runs,) a label per run (e.g. the condition or seed), strings.
        meta: free-form JSON-able metadata (feature names, recipe config, ...).
    """

    features: Any
    steps: np.ndarray
    labels: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(self.features.shape)
        if len(shape) != 3:
            raise ValueError(
                f"a Trajectory needs features of shape (runs, steps, features), got {shape}; "
                "for a single run use x[None]"
            )
        self.steps = _validate_steps(self.steps, shape[1])
        if not self.labels:
            self.labels = [str(i) for i in range(shape[0])]
        if len(self.labels) != shape[0]:
            raise ValueError(f"{len(self.labels)} labels for {shape[0]} runs")
        self.labels = [str(s) for s in self.labels]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.features.shape)  # type: ignore[return-value]

    def run(self, i: int) -> np.ndarray:
        """(steps, F) array of run i, loaded into memory."""
        return np.asarray(self.features[i])

    def save(self, path: str | os.PathLike, chunk_steps: int = 256) -> Path:
        return save_store(path, "trajectory", {"features": self.features}, self.steps,
                          self.labels, self.meta, chunk_steps)

    @classmethod
    def load(cls, path: str | os.PathLike, lazy: bool = False) -> "Trajectory":
        arrays, steps, labels, meta = open_store(path, "trajectory", lazy)
        return cls(arrays["features"], steps, labels, meta)


@dataclass
class PredictionTrajectory:
    """Predicted class probabilities on a fixed probe set, for many runs.

    Attributes:
        probs: (runs, steps, N, C) probabilities (each row sums to one).
        steps: (steps,) training-step index of each recorded point.
        labels: (runs,) label per run.
        targets: (N,) integer true classes of the probe samples, or None.
        meta: free-form metadata (probe-set description, configs, ...).
    """

    probs: Any
    steps: np.ndarray
    labels: list[str] = field(default_factory=list)
    targets: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(self.probs.shape)
        if len(shape) != 4:
            raise ValueError(
                f"a PredictionTrajectory needs probs of shape (runs, steps, samples, classes), got {shape}"
            )
        self.steps = _validate_steps(self.steps, shape[1])
        if not self.labels:
            self.labels = [str(i) for i in range(shape[0])]
        if len(self.labels) != shape[0]:
            raise ValueError(f"{len(self.labels)} labels for {shape[0]} runs")
        self.labels = [str(s) for s in self.labels]
        if self.targets is not None:
            self.targets = np.asarray(self.targets)
            if self.targets.shape != (shape[2],):
                raise ValueError(f"targets must have shape ({shape[2]},), got {self.targets.shape}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.probs.shape)  # type: ignore[return-value]

    def save(self, path: str | os.PathLike, chunk_steps: int = 64) -> Path:
        arrays = {"probs": self.probs}
        if self.targets is not None:
            arrays["targets"] = self.targets
        return save_store(path, "predictions", arrays, self.steps, self.labels, self.meta, chunk_steps)

    @classmethod
    def load(cls, path: str | os.PathLike, lazy: bool = False) -> "PredictionTrajectory":
        arrays, steps, labels, meta = open_store(path, "predictions", lazy)
        targets = arrays.get("targets")
        return cls(arrays["probs"], steps, labels,
                   None if targets is None else np.asarray(targets), meta)


def save_store(
    path: str | os.PathLike,
    kind: str,
    arrays: dict[str, Any],
    steps: np.ndarray,
    labels: list[str],
    meta: dict,
    chunk_steps: int = 256,
) -> Path:
    """Write arrays and metadata as a zarr store, atomically (temp folder, then rename).

    Arrays with ndim >= 2 are chunked as (1 run, ``chunk_steps`` steps, full rest); they are copied
    run by run, so a lazily opened (zarr) source never has to fit in memory.
    """
    import zarr

    path = Path(path)
    if path.suffix != ".zarr":
        path = path.with_suffix(".zarr")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    from zarr.codecs import Crc32cCodec, ZstdCodec

    group = zarr.open_group(str(tmp), mode="w")
    # every chunk carries a CRC-32C of its bytes: a scribbled chunk fails to read instead of
    # decoding to other numbers
    codecs = dict(compressors=(ZstdCodec(level=0), Crc32cCodec()))
    for name, data in arrays.items():
        shape = tuple(data.shape)
        dtype = np.dtype(getattr(data, "dtype", np.float32))
        dims = DIMENSIONS.get(name)
        dims = dims if dims is not None and len(dims) == len(shape) else tuple(f"dim_{i}" for i in range(len(shape)))
        if len(shape) >= 2:
            chunks = (1, min(max(chunk_steps, 1), shape[1]), *shape[2:])
            arr = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=dims,
                                     fill_value=None, **codecs)
            for i in range(shape[0]):
                arr[i] = np.asarray(data[i])
        else:
            arr = group.create_array(name, shape=shape, dtype=dtype, dimension_names=dims, **codecs)
            arr[...] = np.asarray(data)
    sidecar = dict(format="trainmap-store", version=FORMAT_VERSION, kind=kind,
                   steps=np.asarray(steps).tolist(), labels=list(labels), meta=to_jsonable(meta))
    group.attrs[ATTR] = sidecar
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def _missing_chunks(path: Path, name: str, arr: Any) -> list[tuple[int, ...]]:
    """Chunk indices of ``arr`` whose file is absent (zarr v3 default chunk keys ``c/i/j/...``)."""
    import itertools

    grid = [-(-n // c) for n, c in zip(arr.shape, arr.chunks)]
    if not grid:
        return [] if (path / name / "c").exists() else [()]
    base = path / name / "c"
    return [idx for idx in itertools.product(*(range(g) for g in grid))
            if not base.joinpath(*(str(i) for i in idx)).exists()]


def _where(arr: Any, idx: tuple[int, ...]) -> str:
    """A chunk index in words: run and steps for (run, step, ...) arrays."""
    if len(idx) >= 2:
        s0 = idx[1] * arr.chunks[1]
        return f"run {idx[0]}, steps {s0}..{min(s0 + arr.chunks[1], arr.shape[1]) - 1} (recorded-step index)"
    return f"chunk {idx}"


def verify_store(path: str | os.PathLike) -> list[str]:
    """Read every chunk of a store (checksums, missing chunks); one line per problem."""
    import zarr

    try:
        kind = dict(zarr.open_group(str(path), mode="r").attrs).get(ATTR, {}).get("kind", "")
        open_store(path, kind)
    except (OSError, ValueError) as exc:
        return [str(exc)]
    return []


def open_store(
    path: str | os.PathLike, kind: str, lazy: bool = False
) -> tuple[dict[str, Any], np.ndarray, list[str], dict]:
    """Open a store written by :func:`save_store`.

    Returns:
        (arrays by name — zarr arrays if ``lazy`` else NumPy, steps, labels, meta).

    Raises:
        FileNotFoundError / ValueError with the fix when the folder is missing, is not a trainmap
        store, holds another kind of trajectory, or is corrupt.
    """
    import zarr

    path = Path(path)
    if not path.exists() and path.with_suffix(".zarr").exists():
        path = path.with_suffix(".zarr")
    if not path.exists():
        raise FileNotFoundError(f"no trajectory store at {path}")
    try:
        group = zarr.open_group(str(path), mode="r")
        info = dict(group.attrs).get(ATTR)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} could not be opened as a zarr store ({exc}); it is corrupt or "
                         "not a trainmap store. Record the trajectory again.") from exc
    if not isinstance(info, dict) or info.get("format") != "trainmap-store":
        raise ValueError(f"{path} is not a trainmap store (no '{ATTR}' metadata); save it with "
                         "Trajectory.save or PredictionTrajectory.save")
    if info.get("kind") != kind:
        raise ValueError(f"{path} holds a {info.get('kind')!r} store, expected {kind!r}")
    arrays = {}
    for name, arr in group.arrays():
        missing = _missing_chunks(path, name, arr)
        if missing:
            raise ValueError(f"{path}: array {name!r} is missing {len(missing)} chunk(s), first "
                             f"{_where(arr, missing[0])}; the store is incomplete or was edited. "
                             "Record the trajectory again (a missing chunk is never read as zeros)")
        try:
            arrays[name] = arr if lazy else np.asarray(arr[...])
        except Exception as exc:  # zarr/numcodecs raise many kinds (checksum, Zstd RuntimeError, ...)
            raise ValueError(f"{path}: array {name!r} could not be read ({type(exc).__name__}: {exc}); "
                             "a chunk is corrupt. Record the trajectory again") from exc
    return arrays, np.asarray(info["steps"], dtype=np.int64), list(info["labels"]), info.get("meta", {})
