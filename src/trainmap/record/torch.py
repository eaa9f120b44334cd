"""Record a PyTorch training loop's parameters into a :class:`~trainmap.record.store.Trajectory`.

Needs the optional extra: ``pip install "trainmap[torch]"`` (torch 2.13.0, CPU build).
torch is imported only when a recorder is created.

Usage as a context manager that hooks the optimizer (records after every k-th ``step()``)::

    with TorchRecorder(model, every=1, layers=["fc2.weight"], optimizer=opt) as rec:
        for x, y in loader:
            opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    traj = rec.to_trajectory()          # (1, steps, F), step 0 = the initial parameters

or by hand: ``rec.record(step)`` wherever you like.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from trainmap.record.recorders import ArrayRecorder
from trainmap.record.store import Trajectory


def _torch() -> Any:
    """The torch module, or an ImportError saying how to install it (used by every torch recorder)."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "the PyTorch recorders need torch; install the extra with "
            "`pip install \"trainmap[torch]\"` (pins torch==2.13.0, the CPU build)"
        ) from exc
    return torch


class TorchRecorder:
    """Records named parameters of a ``torch.nn.Module`` every ``every`` optimizer steps.

    The recorders share one vocabulary: ``every`` or ``steps`` say which steps, ``layers`` which
    parameters (as :func:`~trainmap.record.record_recipe` and
    :class:`~trainmap.record.TorchPredictionRecorder`).

    Args:
        model: the module whose ``named_parameters()`` are recorded.
        every: record after optimizer steps k with ``k % every == 0`` (step 0 = on enter).
        layers: parameter names or prefixes to record (e.g. ``["fc2"]``); None records all.
        optimizer: if given, a post-step hook records automatically while the context is open.
        label: label of this run (seed or condition).
        dtype: dtype of the stored features.
        steps: instead of ``every``, the explicit steps to record (0 = on enter).
        include: the deprecated old name of ``layers``.
    """

    def __init__(self, model: Any, every: int | None = None, layers: Sequence[str] | None = None,
                 optimizer: Any = None, label: str = "0", dtype: Any = np.float32, *,
                 steps: Sequence[int] | None = None, include: Sequence[str] | None = None) -> None:
        from trainmap.record.validation import renamed, which_steps

        layers = renamed("layers", "include", include, layers)
        self.steps, every = which_steps(steps, 1 if every is None and steps is None else every)
        torch = _torch()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        names = [n for n, _ in model.named_parameters()]
        if layers:
            chosen = [n for n in names if any(n == p or n.startswith(p + ".") for p in layers)]
            missing = [p for p in layers if not any(n == p or n.startswith(p + ".") for n in names)]
            if missing:
                raise ValueError(f"parameters {missing} not in the model; available: {names}")
        else:
            chosen = names
        self.model = model
        self.names = chosen
        self.optimizer = optimizer
        self._rec = ArrayRecorder(every=every or 1, label=label, dtype=dtype)
        self._count = 0
        self._handle: Any = None

    @property
    def every(self) -> int | None:
        """k when recording every k steps, None with explicit ``steps``."""
        return None if self.steps is not None else self._rec.every

    def _due(self, step: int) -> bool:
        return step in self.steps if self.steps is not None else self._rec.due(step)

    def _snapshot(self) -> dict[str, np.ndarray]:
        params = dict(self.model.named_parameters())
        return {n: params[n].detach().cpu().numpy() for n in self.names}

    def record(self, step: int | None = None) -> None:
        """Record the current parameters at ``step`` (default: the internal step counter)."""
        self._rec.record(self._count if step is None else int(step), **self._snapshot())

    def step(self) -> None:
        """Advance the step counter by one and record if the new step is due."""
        self._count += 1
        if self._due(self._count):
            self.record()

    def attach(self, optimizer: Any) -> Any:
        """Call :meth:`step` after every ``optimizer.step()``; returns the removable hook handle."""
        self._handle = optimizer.register_step_post_hook(lambda *_: self.step())
        return self._handle

    def __enter__(self) -> "TorchRecorder":
        if len(self._rec) == 0 and self._due(0):
            self.record(0)
        if self.optimizer is not None:
            self.attach(self.optimizer)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def to_trajectory(self, meta: dict | None = None) -> Trajectory:
        """The recorded run as a (1, recorded steps, F) Trajectory with a layer table."""
        return self._rec.to_trajectory({"source": "torch", **(meta or {})})
