"""``TorchRecipe``: a PyTorch training run as a :class:`~trainmap.protocol.TrainingMap`.

The user's ``nn.Module``, loss and ``torch.optim`` optimizer (through its functional mirror,
:mod:`trainmap.torch.optim`) become a pure function θ₀ ↦ θ_T built from ``torch.func``:

* ``train``: a Python loop over the T steps; each step is ``torch.func.grad`` of the batch loss
  through ``torch.func.functional_call`` and an out-of-place optimizer update.
* ``jvp``: ``vmap`` over the k tangents of ``torch.func.jvp`` through the whole loop; the primal
  (unbatched) is computed once per block and shared by its k tangents.
* ``vjp``: reverse mode with √T-segment rematerialisation: the forward pass keeps the training
  state at segment boundaries only, and each segment is re-run under ``torch.func.vjp`` while its
  k cotangents are pulled back (``vmap``). Memory O(√T · state + one segment's graph).

The engines (exact J, Lanczos/SLQ, the experiments) read only the protocol: this class has
``backend = "torch"``, so they call :meth:`jvp`/:meth:`vjp` on NumPy blocks instead of tracing
them with JAX. Vectors cross the boundary as NumPy arrays (or anything ``np.asarray`` takes);
inside, tensors live on the model's device (a GPU when the model is on one).

BatchNorm: in training mode a BatchNorm layer normalises with the batch's own statistics, so its
running statistics never enter θ_T. The differentiated loop therefore leaves them alone; :meth:`run`
replays the run eagerly and records them, updated as ``torch.optim`` training updates them.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.func import functional_call, grad_and_value, jvp, vjp, vmap

from trainmap.torch.optim import FunctionalOptimizer

_DROPOUTS = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
             torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


#: tangent-state bytes per chunk that set :meth:`TorchRecipe.default_chunk`
CHUNK_BYTES = 48 * 2**20


def default_segment(num_steps: int) -> int:
    """⌈√T⌉ steps per rematerialised segment (the same rule as the JAX recipe's)."""
    return max(1, math.isqrt(max(num_steps - 1, 0)) + 1) if num_steps > 1 else 1


def _frozen_stats_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``model`` in ``dtype`` whose BatchNorm layers do not update running statistics
    (in training mode their output does not read them, so training is unchanged)."""
    m = copy.deepcopy(model).to(dtype)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._NormBase) and mod.training:
            mod.track_running_stats = False
    return m


class TorchRecipe:
    """One PyTorch training run minus its initial parameters (the torch ``TrainingMap``).

    Build it with :func:`trainmap.torch.torch_recipe`, which validates the inputs.

    Attributes:
        num_params: P, the number of trainable scalars (``named_parameters`` with requires_grad).
        names, shapes: the trainable parameters' names and shapes, in flat-vector order.
        batches: (T, B) int64 sample indices, one row per optimizer step.
        lrs: (T, G) float64 learning rate per step and param group.
        config: JSON-able description of the run (model, optimizer, schedule, loss, data).
    """

    backend = "torch"

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, optimizer: FunctionalOptimizer,
                 x: torch.Tensor, y: torch.Tensor, batches: np.ndarray, lrs: np.ndarray, config: dict,
                 device: torch.device | None = None) -> None:
        self.model = copy.deepcopy(model) if device is None else copy.deepcopy(model).to(device)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.names = tuple(n for n, _ in named)
        self.shapes = tuple(tuple(p.shape) for _, p in named)
        self.sizes = tuple(int(p.numel()) for _, p in named)
        self.num_params = int(sum(self.sizes))
        self.device = named[0][1].device
        self.param_dtype = named[0][1].dtype
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.data = (x, y)  # tensors on the device
        self.batches = np.asarray(batches, dtype=np.int64)
        self.lrs = np.asarray(lrs, dtype=np.float64)
        self.config = config
        self._batches_t = torch.as_tensor(self.batches, device=self.device)
        self._models: dict[torch.dtype, torch.nn.Module] = {}
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ conversions
    @property
    def x(self) -> np.ndarray:
        """(N, ...) the training inputs as NumPy (the protocol's view; ``data`` holds the tensors)."""
        return _numpy(self.data[0])

    @property
    def y(self) -> np.ndarray:
        """(N, ...) the training targets as NumPy."""
        return _numpy(self.data[1])

    @property
    def num_steps(self) -> int:
        """T, the number of optimizer steps."""
        return int(self.batches.shape[0])

    def tensor(self, a: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``a`` (NumPy, JAX or torch) as a tensor on the model's device. Integer arrays (labels, token
        ids) keep their dtype; float arrays keep theirs (float32/float64) unless ``dtype`` is given."""
        t = a.detach() if isinstance(a, torch.Tensor) else from_array(a)
        if dtype is not None and t.is_floating_point():
            return t.to(device=self.device, dtype=dtype)
        return t.to(device=self.device)

    def check_theta(self, theta0: Any) -> np.ndarray:
        """``theta0`` as a NumPy (P,) float vector, or a ValueError naming the expected shape."""
        arr = np.asarray(theta0.detach().cpu() if isinstance(theta0, torch.Tensor) else theta0)
        if arr.shape != (self.num_params,):
            raise ValueError(f"theta0 must be a flat vector of shape ({self.num_params},), got {arr.shape}; "
                             "use trainmap.torch.flat_params(model)")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"theta0 must be float32 or float64, got {arr.dtype}")
        return arr

    def theta_tensor(self, theta0: Any) -> torch.Tensor:
        """θ₀ checked and as a tensor on the device; builds the model copy for its dtype now,
        outside any torch.func transform (copying a module inside one is refused)."""
        th = self.tensor(self.check_theta(theta0))
        self.module(th.dtype)
        return th

    def split(self, theta: torch.Tensor) -> list[torch.Tensor]:
        """The flat (P,) vector as one tensor per parameter (views; works under vmap)."""
        return [c.view(s) for c, s in zip(torch.split(theta, self.sizes), self.shapes)]

    @staticmethod
    def flat(params: Sequence[torch.Tensor]) -> torch.Tensor:
        """The inverse of :meth:`split`: (P,)."""
        return torch.cat([p.reshape(-1) for p in params])

    def module(self, dtype: torch.dtype) -> torch.nn.Module:
        """The model in ``dtype``, with BatchNorm's running statistics frozen (see the module doc)."""
        if dtype not in self._models:
            self._models[dtype] = _frozen_stats_copy(self.model, dtype)
        return self._models[dtype]

    def _data(self, t: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._batches_t[t]
        x, y = self.data[0][idx], self.data[1][idx]
        if x.is_floating_point():
            x = x.to(dtype)
        if y.is_floating_point():
            y = y.to(dtype)
        return x, y

    # ------------------------------------------------------------------ one step
    def step(self, t: int, params: list, state: list, model: torch.nn.Module | None = None,
             buffers: dict | None = None) -> tuple[list, list, torch.Tensor]:
        """Step ``t``: ``(params', state', loss before the update)``; pure in params and state.

        With ``model`` and ``buffers`` (the eager replay of :meth:`run`), gradients come from
        autograd and the model's buffers (BatchNorm running statistics) are updated in place."""
        dtype = params[0].dtype
        model = self.module(dtype) if model is None else model
        x, y = self._data(t, dtype)
        names = self.names

        def loss_of(p: list) -> torch.Tensor:
            tensors = dict(zip(names, p))
            if buffers is not None:
                tensors.update(buffers)
            target = y
            if buffers is None and y.is_floating_point():
                # float targets enter the graph with a materialised zero tangent: some losses'
                # backward formulas (F.mse_loss) write into the target's tangent, which torch.func
                # otherwise represents by an immutable ZeroTensor; the value is unchanged
                target = y + 0 * p[0].reshape(-1)[:1]
            return self.loss_fn(functional_call(model, tensors, (x,)), target)

        if buffers is None:
            grads, loss = grad_and_value(loss_of)(params)
        else:  # the eager replay: autograd, so that BatchNorm may update the buffers in place
            leaves = [q.detach().requires_grad_(True) for q in params]
            with torch.enable_grad():
                loss = loss_of(leaves)
                grads = list(torch.autograd.grad(loss, leaves))
            params, loss = [q.detach() for q in params], loss.detach()
        params, state = self.optimizer.update(t, params, grads, state, self.lrs[t])
        return params, state, loss

    def advance(self, params: list, state: list, start: int, stop: int) -> tuple[list, list]:
        """Steps ``start .. stop - 1``."""
        for t in range(start, stop):
            params, state, _ = self.step(t, params, state)
        return params, state

    def _train(self, theta: torch.Tensor) -> torch.Tensor:
        params = self.split(theta)
        params, _ = self.advance(params, self.optimizer.init(params), 0, self.num_steps)
        return self.flat(params)

    # ------------------------------------------------------------------ the protocol
    def train(self, theta0: Any) -> np.ndarray:
        """θ_T (P,) NumPy, from θ₀ (P,) (its float dtype sets the computation's)."""
        with torch.no_grad():
            return _numpy(self._train(self.theta_tensor(theta0)))

    def train_with_losses(self, theta0: Any) -> tuple[np.ndarray, np.ndarray]:
        """(θ_T (P,), the (T,) batch losses before each step), NumPy."""
        rec = self.run(theta0)
        return rec.theta_T, rec.losses

    def run(self, theta0: Any, record_every: int = 0, probe: Any = None, record_params: bool = True) -> Any:
        """Train eagerly and record, as :meth:`trainmap.recipe.Recipe.run` does (NumPy arrays).

        Buffers (BatchNorm running statistics) are updated as ``torch.optim`` training updates them.

        Args:
            theta0: (P,) initial flat parameters.
            record_every: k > 0 records at steps 0, k, 2k, ... and T; 0 only at 0 and T.
            probe: optional (N_probe, ...) inputs whose outputs are recorded (model in its given mode).
            record_params: keep the (R, P) parameters.

        Returns:
            A :class:`~trainmap.recipe.TrainRecord`; ``observed["buffers"]`` maps each buffer's name to
            its (R, ...) values at the recorded steps.
        """
        from trainmap.recipe import TrainRecord, record_steps

        T = self.num_steps
        steps = record_steps(T, record_every)
        theta = self.theta_tensor(theta0)
        model = copy.deepcopy(self.model).to(theta.dtype)
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        params = self.split(theta)
        state = self.optimizer.init(params)
        probe_t = None if probe is None else self.tensor(probe)
        if probe_t is not None and probe_t.is_floating_point():
            probe_t = probe_t.to(theta.dtype)
        rows: dict[str, list] = {"params": [], "outputs": [], **{n: [] for n in buffers}}

        def snapshot() -> None:
            if record_params:
                rows["params"].append(_numpy(self.flat(params)))
            if probe_t is not None:
                out = functional_call(self.module(theta.dtype), dict(zip(self.names, params)), (probe_t,))
                rows["outputs"].append(_numpy(out))
            for n, b in buffers.items():
                rows[n].append(_numpy(b).copy())

        losses = []
        with torch.no_grad():
            if 0 in steps:
                snapshot()
            for t in range(T):
                params, state, loss = self.step(t, params, state, model, buffers)
                losses.append(loss)
                if t + 1 in steps:
                    snapshot()
        return TrainRecord(_numpy(self.flat(params)), _numpy(torch.stack(losses)), steps,
                           np.stack(rows["params"]) if record_params else None,
                           np.stack(rows["outputs"]) if probe_t is not None else None,
                           {"buffers": {n: np.stack(rows[n]) for n in buffers}})

    def predict(self, theta: Any, x: Any) -> np.ndarray:
        """Model outputs (N, ...) at flat parameters ``theta`` (P,), the model in the mode it was given."""
        th = self.theta_tensor(theta)
        xt = self.tensor(x)
        if xt.is_floating_point():
            xt = xt.to(th.dtype)
        with torch.no_grad():
            return _numpy(functional_call(self.module(th.dtype), dict(zip(self.names, self.split(th))), (xt,)))

    def jvp(self, theta0: Any, V: Any) -> np.ndarray:
        """J V as rows: V (k, P) -> (k, P), row i = J v_i (forward mode, vmapped over the k rows)."""
        th = self.theta_tensor(theta0)
        Vt = self.tensor(V, th.dtype)
        return _numpy(_guard(lambda: vmap(lambda v: jvp(self._train, (th,), (v,))[1])(Vt)))

    def vjp(self, theta0: Any, W: Any, segment: int | None = None) -> np.ndarray:
        """Jᵀ W as rows: W (k, P) -> (k, P), row i = Jᵀ w_i (reverse mode, rematerialised in
        segments of ``segment`` steps; None: ⌈√T⌉; 0: one segment, the whole graph)."""
        th = self.theta_tensor(theta0)
        Wt = self.tensor(W, th.dtype)
        T = self.num_steps
        s = default_segment(T) if segment is None else (T if segment == 0 else int(segment))
        if s < 1:
            raise ValueError(f"segment must be >= 0 (0: no checkpointing), got {segment}")
        starts = list(range(0, T, s))
        boundaries = []
        with torch.no_grad():
            params = self.split(th)
            state = self.optimizer.init(params)
            for b in starts:
                boundaries.append((params, state))
                params, state = self.advance(params, state, b, min(b + s, T))
        ct_p = [c.reshape(Wt.shape[0], *shape) for c, shape in
                zip(torch.split(Wt, self.sizes, dim=1), self.shapes)]
        ct_s = [[torch.zeros((Wt.shape[0], *p.shape), dtype=th.dtype, device=self.device) for p in st]
                for st, p in zip(boundaries[0][1], boundaries[0][0])]
        for b, (p_b, s_b) in zip(reversed(starts), reversed(boundaries)):
            stop = min(b + s, T)
            _, pull = _guard(lambda: vjp(lambda p, st: self.advance(p, st, b, stop), p_b, s_b))
            ct_p, ct_s = _guard(lambda: vmap(pull)((ct_p, ct_s)))
        return _numpy(torch.cat([c.reshape(Wt.shape[0], -1) for c in ct_p], dim=1))

    def default_chunk(self, memory_budget_bytes: float) -> int:
        """Tangents per chunk of exact J: about :data:`CHUNK_BYTES` of tangent state (θ and the
        optimizer's state), a power of two in [16, 1024], within half of ``memory_budget_bytes``.

        torch dispatches every operation from Python, so a chunk must be wide enough to amortise
        that; past the caches it slows again. On the reference MLP (P = 4,810, SGD momentum,
        2-core CPU; ``python bench/torch_backend.py --micro``) the time per step and tangent was
        77.5 µs at K = 64, 59.7 at 256, 48.9 at 512, 49.0 at 1,024 and 100.0 at K = P (one vmap over
        every column, as ``jacfwd`` does).
        """
        floats = self.num_params * (1 + max(self.optimizer.num_state(g) for g in range(len(self.optimizer.groups))))
        per = floats * torch.tensor([], dtype=self.param_dtype).element_size()
        k = 2 ** int(np.floor(np.log2(max(min(CHUNK_BYTES, memory_budget_bytes / 8) / per, 1.0))))
        return int(min(max(k, 16), 1024, self.num_params))

    def linearized_steps(self, theta0: Any, rule: Callable | None = None) -> Any:
        """Not available on this backend: the exact engine runs ``jvp`` per chunk of columns."""
        raise NotImplementedError("the torch backend has no stored step linearisations; "
                                  "use primal='per_chunk'")

    def fingerprint(self) -> str:
        """A SHA-256 of what determines the run given θ₀: the model's structure and the source of
        its modules' ``forward``, its buffers, the data, the batch order, the optimizer with
        every group's hyper-parameters, the learning-rate table and the loss."""
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()
        h.update(repr(self.model).encode())
        seen = set()
        for mod in self.model.modules():
            cls = type(mod)
            if cls not in seen:
                seen.add(cls)
                h.update(_source(cls.forward).encode())
        for name, b in self.model.named_buffers():
            h.update(name.encode())
            h.update(_numpy(b).tobytes())
        for a in self.data:
            arr = _numpy(a)
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(self.batches.tobytes())
        h.update(json.dumps(self.optimizer.describe(), sort_keys=True, default=str).encode())
        h.update(self.lrs.tobytes())
        h.update((repr(self.loss_fn) + _source(getattr(self.loss_fn, "forward", self.loss_fn))).encode())
        h.update(f"P={self.num_params}|{self.param_dtype}".encode())
        self._fingerprint = h.hexdigest()
        return self._fingerprint


def from_array(a: Any) -> torch.Tensor:
    """An array (NumPy, JAX, anything ``np.asarray`` takes) as a CPU tensor of its own dtype
    (read-only arrays, such as JAX's, are copied: torch needs writable memory)."""
    arr = np.asarray(a)
    return torch.as_tensor(arr if arr.flags.writeable else arr.copy())


def _source(fn: Any) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", repr(fn))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class TorchFuncError(ValueError):
    """The model or loss does something ``torch.func`` cannot transform (the message says what)."""


def _guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn torch.func's transform errors into one line that says what to change."""
    try:
        return fn()
    except RuntimeError as exc:
        raise TorchFuncError(explain(exc)) from exc


def explain(exc: BaseException) -> str:
    """One line naming what ``torch.func`` refused and how to write it instead."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = msg.lower()
    if "random" in low:
        return (f"the model draws random numbers inside the training step ({msg}); torch.func needs "
                "explicit randomness: remove dropout (p=0 or module.eval()) or make the noise a function "
                "of the step index")
    if "inplace" in low or "in-place" in low or "mutate" in low or "captured" in low:
        return (f"the model or loss does an in-place operation that torch.func cannot transform ({msg}); "
                "write it out of place (x = x + y instead of x += y, torch.cat/torch.where instead of "
                "slice assignment, nn.ReLU() instead of nn.ReLU(inplace=True))")
    return f"torch.func could not differentiate the training step: {msg}"
