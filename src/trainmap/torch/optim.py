"""Functional mirrors of ``torch.optim`` optimizers, for differentiating a whole training run.

``torch.optim`` updates parameters in place, which ``torch.func`` cannot differentiate through.
:func:`functional_optimizer` reads a user's optimizer instance (its class, param groups and
hyper-parameters) and returns a :class:`FunctionalOptimizer`: a pure ``init``/``update`` pair on
lists of tensors, one per parameter, that applies the same arithmetic out of place (the same
torch operations in the same order as ``torch.optim``'s single-tensor code path, so θ_T agrees
with ``torch.optim``'s to float32 round-off).

Supported: SGD (momentum, dampening, nesterov, weight_decay, maximize), Adam and AdamW
(amsgrad, weight_decay, maximize), RMSprop (alpha, eps, weight_decay, momentum, centered,
maximize). Learning rates come per step and per param group from a table (a schedule).

One difference in derivatives, none in values: √v (Adam, RMSprop) is not differentiable at
v = 0, which happens for parameters whose gradient has been exactly 0 so far (a dead input
pixel); there its tangent is taken as 0, the only value consistent with dv = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

SUPPORTED = ("SGD", "Adam", "AdamW", "RMSprop")

# hyper-parameters read from each param group (besides lr), per optimizer
_KEYS = {
    "SGD": ("momentum", "dampening", "nesterov", "weight_decay", "maximize"),
    "Adam": ("betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"),
    "RMSprop": ("alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
}
_KEYS["AdamW"] = _KEYS["Adam"]


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """√v with the tangent 0 where v == 0 (value identical to ``v.sqrt()`` for v >= 0)."""
    pos = v > 0
    return torch.where(pos, torch.where(pos, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


@dataclass(frozen=True)
class FunctionalOptimizer:
    """A pure mirror of one ``torch.optim`` optimizer.

    Attributes:
        name: ``"SGD"``, ``"Adam"``, ``"AdamW"`` or ``"RMSprop"``.
        groups: one dict of hyper-parameters per param group (lr excluded: it comes per step).
        group_of: for each parameter (in the model's ``named_parameters`` order), its group.
        initial_lrs: (G,) each group's learning rate before any scheduler step.
    """

    name: str
    groups: tuple[dict, ...]
    group_of: tuple[int, ...]
    initial_lrs: tuple[float, ...]

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (optimizer name and each group's hyper-parameters)."""
        return {"name": self.name,
                "param_groups": [{"lr": lr, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}}
                                 for lr, g in zip(self.initial_lrs, self.groups)]}

    def num_state(self, g: int) -> int:
        """How many float state tensors per parameter of group ``g``."""
        h = self.groups[g]
        if self.name == "SGD":
            return 1 if h["momentum"] != 0 else 0
        if self.name in ("Adam", "AdamW"):
            return 3 if h["amsgrad"] else 2
        return 1 + int(h["centered"]) + int(h["momentum"] > 0)

    def init(self, params: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Zero state: per parameter, a list of ``num_state`` tensors shaped like it."""
        return [[torch.zeros_like(p) for _ in range(self.num_state(self.group_of[i]))]
                for i, p in enumerate(params)]

    def update(self, t: int, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
               state: Sequence[Sequence[torch.Tensor]], lrs: Sequence[float],
               ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Step ``t`` (0-based) out of place: ``(params', state')``; ``lrs``: (G,) this step's rates."""
        new_p, new_s = [], []
        for i, (p, g, s) in enumerate(zip(params, grads, state)):
            k = self.group_of[i]
            p2, s2 = _RULES[self.name](t, p, g, list(s), float(lrs[k]), self.groups[k])
            new_p.append(p2)
            new_s.append(s2)
        return new_p, new_s


def _sgd(t: int, p: torch.Tensor, g: torch.Tensor, s: list, lr: float, h: dict) -> tuple:
    g = -g if h["maximize"] else g
    if h["weight_decay"] != 0:
        g = g.add(p, alpha=h["weight_decay"])
    if h["momentum"] != 0:
        buf = g if t == 0 else s[0].mul(h["momentum"]).add(g, alpha=1 - h["dampening"])
        g = g.add(buf, alpha=h["momentum"]) if h["nesterov"] else buf
        s = [buf]
    return p.add(g, alpha=-lr), s


def _adam(t: int, p: torch.Tensor, g: torch.Tensor, s: list, lr: float, h: dict) -> tuple:
    beta1, beta2 = h["betas"]
    g = -g if h["maximize"] else g
    if h["weight_decay"] != 0:
        if h["decoupled_weight_decay"]:
            p = p.mul(1 - lr * h["weight_decay"])
        else:
            g = g.add(p, alpha=h["weight_decay"])
    m = torch.lerp(s[0], g, 1 - beta1)
    v = s[1].mul(beta2).addcmul(g, g, value=1 - beta2)
    step = t + 1
    bias1 = 1 - beta1 ** step
    bias2_sqrt = (1 - beta2 ** step) ** 0.5
    if h["amsgrad"]:
        vmax = torch.maximum(s[2], v)
        denom = (_safe_sqrt(vmax) / bias2_sqrt).add(h["eps"])
        state = [m, v, vmax]
    else:
        denom = (_safe_sqrt(v) / bias2_sqrt).add(h["eps"])
        state = [m, v]
    return torch.addcdiv(p, m, denom, value=-(lr / bias1)), state


def _rmsprop(t: int, p: torch.Tensor, g: torch.Tensor, s: list, lr: float, h: dict) -> tuple:
    alpha = h["alpha"]
    g = -g if h["maximize"] else g
    if h["weight_decay"] != 0:
        g = g.add(p, alpha=h["weight_decay"])
    sq = s[0].mul(alpha).addcmul(g, g, value=1 - alpha)
    state = [sq]
    if h["centered"]:
        ga = torch.lerp(s[1], g, 1 - alpha)
        state.append(ga)
        avg = _safe_sqrt(sq.addcmul(ga, ga, value=-1))
    else:
        avg = _safe_sqrt(sq)
    avg = avg.add(h["eps"])
    if h["momentum"] > 0:
        buf = s[-1].mul(h["momentum"]).addcdiv(g, avg)
        state.append(buf)
        return p.add(buf, alpha=-lr), state
    return torch.addcdiv(p, g, avg, value=-lr), state


_RULES = {"SGD": _sgd, "Adam": _adam, "AdamW": _adam, "RMSprop": _rmsprop}


def functional_optimizer(optimizer: Any, params: Sequence[torch.Tensor]) -> FunctionalOptimizer:
    """The functional mirror of ``optimizer`` for the parameters ``params`` (model order).

    Args:
        optimizer: a fresh ``torch.optim.SGD``, ``Adam``, ``AdamW`` or ``RMSprop`` instance.
        params: the model's trainable parameters, in ``named_parameters()`` order.

    Raises:
        ValueError: another optimizer class, an optimizer that has already stepped, or param groups
            that miss or duplicate some of ``params``.
    """
    name = type(optimizer).__name__
    if not isinstance(optimizer, torch.optim.Optimizer) or name not in SUPPORTED:
        raise ValueError(f"optimizer {name} is not supported; use one of torch.optim."
                         f"{', torch.optim.'.join(SUPPORTED)} (or write the run as a JAX recipe with optax)")
    if any(len(st) for st in optimizer.state.values()):
        raise ValueError("the optimizer has state from earlier steps; pass a freshly built optimizer "
                         "(trainmap trains from θ₀ with zero optimizer state)")
    where = {id(p): i for i, p in enumerate(params)}
    group_of = [-1] * len(params)
    groups, lrs = [], []
    for k, group in enumerate(optimizer.param_groups):
        for q in group["params"]:
            i = where.get(id(q))
            if i is None:
                raise ValueError("the optimizer holds a tensor that is not a trainable parameter of the model; "
                                 "build it from model.parameters()")
            if group_of[i] != -1:
                raise ValueError("a parameter appears in two param groups of the optimizer")
            group_of[i] = k
        if isinstance(group["lr"], torch.Tensor):
            raise ValueError("tensor learning rates are not supported; pass lr as a float")
        if group.get("differentiable"):
            raise ValueError("differentiable=True optimizers are not supported; build it with the default")
        h = {key: group.get(key) for key in _KEYS[name]}
        if name in ("Adam", "AdamW"):
            h["betas"] = tuple(float(b) for b in h["betas"])
            if h["decoupled_weight_decay"] is None:
                h["decoupled_weight_decay"] = name == "AdamW"
        groups.append(h)
        lrs.append(float(group["lr"]))
    missing = [i for i, k in enumerate(group_of) if k == -1]
    if missing:
        raise ValueError(f"{len(missing)} trainable parameters are in no param group of the optimizer; "
                         "build it from model.parameters() or set requires_grad=False on the frozen ones")
    return FunctionalOptimizer(name, tuple(groups), tuple(group_of), tuple(lrs))


def learning_rates(optimizer: Any, scheduler: Any, num_steps: int, every: int = 1) -> "list[list[float]]":
    """Each step's learning rate per param group, as ``scheduler`` would set it: (T, G) floats.

    The scheduler is stepped once every ``every`` optimizer steps (1: per step; steps per epoch:
    per epoch), as in the user's loop. Both the optimizer's learning rates and the scheduler's
    state are restored afterwards, so the user's objects are left as they were.
    """
    lrs0 = [float(g["lr"]) for g in optimizer.param_groups]
    if scheduler is None:
        return [lrs0 for _ in range(num_steps)]
    if every < 1:
        raise ValueError(f"scheduler_every must be >= 1, got {every}")
    import warnings

    saved = scheduler.state_dict()
    saved_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    table = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
            for t in range(num_steps):
                table.append([float(g["lr"]) for g in optimizer.param_groups])
                if (t + 1) % every == 0:
                    scheduler.step()
    finally:
        scheduler.load_state_dict(saved)
        for g, old in zip(optimizer.param_groups, saved_groups):
            g.update(old)
    return table
