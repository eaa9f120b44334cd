"""The PyTorch backend: the training Jacobian of an ``nn.Module`` trained by ``torch.optim``.

Needs the optional extra: ``pip install "trainmap[torch]"`` (torch 2.13.0, CPU build)::

    from trainmap.torch import torch_recipe, loader_batches
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    recipe, theta0 = torch_recipe(model, opt, nn.CrossEntropyLoss(), x, y,
                                  loader_batches(loader, epochs=25))
    J = trainmap.jacobian.exact_jacobian(recipe, theta0)        # the same engines as for JAX

The recipe implements :class:`trainmap.protocol.TrainingMap`, so ``exact_jacobian``, ``analyze``,
the matrix-free operator, Lanczos/SLQ and the Jacobian experiments that need only the protocol
accept it unchanged.
"""

from __future__ import annotations

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("trainmap.torch needs PyTorch; install the extra with `pip install \"trainmap[torch]\"` "
                      "(pins torch==2.13.0, the CPU build)") from exc

from typing import Any, Callable

import numpy as np

from trainmap.torch.data import BatchOrder, loader_batches, record_batches
from trainmap.torch.optim import SUPPORTED, FunctionalOptimizer, functional_optimizer, learning_rates
from trainmap.torch.recipe import _DROPOUTS, TorchFuncError, TorchRecipe, explain, from_array

__all__ = ["torch_recipe", "flat_params", "TorchRecipe", "TorchFuncError", "record_batches", "loader_batches",
           "BatchOrder", "functional_optimizer", "FunctionalOptimizer", "learning_rates", "SUPPORTED"]


def flat_params(model: torch.nn.Module) -> np.ndarray:
    """The model's trainable parameters as one flat (P,) NumPy vector, in ``named_parameters`` order."""
    return np.concatenate([p.detach().cpu().reshape(-1).numpy() for p in model.parameters() if p.requires_grad])


def _as_tensor(a: Any, name: str, device: torch.device, float_dtype: torch.dtype) -> torch.Tensor:
    """A tensor given by the user is taken as it is (its device is checked here, its dtype by the
    caller); an array becomes a tensor on ``device``, floats in the model's ``float_dtype``."""
    if isinstance(a, torch.Tensor):
        if a.device != device:
            raise ValueError(f"{name} is on {a.device} but the model is on {device}; move it with "
                             f"{name}.to({str(device)!r}) (or move the model)")
        return a.detach()
    t = from_array(a).to(device)
    return t.to(float_dtype) if t.is_floating_point() else t


def _describe_loss(loss_fn: Callable) -> str:
    if isinstance(loss_fn, torch.nn.Module):
        return repr(loss_fn)
    return getattr(loss_fn, "__qualname__", type(loss_fn).__name__)


def torch_recipe(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: Any,
    y: Any,
    batches: Any,
    *,
    scheduler: Any = None,
    scheduler_every: int = 1,
    config: dict | None = None,
    check: bool = True,
    device: Any = None,
) -> tuple[TorchRecipe, np.ndarray]:
    """A PyTorch training run as a recipe, and its θ₀ (the model's current parameters).

    Args:
        model: the user's ``nn.Module``; its current parameters are θ₀. It is copied: later changes
            to it do not change the recipe. Trainable = ``requires_grad``; the rest are constants.
        optimizer: a fresh ``torch.optim.SGD``/``Adam``/``AdamW``/``RMSprop`` on the model's
            parameters (param groups allowed).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``: ``nn.CrossEntropyLoss()``, ``F.mse_loss``, ...
        x: (N, ...) inputs (tensor on the model's device, or an array).
        y: (N, ...) targets.
        batches: (T, B) sample indices, one row per step (e.g. :func:`loader_batches`).
        scheduler: a ``torch.optim.lr_scheduler`` on ``optimizer`` (or None), stepped every
            ``scheduler_every`` optimizer steps as in your loop.
        config: extra JSON-able settings recorded in config.json.
        check: run one step under ``torch.func`` now, so that what it cannot transform fails here
            with one clear error instead of deep inside an engine.
        device: where the recipe computes (``"cuda"``, ``"cpu"``, a ``torch.device``; ``"auto"``: CUDA
            when ``torch.cuda.is_available()``); None: the model's own device. The recipe's copy of the
            model and the data are moved there; your model stays where it is.

    Returns:
        ``(recipe, theta0)``: a :class:`TorchRecipe` and the (P,) float NumPy θ₀.

    Raises:
        ValueError: unsupported optimizer or scheduler, dropout in training mode, data on another
            device or in another float dtype than the model, bad batch indices; and
            :class:`TorchFuncError` (a ValueError) when ``torch.func`` cannot transform the step.
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    pdtype = params[0].dtype
    if any(p.dtype != pdtype for p in params) or any(p.device != params[0].device for p in params):
        raise ValueError("the model's parameters mix dtypes or devices; convert it with model.to(dtype, device)")
    for name, mod in model.named_modules():
        if isinstance(mod, _DROPOUTS) and mod.training and mod.p > 0:
            raise ValueError(f"module {name!r} is {type(mod).__name__}(p={mod.p}) in training mode: its random "
                             "masks cannot be replayed by torch.func; call model.{name}.eval() or set p=0 "
                             "(the Jacobian of a dropout run needs the masks as explicit inputs)".replace("{name}", name))
    if device is not None:  # compute elsewhere: the data follow the recipe's copy of the model
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
        x = x.to(device) if isinstance(x, torch.Tensor) else x
        y = y.to(device) if isinstance(y, torch.Tensor) else y
    else:
        device = params[0].device
    xt, yt = _as_tensor(x, "x", device, pdtype), _as_tensor(y, "y", device, pdtype)
    if xt.is_floating_point() and xt.dtype != pdtype:
        raise ValueError(f"x is {xt.dtype} but the model's parameters are {pdtype}; convert with "
                         f"x.to({pdtype}) (or model.to({xt.dtype}))")
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(f"x and y disagree on the number of samples: {xt.shape[0]} and {yt.shape[0]}")
    b = np.asarray(batches)
    if b.ndim != 2 or b.shape[0] < 1 or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"batches must be a (T, B) integer index array, got shape {b.shape} and dtype {b.dtype}")
    if b.min() < 0 or b.max() >= xt.shape[0]:
        raise ValueError(f"batch indices must lie in [0, {xt.shape[0]}), got [{b.min()}, {b.max()}]")
    if scheduler is not None and type(scheduler).__name__ == "ReduceLROnPlateau":
        raise ValueError("ReduceLROnPlateau depends on the losses, so the run is not one fixed map of θ₀; "
                         "use a schedule of the step count (StepLR, CosineAnnealingLR, LambdaLR, ...)")
    if scheduler is not None and getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise ValueError("the scheduler belongs to another optimizer; build it on the optimizer you pass")
    fopt = functional_optimizer(optimizer, params)
    lrs = np.asarray(learning_rates(optimizer, scheduler, b.shape[0], scheduler_every), dtype=np.float64)
    cfg = {"backend": "torch", "torch": torch.__version__,
           "model": {"class": type(model).__name__, "repr": repr(model),
                     "num_params": int(sum(p.numel() for p in params))},
           "optimizer": fopt.describe(),
           "schedule": None if scheduler is None else {"class": type(scheduler).__name__,
                                                       "every": int(scheduler_every),
                                                       "lr_first": lrs[0].tolist(), "lr_last": lrs[-1].tolist()},
           "loss": _describe_loss(loss_fn), "num_samples": int(xt.shape[0]), "batch_size": int(b.shape[1]),
           "num_steps": int(b.shape[0]), "device": str(device), **(config or {})}
    recipe = TorchRecipe(model, loss_fn, fopt, xt, yt, b, lrs, cfg, device=device)
    theta0 = flat_params(model)
    if check:
        _check_step(recipe, theta0)
    return recipe, theta0


def _check_step(recipe: TorchRecipe, theta0: np.ndarray) -> None:
    """One step forward-over-reverse under vmap with two tangents, to fail early and clearly."""
    from torch.func import jvp, vmap

    th = recipe.theta_tensor(theta0)

    def one_step(theta: torch.Tensor) -> torch.Tensor:
        p = recipe.split(theta)
        p2, _, _ = recipe.step(0, p, recipe.optimizer.init(p))
        return recipe.flat(p2)

    V = torch.zeros((2, recipe.num_params), dtype=th.dtype, device=th.device)
    V[0, 0] = V[1, -1] = 1
    try:
        out = vmap(lambda v: jvp(one_step, (th,), (v,))[1])(V)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise TorchFuncError(explain(exc)) from exc
    if out.shape != V.shape:
        raise ValueError(f"one training step returned {tuple(out.shape)} tangents for {tuple(V.shape)} inputs")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("the first training step's Jacobian has NaN/inf entries; check the loss and the data")
