"""Modular addition ``a + b mod p`` as a token sequence task (the grokking data set)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ModularData(NamedTuple):
    """Modular addition split into train and test.

    Attributes:
        x_train: (N_train, 3) int32 tokens ``[a, b, p]`` (token p is "=").
        y_train: (N_train,) int32 answers ``(a + b) mod p``.
        x_test: (N_test, 3) int32 tokens.
        y_test: (N_test,) int32 answers.
        p: the modulus; the vocabulary has p + 1 tokens.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    p: int


def modular_addition(p: int = 113, train_fraction: float = 0.3, seed: int = 0) -> ModularData:
    """All p² pairs (a, b), split at random into train and test.

    Args:
        p: modulus (vocabulary p + 1 with the "=" token).
        train_fraction: fraction of the p² pairs used for training.
        seed: seed of the split permutation.

    Returns:
        A :class:`ModularData`.
    """
    if p < 2:
        raise ValueError(f"p must be >= 2, got {p}")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    x = np.stack([a, b, np.full_like(a, p)], axis=1).astype(np.int32)
    y = ((a + b) % p).astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_train = int(train_fraction * len(x))
    tr, te = perm[:n_train], perm[n_train:]
    return ModularData(x[tr], y[tr], x[te], y[te], int(p))
