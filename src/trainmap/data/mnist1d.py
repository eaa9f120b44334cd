"""MNIST-1D (Greydanus & Kobak 2020), generated locally by the ``mnist1d`` package.

Only ``mnist1d.data.make_dataset`` is called, with its arguments from ``get_dataset_args``: the data
are synthesised from ten 1-D digit templates on this machine; the package's URL loader is never used.
``pip install "trainmap[mnist1d]"``.
"""

from __future__ import annotations

import numpy as np

from trainmap.data.digits import Dataset


def load_mnist1d(num_samples: int = 5000, seed: int = 42, train_split: float = 0.8) -> Dataset:
    """Generate MNIST-1D: sequences of length 40 (x: (N, 40) float32), 10 classes.

    Args:
        num_samples: total samples generated (train + test).
        seed: the generator's seed (the package's default is 42).
        train_split: fraction of the samples in the training set.

    Returns:
        A :class:`~trainmap.data.digits.Dataset` with ``num_classes = 10``.
    """
    if int(num_samples) < 10:
        raise ValueError(f"num_samples must be >= 10, got {num_samples}")
    if not 0 < train_split < 1:
        raise ValueError(f"train_split must be in (0, 1), got {train_split}")
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('mnist1d is not installed; pip install "trainmap[mnist1d]"') from err
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = int(num_samples), int(seed), float(train_split)
    d = make_dataset(args)
    return Dataset(np.asarray(d["x"], np.float32), np.asarray(d["y"], np.int32),
                   np.asarray(d["x_test"], np.float32), np.asarray(d["y_test"], np.int32), 10)
