"""The UCI optical-digits data set bundled with scikit-learn (1,797 images of 8x8 pixels)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
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


def _bundled_csv() -> Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The raw UCI digits as scikit-learn ships them: pixels (1797, 64) float64 in 0..16, labels (1797,).

    The bundled CSV is read directly: importing scikit-learn would add ~100 MB to the process
    (its resident memory is what the Jacobian benchmarks measure). When the file is not where
    scikit-learn keeps it, ``sklearn.datasets.load_digits`` is used.
    """
    path = _bundled_csv()
    if path is not None:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",")
        if table.shape == (1797, 65):
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    return np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.int64)


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
    pixels, labels = digits_arrays()
    x = (pixels / 16.0).astype(np.float32)
    y = labels.astype(np.int32)
    if not 0 < test_size < len(x):
        raise ValueError(f"test_size must be in (0, {len(x)}), got {test_size}")
    perm = np.random.default_rng(split_seed).permutation(len(x))
    x, y = x[perm], y[perm]
    if image_shape:
        x = x.reshape(-1, 8, 8, 1)
    n_train = len(x) - test_size
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10)
