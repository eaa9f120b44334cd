"""Observables: what of the parameters DMD sees.

* raw parameters of chosen layers (:func:`select_layers`, reading the layer table that the
  recorders store in ``Trajectory.meta["layers"]``);
* PCA to r dimensions fitted on *all* runs being compared (:class:`PCAObservable`), so every
  run is seen through the same coordinates;
* random Gaussian projections (:class:`RandomProjection`);
* the time-delay (Hankel) embedding lives in :func:`trainmap.koopman.dmd.delay_embed` and is
  applied by :class:`~trainmap.koopman.dmd.DMD` itself (``delays=n``).

All transforms take and return stacks ``(runs, steps, F)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from trainmap.koopman.dmd import as_stack
from trainmap.record.store import Trajectory


def layer_table(traj: Trajectory) -> dict[str, tuple[int, int]]:
    """``{layer name: (start, stop)}`` feature slices recorded in ``traj.meta["layers"]``."""
    table = traj.meta.get("layers") or {}
    return {str(k): (int(v["start"]), int(v["stop"])) for k, v in table.items()}


def select_layers(traj: Trajectory, layers: Sequence[str] | str | None) -> Trajectory:
    """Keep only the features of the named layers (in the order given).

    A name selects every recorded layer equal to it or starting with ``name + "."``, so
    ``"fc2"`` picks ``fc2.weight`` and ``fc2.bias``.

    Args:
        traj: a trajectory whose ``meta["layers"]`` maps layer names to ``{"start", "stop"}``.
        layers: names (or one comma-separated string); None or empty returns ``traj`` unchanged.

    Returns:
        A new in-memory :class:`Trajectory` of shape (runs, steps, F_selected).

    Raises:
        ValueError: if the trajectory has no layer table or a name matches nothing (the message
            lists the layers that exist).
    """
    if not layers:
        return traj
    names = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else list(layers)
    table = layer_table(traj)
    if not table:
        raise ValueError("this trajectory records no layer names (meta['layers']); record it with "
                         "a trainmap recorder or select features by index yourself")
    chosen: list[str] = []
    for name in names:
        hits = [k for k in table if k == name or k.startswith(name + ".")]
        if not hits:
            raise ValueError(f"layer {name!r} is not in the trajectory; recorded layers: {sorted(table)}")
        chosen += [h for h in hits if h not in chosen]
    feats = np.asarray(traj.features[:, :, :]) if not isinstance(traj.features, np.ndarray) else traj.features
    parts, new_table, start = [], {}, 0
    for name in chosen:
        a, b = table[name]
        parts.append(feats[:, :, a:b])
        new_table[name] = {"start": start, "stop": start + b - a,
                           "shape": traj.meta["layers"][name].get("shape", [b - a])}
        start += b - a
    meta = {**traj.meta, "layers": new_table, "selected_layers": chosen}
    return Trajectory(np.concatenate(parts, axis=2), traj.steps, list(traj.labels), meta)


def _rows(stacks: Sequence[np.ndarray]) -> int:
    return int(sum(s.shape[0] * s.shape[1] for s in stacks))


def _as_stacks(data: Any, dtype: Any = np.float64) -> list[np.ndarray]:
    """A list of stacks from one stack or a list of stacks (a list of 2-D runs is one stack)."""
    if isinstance(data, (list, tuple)) and data and all(
            hasattr(d, "features") or np.ndim(d) == 3 for d in data):
        return [as_stack(d, name=f"stack {i}", dtype=dtype) for i, d in enumerate(data)]
    return [as_stack(data, dtype=dtype)]


class PCAObservable:
    """Principal components fitted on every snapshot of every run of every stack given.

    Args:
        n_components: r, the output dimension.
        center: subtract the mean snapshot before projecting (the same mean for every run).
        dtype: dtype the data is read in (float32 halves the memory of very wide layers; the
            eigen-decomposition itself runs in float64).

    Attributes (after ``fit``):
        components_: (r, F) orthonormal principal directions.
        mean_: (F,) mean snapshot (zeros when ``center=False``).
        explained_variance_ratio_: (r,) fraction of the total variance per component.
    """

    def __init__(self, n_components: int, center: bool = True, dtype: Any = np.float64) -> None:
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_components = int(n_components)
        self.center = center
        self.dtype = dtype

    def fit(self, stacks: Any) -> "PCAObservable":
        """Fit on one stack ``(runs, steps, F)`` or a list of stacks (all runs being compared)."""
        stacks = _as_stacks(stacks, self.dtype)
        feats = {s.shape[2] for s in stacks}
        if len(feats) > 1:
            raise ValueError(f"the stacks have different numbers of features {sorted(feats)}; "
                             "select the same layers in every trajectory")
        f = feats.pop()
        n = _rows(stacks)
        if self.n_components > min(n, f):
            raise ValueError(f"n_components={self.n_components} exceeds min(snapshots={n}, features={f})")
        mean = (sum(s.sum(axis=(0, 1), dtype=np.float64) for s in stacks) / n) if self.center else np.zeros(f)
        rows = np.concatenate([s.reshape(-1, f) for s in stacks])
        rows -= mean.astype(rows.dtype)
        if n <= f:  # Gram route: eigenvectors of rows rowsᵀ (n, n)
            gram = (rows @ rows.T).astype(np.float64)
            evals, evecs = np.linalg.eigh(gram)
            order = np.argsort(evals)[::-1][: self.n_components]
            lam = np.clip(evals[order], 0, None)
            comps = (rows.T @ evecs[:, order].astype(rows.dtype)).T.astype(np.float64)
            comps /= np.linalg.norm(comps, axis=1, keepdims=True)
            total = float(np.trace(gram))
        else:
            cov = (rows.T @ rows).astype(np.float64)
            evals, evecs = np.linalg.eigh(cov)
            order = np.argsort(evals)[::-1][: self.n_components]
            lam = np.clip(evals[order], 0, None)
            comps = evecs[:, order].T
            total = float(np.trace(cov))
        # fix the sign of each component so results do not flip between platforms
        signs = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
        self.components_ = comps * signs[:, None]
        self.mean_ = mean
        self.explained_variance_ratio_ = lam / total if total > 0 else np.zeros_like(lam)
        return self

    def transform(self, stack: Any) -> np.ndarray:
        """Project a stack: (runs, steps, F) -> (runs, steps, r)."""
        if not hasattr(self, "components_"):
            raise RuntimeError("PCAObservable is not fitted; call fit(stacks) first")
        stack = as_stack(stack, dtype=self.dtype)
        if stack.shape[2] != self.components_.shape[1]:
            raise ValueError(f"stack has {stack.shape[2]} features, the PCA was fitted on "
                             f"{self.components_.shape[1]}")
        return ((stack - self.mean_.astype(stack.dtype)) @ self.components_.T.astype(stack.dtype)).astype(np.float64)

    def fit_transform(self, stacks: Any) -> list[np.ndarray]:
        """Fit on all stacks and return each projected."""
        stacks = _as_stacks(stacks, self.dtype)
        self.fit(stacks)
        return [self.transform(s) for s in stacks]


class RandomProjection:
    """Gaussian random projection ``x ↦ Gᵀ x / sqrt(r)`` with ``G: (F, r)`` drawn from ``seed``.

    Random projections keep the spectrum of a linear system when r is at least its dimension
    (the projection is then generically injective on the trajectory's span).

    Attributes (after ``fit``):
        matrix_: (F, r) projection matrix.
    """

    def __init__(self, n_components: int, seed: int = 0) -> None:
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_components = int(n_components)
        self.seed = int(seed)

    def fit(self, stacks: Any) -> "RandomProjection":
        """Draw the (F, r) matrix for the feature count F of ``stacks``."""
        f = _as_stacks(stacks)[0].shape[2]
        rng = np.random.default_rng(self.seed)
        self.matrix_ = rng.standard_normal((f, self.n_components)) / np.sqrt(self.n_components)
        return self

    def transform(self, stack: Any) -> np.ndarray:
        """(runs, steps, F) -> (runs, steps, r)."""
        if not hasattr(self, "matrix_"):
            raise RuntimeError("RandomProjection is not fitted; call fit(stacks) first")
        stack = as_stack(stack)
        if stack.shape[2] != self.matrix_.shape[0]:
            raise ValueError(f"stack has {stack.shape[2]} features, the projection expects {self.matrix_.shape[0]}")
        return stack @ self.matrix_

    def fit_transform(self, stacks: Any) -> list[np.ndarray]:
        """Fit on all stacks and return each projected."""
        stacks = _as_stacks(stacks)
        self.fit(stacks)
        return [self.transform(s) for s in stacks]
