"""Prediction recorders: class probabilities on a fixed probe set at chosen steps, for the
hyper-ribbon lens, stored as :class:`~trainmap.record.store.PredictionTrajectory`.

Three sources share one store:

* arrays you already have (:func:`predictions_from_arrays`, probabilities or logits);
* a :class:`~trainmap.recipe.Recipe` (:func:`record_recipe_predictions`, any steps, e.g.
  log-spaced, one compiled scan per recipe);
* a PyTorch training loop (:class:`TorchPredictionRecorder`, a context manager that hooks the
  optimizer; torch is imported only when the recorder is created).

Regression models predict Gaussians instead: :class:`GaussianPredictionTrajectory` holds
their means and the likelihood variance.

Each recorder stores ``meta["probe"]`` — a fingerprint of the probe inputs — so that
trajectories recorded on different probe sets are refused when embedded together.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trainmap.record.store import PredictionTrajectory, _validate_steps, open_store, save_store
from trainmap.record.torch import _torch


# ----------------------------------------------------------------------------- helpers
def softmax(logits: Any, axis: int = -1, dtype: Any = np.float32) -> np.ndarray:
    """Numerically stable softmax in float64 (max subtracted), returned as ``dtype`` (float32)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(dtype)


def probe_fingerprint(x: Any) -> str:
    """A short hash of the probe inputs (shape, dtype and bytes), stored in ``meta["probe"]``."""
    arr = np.ascontiguousarray(np.asarray(x))
    h = hashlib.sha256(str((arr.shape, str(arr.dtype))).encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:16]


def log_spaced_steps(num_steps: int, num: int = 24, include_zero: bool = True) -> np.ndarray:
    """About ``num`` distinct integer steps log-spaced in [1, num_steps] (plus 0), increasing."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    n = num
    while True:
        s = np.unique(np.round(np.geomspace(1, num_steps, n)).astype(np.int64))
        if len(s) >= min(num, num_steps) or n > 50 * num:
            break
        n += 1
    return np.concatenate([[0], s]) if include_zero else s


def _check_trajectory_probs(probs: np.ndarray) -> None:
    from trainmap.record.validation import check_probs

    for r in range(probs.shape[0]):
        try:
            check_probs(probs[r], "probs")
        except ValueError as exc:
            raise ValueError(f"run {r}: {exc}") from None


# ----------------------------------------------------------------------------- from arrays
def predictions_from_arrays(
    probs: Any = None,
    *,
    logits: Any = None,
    steps: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    targets: Any = None,
    probe: Any = None,
    meta: dict | None = None,
) -> PredictionTrajectory:
    """A validated :class:`PredictionTrajectory` from arrays.

    Args:
        probs: (runs, steps, N, C) or (steps, N, C) probabilities; or give ``logits`` instead.
        logits: same shapes, turned into probabilities with a stable softmax.
        steps: (steps,) recorded step indices (default 0, 1, 2, ...).
        labels: (runs,) run labels.
        targets: (N,) true classes of the probe samples (needed for P* and progress).
        probe: the probe inputs, fingerprinted into ``meta["probe"]`` (optional).
        meta: extra metadata.

    Raises:
        ValueError: for NaN, rows not summing to one, or wrong shapes (naming the run).
    """
    if (probs is None) == (logits is None):
        raise ValueError("give exactly one of probs= or logits=")
    arr = softmax(logits) if probs is None else np.asarray(probs)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"probs must be (runs, steps, N, C) or (steps, N, C), got {arr.shape}")
    _check_trajectory_probs(arr)
    meta = dict(meta or {})
    if probe is not None:
        meta["probe"] = probe_fingerprint(probe)
    steps_arr = np.arange(arr.shape[1]) if steps is None else np.asarray(steps)
    return PredictionTrajectory(arr, steps_arr, list(labels) if labels is not None else [],
                                None if targets is None else np.asarray(targets), meta)


def check_compatible(trajectories: Sequence[PredictionTrajectory], names: Sequence[str] | None = None) -> None:
    """Raise unless all trajectories share the probe set: (N, C), targets and probe fingerprint."""
    names = list(names) if names is not None else [f"trajectory {i}" for i in range(len(trajectories))]
    first = trajectories[0]
    for t, name in zip(trajectories[1:], names[1:]):
        if t.shape[2:] != first.shape[2:]:
            raise ValueError(f"{name} has (samples, classes) = {t.shape[2:]} but {names[0]} has "
                             f"{first.shape[2:]}: record every trajectory on the same probe set")
        fa, fb = first.meta.get("probe"), t.meta.get("probe")
        if fa is not None and fb is not None and fa != fb:
            raise ValueError(f"{name} was recorded on a different probe set than {names[0]} "
                             f"(probe fingerprints {fb} vs {fa}); record both on one probe set")
        if first.targets is not None and t.targets is not None and not np.array_equal(first.targets, t.targets):
            raise ValueError(f"{name} has different probe targets than {names[0]}: the probe sets "
                             "differ (or are in another order); record both on one probe set")


# ----------------------------------------------------------------------------- from a Recipe
def record_recipe_predictions(
    recipe: Any,
    theta0: Any,
    steps: Sequence[int] | None,
    probe_x: Any,
    probe_y: Any = None,
    labels: Sequence[str] | None = None,
    meta: dict | None = None,
    *,
    every: int | None = None,
) -> PredictionTrajectory:
    """Train one or many runs of a :class:`~trainmap.recipe.Recipe`, recording softmax outputs.

    Args:
        recipe: a Recipe whose model returns logits, or a sequence of Recipes (one per run).
        theta0: (P,) or (runs, P) initial parameters.
        steps: (R,) increasing steps in [0, T] at which to record (any spacing, e.g.
            :func:`log_spaced_steps`); or None with ``every=k``: steps 0, k, 2k, ... and T.
        probe_x: (N, ...) probe inputs; probe_y: (N,) their true classes (optional).
        labels: (runs,) run labels; meta: extra metadata.

    Returns:
        A PredictionTrajectory (runs, R, N, C).
    """
    import jax
    import jax.numpy as jnp

    thetas = np.asarray(theta0)
    thetas = thetas[None] if thetas.ndim == 1 else thetas
    recipes = list(recipe) if isinstance(recipe, (list, tuple)) else [recipe] * len(thetas)
    if len(recipes) != len(thetas):
        raise ValueError(f"{len(recipes)} recipes for {len(thetas)} initial parameter vectors")
    from trainmap.record.validation import which_steps

    T = recipes[0].num_steps
    _, k = which_steps(steps, every)
    if k is not None:
        from trainmap.recipe import record_steps

        steps = record_steps(T, k)
    steps_arr = np.asarray(steps, dtype=np.int64)
    if steps_arr.size == 0 or steps_arr.min() < 0 or steps_arr.max() > T or np.any(np.diff(steps_arr) <= 0):
        raise ValueError(f"steps must be increasing integers in [0, {T}], got {steps_arr.tolist()}")
    probe = jnp.asarray(probe_x)
    out = []
    for i, (rec, th) in enumerate(zip(recipes, thetas)):
        def predict(state: Any, rec: Any = rec) -> Any:
            return jax.nn.softmax(rec.apply(rec.unravel(state.theta), probe), -1)

        _, probs = rec.run_many(jnp.asarray(th)[None], steps_arr, predict)
        run = np.asarray(probs[0], dtype=np.float32)
        if not np.all(np.isfinite(run)):
            raise ValueError(f"run {i} diverged (NaN predictions); lower the learning rate")
        out.append(run)
    info = {"source": "recipe", "recipe": recipes[0].config, "probe": probe_fingerprint(probe_x), **(meta or {})}
    return PredictionTrajectory(np.stack(out), steps_arr, list(labels) if labels is not None else [],
                                None if probe_y is None else np.asarray(probe_y), info)


# ----------------------------------------------------------------------------- PyTorch
class TorchPredictionRecorder:
    """Records softmax outputs of a ``torch.nn.Module`` on a probe set at chosen steps.

    Usage::

        steps = log_spaced_steps(num_steps, 24)
        with TorchPredictionRecorder(model, probe_x, steps, optimizer=opt, targets=probe_y) as rec:
            for x, y in loader:
                opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
        traj = rec.to_trajectory()          # (1, recorded steps, N, C)

    Step 0 (before training) is recorded on entering the context when it is in ``steps``;
    after that the recorder counts ``optimizer.step()`` calls. Outputs are computed under
    ``torch.no_grad()`` in eval mode (the training mode is restored afterwards).

    Args:
        model: module returning logits (B, C) (or probabilities with ``outputs="probs"``).
        probe_x: (N, ...) probe inputs (tensor or array).
        steps: steps at which to record (increasing); or, instead, ``every=k`` (steps 0, k, 2k, ...),
            the same vocabulary as :class:`~trainmap.record.torch.TorchRecorder`.
        optimizer: if given, a post-step hook records automatically inside the context.
        targets: (N,) true classes of the probe samples.
        label: the run's label.
        outputs: ``"logits"`` (softmax applied) or ``"probs"``.
        batch_size: probe samples per forward pass.
    """

    def __init__(self, model: Any, probe_x: Any, steps: Sequence[int] | None = None, optimizer: Any = None,
                 targets: Any = None, label: str = "0", outputs: str = "logits",
                 batch_size: int = 4096, *, every: int | None = None) -> None:
        from trainmap.record.validation import which_steps

        chosen, self.every = which_steps(steps, every)
        torch = _torch()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if outputs not in ("logits", "probs"):
            raise ValueError(f"outputs must be 'logits' or 'probs', got {outputs!r}")
        self.model = model
        self.probe = probe_x if isinstance(probe_x, torch.Tensor) else torch.as_tensor(np.asarray(probe_x))
        self.steps = chosen
        self.optimizer = optimizer
        self.targets = None if targets is None else np.asarray(targets)
        self.label = str(label)
        self.outputs = outputs
        self.batch_size = int(batch_size)
        self._rows: list[np.ndarray] = []
        self._recorded: list[int] = []
        self._count = 0
        self._handle: Any = None

    def _forward(self) -> np.ndarray:
        torch = _torch()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                parts = [self.model(self.probe[i: i + self.batch_size])
                         for i in range(0, len(self.probe), self.batch_size)]
        finally:
            self.model.train(was_training)
        out = torch.cat(parts).detach().cpu().double().numpy()
        return softmax(out) if self.outputs == "logits" else out.astype(np.float32)

    def record(self, step: int | None = None) -> None:
        """Record the current predictions at ``step`` (default: the optimizer-step counter)."""
        s = self._count if step is None else int(step)
        if self._recorded and s <= self._recorded[-1]:
            raise ValueError(f"steps must increase: got {s} after {self._recorded[-1]}")
        row = self._forward()
        if not np.all(np.isfinite(row)):
            raise ValueError(f"non-finite predictions at step {s}: training diverged; lower the "
                             "learning rate or stop recording before the divergence")
        self._rows.append(row)
        self._recorded.append(s)

    def step(self) -> None:
        """Advance the step counter by one and record if the new step is wanted."""
        self._count += 1
        if self._due(self._count):
            self.record()

    def _due(self, step: int) -> bool:
        return step % self.every == 0 if self.steps is None else step in self.steps

    def __enter__(self) -> "TorchPredictionRecorder":
        if not self._recorded and self._due(0):
            self.record(0)
        if self.optimizer is not None:
            self._handle = self.optimizer.register_step_post_hook(lambda *_: self.step())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __len__(self) -> int:
        return len(self._recorded)

    def to_trajectory(self, meta: dict | None = None) -> PredictionTrajectory:
        """The recorded run as a (1, recorded steps, N, C) PredictionTrajectory."""
        if not self._rows:
            raise ValueError("nothing was recorded; check that steps includes steps the loop reaches")
        info = {"source": "torch", "probe": probe_fingerprint(self.probe.detach().cpu().numpy()),
                **(meta or {})}
        return PredictionTrajectory(np.stack(self._rows)[None], np.asarray(self._recorded), [self.label],
                                    self.targets, info)


# ----------------------------------------------------------------------------- Gaussian outputs
@dataclass
class GaussianPredictionTrajectory:
    """Regression predictions as Gaussians N(mean, variance) on a fixed probe set.

    Attributes:
        means: (runs, steps, N) or (runs, steps, N, K) predicted means.
        steps: (steps,) recorded steps.
        variance: σ² of the likelihood, shared by all models.
        labels: (runs,) run labels.
        meta: free-form metadata.
    """

    means: Any
    steps: np.ndarray
    variance: float = 1.0
    labels: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(self.means.shape)
        if len(shape) not in (3, 4):
            raise ValueError(f"means must be (runs, steps, N) or (runs, steps, N, K), got {shape}")
        self.steps = _validate_steps(self.steps, shape[1])
        if not self.variance > 0:
            raise ValueError(f"variance must be positive, got {self.variance}")
        self.labels = [str(s) for s in (self.labels or range(shape[0]))]
        if len(self.labels) != shape[0]:
            raise ValueError(f"{len(self.labels)} labels for {shape[0]} runs")
        if not np.all(np.isfinite(np.asarray(self.means))):
            raise ValueError("means contain NaN/inf values; the run probably diverged")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape)

    def points(self) -> np.ndarray:
        """(runs*steps, N, K) means, run-major."""
        m = np.asarray(self.means)
        m = m[..., None] if m.ndim == 3 else m
        return m.reshape(-1, *m.shape[2:])

    def save(self, path: str | os.PathLike) -> Path:
        return save_store(path, "gaussian_predictions", {"means": self.means}, self.steps, self.labels,
                          {**self.meta, "variance": float(self.variance)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GaussianPredictionTrajectory":
        arrays, steps, labels, meta = open_store(path, "gaussian_predictions")
        return cls(arrays["means"], steps, float(meta.get("variance", 1.0)), labels, meta)
