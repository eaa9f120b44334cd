"""The UCI optical-digits data set bundled with scikit-learn (1,797 images of 8x8 pixels)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """A classification data set split into train and test.

    Attributes:
        x_train: (N_train, D) float32 inputs.
        y_train: (N_train,) int32 class labels in [0, num_classes).
        x_test: (N_test, D) float32 inputs.
        y_test: (N_test,) int32 class labels.
        num_classes: number of classes C.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def load_digits(test_size: int = 197, split_seed: int = 0, image_shape: bool = False) -> Dataset:
    """Load the UCI digits, pixel values scaled to [0, 1].

    The 1,797 samples are permuted with ``split_seed`` and the last ``test_size`` are the test set,
    so the default gives 1,600 training and 197 test digits (the reference experiment).

    Args:
        test_size: number of held-out samples.
        split_seed: seed of the permutation that defines the split.
        image_shape: if True, inputs have shape (N, 8, 8, 1) (for CNNs) instead of (N, 64).

    Returns:
        A :class:`Dataset`.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    if not 0 < test_size < len(x):
        raise ValueError(f"test_size must be in (0, {len(x)}), got {test_size}")
    perm = np.random.default_rng(split_seed).permutation(len(x))
    x, y = x[perm], y[perm]
    if image_shape:
        x = x.reshape(-1, 8, 8, 1)
    n_train = len(x) - test_size
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10)
