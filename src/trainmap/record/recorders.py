"""Recorders: parameter trajectories from a :class:`~trainmap.recipe.Recipe`, a plain NumPy
loop, or stacked arrays, as :class:`~trainmap.record.store.Trajectory` objects.

Every recorder writes a *layer table* into ``Trajectory.meta["layers"]``:
``{name: {"start": i, "stop": j, "shape": [...]}}``, the slice of the feature axis holding that
layer, flattened in C order. The Koopman lens selects observables by these names
(:func:`trainmap.koopman.observables.select_layers`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from trainmap.record.store import PredictionTrajectory, Trajectory


# ----------------------------------------------------------------------------- layer tables
def _path_name(path: tuple) -> str:
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def pytree_layout(params: Any) -> dict[str, dict]:
    """Layer table of a JAX pytree in ``jax.flatten_util.ravel_pytree`` order.

    Args:
        params: a pytree of arrays, e.g. ``[{"w": (64, 10), "b": (10,)}]``.

    Returns:
        ``{"0.w": {"start": 0, "stop": 640, "shape": [64, 10]}, "0.b": {...}}``.
    """
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    table, start = {}, 0
    for path, leaf in leaves:
        size = int(np.size(leaf))
        table[_path_name(path)] = {"start": start, "stop": start + size, "shape": list(np.shape(leaf))}
        start += size
    return table


def _select(table: Mapping[str, dict], layers: Sequence[str] | None) -> list[str]:
    if not layers:
        return list(table)
    chosen: list[str] = []
    for name in layers:
        hits = [k for k in table if k == name or k.startswith(name + ".")]
        if not hits:
            raise ValueError(f"layer {name!r} not found; available layers: {list(table)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _sub_table(table: Mapping[str, dict], names: Sequence[str]) -> tuple[dict, np.ndarray]:
    """Layer table restricted to ``names`` and the feature indices to keep."""
    new, idx, start = {}, [], 0
    for n in names:
        a, b = table[n]["start"], table[n]["stop"]
        new[n] = {"start": start, "stop": start + b - a, "shape": list(table[n]["shape"])}
        idx.append(np.arange(a, b))
        start += b - a
    return new, np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------- from arrays
def from_arrays(
    arrays: Any,
    steps: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    meta: dict | None = None,
    layers: Mapping[str, Sequence[int]] | None = None,
) -> Trajectory:
    """A :class:`Trajectory` from NumPy arrays.

    Args:
        arrays: (runs, steps, F) array, a (steps, F) single run, or a list of equal-length
            (steps, F) runs.
        steps: (steps,) recorded step indices (default 0, 1, 2, ...).
        labels: (runs,) run labels (conditions or seeds).
        meta: extra metadata.
        layers: optional ``{name: shape}`` describing consecutive blocks of the feature axis.

    Returns:
        An in-memory Trajectory.
    """
    if isinstance(arrays, (list, tuple)):
        runs = [np.asarray(a) for a in arrays]
        lengths = {r.shape[0] for r in runs}
        if len(lengths) > 1:
            raise ValueError(f"runs have unequal lengths {[r.shape[0] for r in runs]}; trim them "
                             "to a common length before building a Trajectory")
        arr = np.stack(runs)
    else:
        arr = np.asarray(arrays)
        if arr.ndim == 2:
            arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"arrays must be (runs, steps, features), got shape {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"arrays are empty (shape {arr.shape}); a trajectory needs runs, steps and features")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"arrays must be real numbers, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr)
    if bad.any():
        run, step, feat = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"arrays contain {int(bad.sum())} NaN/inf values (first at run {run}, step {step}, "
                         f"feature {feat}); the run probably diverged: drop or truncate it")
    steps_arr = np.arange(arr.shape[1]) if steps is None else np.asarray(steps)
    meta = dict(meta or {})
    if layers:
        table, start = {}, 0
        for name, shape in layers.items():
            size = int(np.prod(shape))
            table[name] = {"start": start, "stop": start + size, "shape": list(shape)}
            start += size
        if start != arr.shape[2]:
            raise ValueError(f"layers describe {start} features but the arrays have {arr.shape[2]}")
        meta["layers"] = table
    return Trajectory(arr, steps_arr, list(labels) if labels is not None else [], meta)


def stack_trajectories(trajectories: Sequence[Any], labels: Sequence[str] | None = None) -> Any:
    """Concatenate weight trajectories, or prediction trajectories, along the runs axis.

    Args:
        trajectories: :class:`Trajectory` objects with the same steps and features, or
            :class:`PredictionTrajectory` objects with the same steps, probe set (size, classes,
            targets and, where recorded, the probe's fingerprint).
        labels: new run labels (default: keep each run's label).

    Returns:
        The same kind, with the runs of all inputs; metadata of the first.
    """
    if not trajectories:
        raise ValueError("no trajectories to stack")
    first = trajectories[0]
    if isinstance(first, PredictionTrajectory):
        return _stack_predictions(trajectories, labels)
    for i, t in enumerate(trajectories[1:], 1):
        if t.shape[1:] != first.shape[1:] or not np.array_equal(t.steps, first.steps):
            raise ValueError(f"trajectory {i} has shape {t.shape} / steps differing from trajectory 0 "
                             f"{first.shape}; record every run with the same schedule and layers")
    feats = np.concatenate([np.asarray(t.features[...]) for t in trajectories])
    labs = list(labels) if labels is not None else [lab for t in trajectories for lab in t.labels]
    return Trajectory(feats, first.steps, labs, dict(first.meta))


def default_every(num_steps: int, every: int | None) -> int:
    """k, the steps between recorded points: ``every``, or T // 50 (at least 1) when None."""
    k = max(1, num_steps // 50) if every is None else int(every)
    if k < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return k


def recorded_run(recipe: Any, theta0: Any, every: int, probe: Any = None, record_params: bool = True) -> Any:
    """Train any :class:`~trainmap.protocol.TrainingMap` once through its ``run`` (jitted for a JAX
    recipe), recording θ_t and the outputs on ``probe`` ((N, ...) inputs) every ``every`` steps.

    Returns:
        The run's :class:`~trainmap.recipe.TrainRecord` (steps 0, k, 2k, ... and T).
    """
    from trainmap.protocol import jit_if_traceable

    return jit_if_traceable(recipe, lambda th: recipe.run(th, every, probe=probe,
                                                          record_params=record_params))(theta0)


def _stack_predictions(trajs: Sequence[Any], labels: Sequence[str] | None) -> PredictionTrajectory:
    first = trajs[0]
    for i, t in enumerate(trajs[1:], 1):
        if not isinstance(t, PredictionTrajectory):
            raise ValueError(f"trajectory {i} is a {type(t).__name__}, trajectory 0 a PredictionTrajectory: "
                             "stack one kind at a time")
        if t.shape[1:] != first.shape[1:] or not np.array_equal(t.steps, first.steps):
            raise ValueError(f"prediction trajectory {i} has shape {t.shape} / steps differing from trajectory 0 "
                             f"{first.shape}; record every run at the same steps on the same probe set")
        probes = (t.meta.get("probe"), first.meta.get("probe"))
        if None not in probes and probes[0] != probes[1]:
            raise ValueError(f"prediction trajectory {i} was recorded on another probe set than trajectory 0")
        if (t.targets is None) != (first.targets is None) or (
                t.targets is not None and not np.array_equal(t.targets, first.targets)):
            raise ValueError(f"prediction trajectory {i} has other probe targets than trajectory 0")
    probs = np.concatenate([np.asarray(t.probs[...]) for t in trajs])
    labs = list(labels) if labels is not None else [lab for t in trajs for lab in t.labels]
    return PredictionTrajectory(probs, first.steps, labs, first.targets, dict(first.meta))


class ArrayRecorder:
    """Records named arrays every ``every`` steps from any training loop.

    Usage::

        rec = ArrayRecorder(every=10)
        for step in range(T + 1):
            if rec.due(step):
                rec.record(step, w1=W1, w2=W2)
            ...update W1, W2...
        traj = rec.to_trajectory()

    Args:
        every: record when ``step % every == 0``.
        label: label of this run.
        dtype: dtype of the stored features.
    """

    def __init__(self, every: int = 1, label: str = "0", dtype: Any = np.float32) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = int(every)
        self.label = str(label)
        self.dtype = dtype
        self._rows: list[np.ndarray] = []
        self._steps: list[int] = []
        self._table: dict[str, dict] | None = None

    def due(self, step: int) -> bool:
        """Whether ``step`` is a recording step."""
        return step % self.every == 0

    def record(self, step: int, **named: Any) -> None:
        """Record the named arrays at ``step`` (names and shapes must not change between calls)."""
        if self._steps and step <= self._steps[-1]:
            raise ValueError(f"steps must increase: got {step} after {self._steps[-1]}")
        table, start, parts = {}, 0, []
        for name, value in named.items():
            a = np.asarray(value, dtype=self.dtype)
            table[name] = {"start": start, "stop": start + a.size, "shape": list(a.shape)}
            start += a.size
            parts.append(a.ravel())
        if self._table is not None and table != self._table:
            raise ValueError(f"recorded arrays changed at step {step}: names/shapes must stay the same")
        self._table = table
        row = np.concatenate(parts) if parts else np.zeros(0, self.dtype)
        if not np.all(np.isfinite(row)):
            raise ValueError(f"non-finite parameters at step {step}: training diverged; lower the "
                             "learning rate or stop recording before the divergence")
        self._rows.append(row)
        self._steps.append(int(step))

    def __len__(self) -> int:
        return len(self._steps)

    def to_trajectory(self, meta: dict | None = None) -> Trajectory:
        """The recorded run as a (1, recorded steps, F) Trajectory."""
        if not self._rows:
            raise ValueError("nothing was recorded; call record(step, ...) at least once")
        meta = {**(meta or {}), "layers": self._table, "every": self.every}
        return Trajectory(np.stack(self._rows)[None], np.asarray(self._steps), [self.label], meta)


# ----------------------------------------------------------------------------- recipes
def record_recipe(
    recipe: Any,
    theta0: Any,
    every: int = 1,
    layers: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    dtype: Any = np.float32,
    progress: bool = False,
    *,
    record_every: int | None = None,
) -> Trajectory:
    """Train a :class:`~trainmap.recipe.Recipe` and record chosen layers every k steps.

    Args:
        recipe: a Recipe, or a sequence of Recipes (one per run, e.g. different data orders).
        theta0: (P,) initial parameters, or (runs, P) / a list of them (one per run).
        every: k; records steps 0, k, 2k, ... and the last step (the recorders' shared name;
            ``record_every`` is its deprecated old name).
        layers: layer names (as in :func:`pytree_layout`, prefixes allowed, e.g. ``"1"`` for the
            second MLP layer); None records all parameters.
        labels: (runs,) run labels.
        dtype: dtype of the stored features.
        progress: show a progress bar over runs.

    Returns:
        A Trajectory (runs, recorded steps, F) with the layer table in ``meta["layers"]``.
    """
    import jax

    from trainmap.record.validation import renamed, which_steps

    _, k = which_steps(None, renamed("every", "record_every", record_every, every))
    thetas = np.asarray(theta0)
    if thetas.ndim == 1:
        thetas = thetas[None]
    recipes = list(recipe) if isinstance(recipe, (list, tuple)) else [recipe] * len(thetas)
    if len(recipes) != len(thetas):
        raise ValueError(f"{len(recipes)} recipes for {len(thetas)} initial parameter vectors")
    table = pytree_layout(recipes[0].unravel(jax.numpy.asarray(thetas[0])))
    names = _select(table, layers)
    sub, idx = _sub_table(table, names)
    cache: dict[int, Callable] = {}
    rows = []
    iterator: Any = range(len(thetas))
    if progress:
        from rich.progress import track

        iterator = track(iterator, description="recording runs")
    for i in iterator:
        rec = recipes[i]
        fn = cache.get(id(rec))
        if fn is None:
            fn = jax.jit(lambda t, rec=rec: rec.run(t, record_every=k).params[:, idx])
            cache[id(rec)] = fn
        p = np.asarray(fn(jax.numpy.asarray(thetas[i])), dtype=dtype)
        if not np.all(np.isfinite(p)):
            raise ValueError(f"run {i} diverged (NaN/inf parameters); lower the learning rate")
        rows.append(p)
    from trainmap.recipe import record_steps

    steps = record_steps(recipes[0].num_steps, k)
    meta = {"layers": sub, "every": k, "recipe": recipes[0].config}
    return Trajectory(np.stack(rows), steps, list(labels) if labels is not None else [], meta)
