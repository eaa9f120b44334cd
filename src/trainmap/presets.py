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


def digits_mlp(
    hidden: Sequence[int] | int = 64,
    activation: str = "gelu",
    optimizer: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    epochs: int = 25,
    batch_size: int = 64,
    seed: int = 0,
    schedule: str = "cosine",
    data: Dataset | None = None,
) -> Setup:
    """An MLP classifier on the UCI digits.

    The defaults are the reference experiment: 64→64(GELU)→10 (4,810 parameters), SGD with
    momentum 0.9, cosine lr from 0.1 to 0, batch 64, 25 epochs over 1,600 digits (625 steps).
    ``seed`` sets both the initialisation and the data order.
    """
    data = data if data is not None else load_digits()
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
    model = mlp((d_in, *hidden, data.num_classes), activation=activation)
    theta0, unravel = flat_params(model.init, seed)
    steps = epochs * (len(data.x_train) // batch_size)
    opt = make_optimizer(optimizer, lr, steps, momentum, schedule)
    config = dict(model=model.name, hidden=list(hidden), activation=activation, optimizer=optimizer,
                  lr=lr, momentum=momentum if optimizer == "sgd" else None, schedule=schedule,
                  seed=seed, num_params=int(theta0.size), num_steps=steps,
                  data="digits", n_train=len(data.x_train), n_test=len(data.x_test))
    recipe = make_recipe(model.apply, unravel, theta0.size, data.x_train, data.y_train, opt,
                         batch_size=batch_size, epochs=epochs, shuffle_seed=seed, config=config)
    return Setup(recipe, theta0, data)
