"""Ready-made recipes, the reference experiment of Scherlis & Belrose (2024) among them."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax

from trainmap.data import Dataset, load_digits
from trainmap.models import mlp
from trainmap.optimizers import make_optimizer
from trainmap.recipe import Recipe, flat_params, make_recipe


class Setup(NamedTuple):
    """A recipe with its initial parameters and data.

    Attributes:
        recipe: the training run.
        theta0: (P,) initial flat parameters.
        data: the train/test split the recipe trains on.
    """

    recipe: Recipe
    theta0: jax.Array
    data: Dataset


#: the setup of the earlier trainmap default (kept as a robustness check of the findings)
TORCH_DEFAULTS = dict(activation="gelu", init="torch", split="permutation", shuffle=True)


def digits_mlp(
    hidden: Sequence[int] | int = 64,
    activation: str = "gelu_tanh",
    optimizer: str = "sgd",
    lr: float | None = None,
    momentum: float = 0.9,
    epochs: int = 25,
    batch_size: int = 64,
    seed: int = 0,
    schedule: str = "cosine",
    data: Dataset | None = None,
    init: str = "authors",
    split: str = "sklearn",
    shuffle: bool = False,
    data_seed: int | None = None,
    eps_root: float | None = None,
) -> Setup:
    """An MLP classifier on the UCI digits.

    The defaults are the published experiment of Scherlis & Belrose (2024), matched to their public
    code (EleutherAI/training-jacobian, ``experiments.ipynb``): MLP 64→64→10 with tanh-approximate
    GELU (flax's ``nn.gelu``), LeCun-normal weights and N(0, 1/64) biases (``init="authors"``),
    pixels / 16, ``train_test_split(test_size=197, random_state=0)`` (``split="sklearn"``), the
    same batch order in every epoch (``shuffle=False``), SGD momentum 0.9 with a cosine lr from 0.1
    to 0 (Adam: 3e-3, ``eps_root=1e-8``), batch 64, 25 epochs (625 steps), cross-entropy.
    ``digits_mlp(**TORCH_DEFAULTS)`` is trainmap's earlier default.

    Args:
        hidden: hidden width(s).
        activation: a name of :data:`trainmap.models.mlp.ACTIVATIONS` (``"gelu_tanh"``, ``"gelu"``
            = exact erf GELU, ``"relu"``, ``"tanh"``, or a registered one).
        optimizer: ``"sgd"`` (momentum ``momentum``) or ``"adam"``.
        lr: peak learning rate (None: 0.1 for SGD, 3e-3 for Adam, as the authors).
        seed: seed of the initialisation.
        init: ``"authors"``, ``"flax"`` or ``"torch"`` (:func:`trainmap.models.mlp`).
        split: ``"sklearn"`` or ``"permutation"`` (:func:`trainmap.data.load_digits`; ignored
            when ``data`` is given).
        shuffle: a new permutation of the training set every epoch.
        data_seed: seed of the per-epoch permutations (None: ``seed``); only read with ``shuffle``.
        eps_root: Adam's ``eps_root`` (None: 1e-8); > 0 keeps the Jacobian finite where gradients
            are exactly zero (dead pixels). An error with SGD.
    """
    if eps_root is not None and optimizer != "adam":
        raise ValueError(f"eps_root (--eps-root) is an Adam setting; optimizer {optimizer!r} has none")
    if eps_root is not None and not eps_root >= 0:
        raise ValueError(f"eps_root (--eps-root) must be >= 0, got {eps_root}")
    if data_seed is not None and int(data_seed) < 0:
        raise ValueError(f"data_seed (--data-seed) must be >= 0, got {data_seed}")
    if int(seed) < 0:
        raise ValueError(f"seed (--seed) must be >= 0, got {seed}")
    lr = (3e-3 if optimizer == "adam" else 0.1) if lr is None else lr
    given = data is not None
    data = data if given else load_digits(split=split)
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    n = len(data.x_train)
    if not hidden or any(int(h) < 1 for h in hidden):
        raise ValueError(f"hidden widths must be >= 1 (--hidden), got {list(hidden)}")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1 (--epochs), got {epochs}")
    if not 1 <= int(batch_size) <= n:
        raise ValueError(f"batch size must be in [1, {n}] (the training set has {n} digits; --batch-size), "
                         f"got {batch_size}")
    if not (lr > 0 and lr < float("inf")):
        raise ValueError(f"the learning rate must be a positive finite number (--lr), got {lr}")
    d_in = int(data.x_train.reshape(len(data.x_train), -1).shape[1])
    model = mlp((d_in, *hidden, data.num_classes), activation=activation, init=init)
    theta0, unravel = flat_params(model.init, seed)
    steps = epochs * (len(data.x_train) // batch_size)
    root = (1e-8 if eps_root is None else eps_root) if optimizer == "adam" else 0.0
    opt = make_optimizer(optimizer, lr, steps, momentum, schedule, eps_root=root)
    order_seed = (seed if data_seed is None else data_seed) if shuffle else None
    config = dict(model=model.name, hidden=list(hidden), activation=activation, init=init, optimizer=optimizer,
                  lr=lr, momentum=momentum if optimizer == "sgd" else None,
                  eps_root=root if optimizer == "adam" else None, schedule=schedule,
                  seed=seed, shuffle=shuffle, data_seed=order_seed, split="given" if given else split,
                  num_params=int(theta0.size), num_steps=steps,
                  data="digits", n_train=len(data.x_train), n_test=len(data.x_test))
    recipe = make_recipe(model.apply, unravel, theta0.size, data.x_train, data.y_train, opt,
                         batch_size=batch_size, epochs=epochs, shuffle_seed=order_seed, config=config)
    return Setup(recipe, theta0, data)
