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


SPLITS = ("permutation", "sklearn")


def load_digits(test_size: int = 197, split_seed: int = 0, image_shape: bool = False,
                split: str = "permutation") -> Dataset:
    """Load the UCI digits, pixel values scaled to [0, 1] (divided by 16).

    Args:
        test_size: number of held-out samples (default: 1,600 training and 197 test digits).
        split_seed: seed of the split.
        image_shape: if True, inputs have shape (N, 8, 8, 1) (for CNNs) instead of (N, 64).
        split: ``"permutation"``: a ``numpy.random.default_rng(split_seed)`` permutation, the last
            ``test_size`` held out, training samples in permuted order. ``"sklearn"``: exactly
            ``sklearn.model_selection.train_test_split(X, y, test_size=test_size,
            random_state=split_seed)``, the split of Scherlis & Belrose's code (a
            ``RandomState(split_seed)`` permutation: the first ``test_size`` samples are the test
            set, the next ones the training set, in that order), computed without importing
            scikit-learn.

    Returns:
        A :class:`Dataset`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pixels, labels = digits_arrays()
    x = (pixels / 16.0).astype(np.float32)
    y = labels.astype(np.int32)
    if not 0 < test_size < len(x):
        raise ValueError(f"test_size must be in (0, {len(x)}), got {test_size}")
    if int(split_seed) < 0:
        raise ValueError(f"split_seed must be >= 0, got {split_seed}")
    n_train = len(x) - test_size
    if split == "sklearn":
        perm = np.random.RandomState(split_seed).permutation(len(x))
        test, train = perm[:test_size], perm[test_size:]
    else:
        perm = np.random.default_rng(split_seed).permutation(len(x))
        train, test = perm[:n_train], perm[n_train:]
    x_tr, x_te = x[train], x[test]
    if image_shape:
        x_tr, x_te = x_tr.reshape(-1, 8, 8, 1), x_te.reshape(-1, 8, 8, 1)
    return Dataset(x_tr, y[train], x_te, y[test], 10)
