"""Synthetic sloppy data: Gaussian inputs with a decaying covariance spectrum and labels from a
random tanh teacher (or random labels), for studying how input decay shapes hyper-ribbons.

Inputs x ~ N(0, diag(b·e^{−ck}/d)), k = 1..d, with b = 50c (b = 1 when c = 0).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from trainmap.data.digits import Dataset


def sloppy_inputs(n: int, d: int = 200, decay: float = 0.1, b: float | None = None, seed: int = 0) -> np.ndarray:
    """(n, d) float32 inputs with covariance diag(b·e^{−ck}/d), k = 1..d."""
    if n < 1 or d < 1 or decay < 0:
        raise ValueError(f"need n, d >= 1 and decay >= 0, got n={n}, d={d}, decay={decay}")
    b = (50.0 * decay if decay > 0 else 1.0) if b is None else float(b)
    var = b * np.exp(-decay * np.arange(1, d + 1)) / d
    x = np.random.default_rng(seed).standard_normal((n, d)) * np.sqrt(var)
    return x.astype(np.float32)


class Teacher(NamedTuple):
    """A random two-layer tanh network without biases: f(x) = tanh(x W1) W2.

    Attributes:
        w1: (d, hidden) first-layer weights, N(0, 1/d_eff) with d_eff the input variance sum.
        w2: (hidden, out) second-layer weights, N(0, 1/hidden).
    """

    w1: np.ndarray
    w2: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(np.asarray(x, dtype=np.float64) @ self.w1) @ self.w2


def tanh_teacher(d: int = 200, hidden: int = 50, out: int = 5, input_scale: float = 1.0, seed: int = 0) -> Teacher:
    """A random tanh teacher ``d → hidden → out`` (no biases).

    Args:
        input_scale: expected ‖x‖²; first-layer weights are scaled so pre-activations are O(1).
    """
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((d, hidden)) / np.sqrt(max(input_scale, 1e-12))
    w2 = rng.standard_normal((hidden, out)) / np.sqrt(hidden)
    return Teacher(w1, w2)


def make_sloppy_data(n_train: int = 1000, n_test: int = 200, d: int = 200, decay: float = 0.1,
                     classes: int = 5, labels: str = "teacher", hidden: int = 50, seed: int = 0) -> Dataset:
    """A classification data set with sloppy inputs.

    Args:
        n_train, n_test: split sizes.
        d, decay: input dimension and decay rate c.
        classes: number of classes (teacher outputs).
        labels: ``"teacher"`` (argmax of a random tanh teacher d→hidden→classes) or
            ``"random"`` (uniform random labels).
        hidden: teacher width.
        seed: seed of inputs, teacher and labels.

    Returns:
        A :class:`~trainmap.data.Dataset` (float32 inputs, int32 labels).
    """
    x = sloppy_inputs(n_train + n_test, d, decay, seed=seed)
    if labels == "teacher":
        scale = float(np.mean(np.sum(x.astype(np.float64) ** 2, axis=1)))
        y = np.argmax(tanh_teacher(d, hidden, classes, scale, seed + 1)(x), axis=1)
    elif labels == "random":
        y = np.random.default_rng(seed + 2).integers(0, classes, len(x))
    else:
        raise ValueError(f"labels must be 'teacher' or 'random', got {labels!r}")
    y = y.astype(np.int32)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)
