"""Hyper-ribbon measures: explained stress, eigenvalue decay, widths, and geodesic progress."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


def explained_stress(eigenvalues: Any, total_stress: float | None = None) -> np.ndarray:
    """Explained stress χ_k = 1 − √(1 − Σ_{i≤k} λ_i² / ‖W‖_F²) for k = 1..len(eigenvalues).

    Args:
        eigenvalues: (k,) eigenvalues of W sorted by |λ| (descending).
        total_stress: ‖W‖_F² = Σ over the *full* spectrum of λ²; default: Σ of the given λ²
            (only right when the full spectrum is given).

    Returns:
        (k,) χ values in [0, 1], non-decreasing.
    """
    lam2 = np.asarray(eigenvalues, dtype=np.float64) ** 2
    total = float(lam2.sum()) if total_stress is None else float(total_stress)
    if total <= 0:
        return np.zeros_like(lam2)
    frac = np.clip(np.cumsum(lam2) / total, 0.0, 1.0)
    return 1.0 - np.sqrt(1.0 - frac)


class DecayFit(NamedTuple):
    """Least-squares fit log|λ_k| ≈ intercept + slope · k (k = 1..K).

    Attributes:
        ratio: exp(slope), the geometric ratio |λ_{k+1}| / |λ_k| (< 1 for a hyper-ribbon).
        slope, intercept: the fitted line.
        r2: coefficient of determination of the fit (1 = perfectly geometric).
        num: K, the number of eigenvalues fitted.
    """

    ratio: float
    slope: float
    intercept: float
    r2: float
    num: int


def decay_fit(eigenvalues: Any, num: int | None = None, floor: float = 1e-300) -> DecayFit:
    """Geometric decay of the eigenvalue magnitudes.

    Args:
        eigenvalues: (k,) eigenvalues sorted by |λ|.
        num: fit the first ``num`` (default all); zeros are floored at ``floor``.

    Returns:
        A :class:`DecayFit`.
    """
    lam = np.abs(np.asarray(eigenvalues, dtype=np.float64))
    lam = lam[: num or len(lam)]
    if len(lam) < 2:
        raise ValueError("decay_fit needs at least two eigenvalues")
    k = np.arange(1, len(lam) + 1, dtype=np.float64)
    y = np.log(np.maximum(lam, floor))
    slope, intercept = np.polyfit(k, y, 1)
    resid = y - (intercept + slope * k)
    ss = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss if ss > 0 else 1.0
    return DecayFit(float(np.exp(slope)), float(slope), float(intercept), r2, len(lam))


def widths(embedding: Any) -> np.ndarray:
    """Extent (max − min) of the embedded points along each component.

    Args:
        embedding: (n, k) coordinates.

    Returns:
        (k,) widths; for a hyper-ribbon they fall off geometrically.
    """
    X = np.asarray(embedding, dtype=np.float64)
    return X.max(axis=0) - X.min(axis=0)


# ----------------------------------------------------------------------------- reference points
def uniform_prediction(num_samples: int, num_classes: int) -> np.ndarray:
    """P₀: the uniform prediction, (N, C) with every entry 1/C."""
    return np.full((num_samples, num_classes), 1.0 / num_classes)


def onehot_prediction(targets: Any, num_classes: int) -> np.ndarray:
    """P*: the perfect (one-hot truth) prediction, (N, C)."""
    t = np.asarray(targets, dtype=np.int64)
    if t.ndim != 1 or t.min(initial=0) < 0 or t.max(initial=0) >= num_classes:
        raise ValueError(f"targets must be (N,) integers in [0, {num_classes}), got shape {t.shape}")
    out = np.zeros((len(t), num_classes))
    out[np.arange(len(t)), t] = 1.0
    return out


def geodesic_points(targets: Any, num_classes: int, num: int = 21) -> np.ndarray:
    """Points on the great circle in √p space from P₀ (uniform) to P* (one-hot truth).

    Per sample, √P(s) = cos(sθ)·a + sin(sθ)·e, with a = √P₀ = 1/√C, e the unit vector in the
    plane of a and √P* orthogonal to a, and θ = arccos(1/√C) the angle between √P₀ and √P*.

    Args:
        targets: (N,) true classes.
        num_classes: C.
        num: number of points, s = 0 .. 1 evenly spaced.

    Returns:
        (num, N, C) probabilities; the first is P₀ and the last P*.
    """
    a = np.sqrt(uniform_prediction(len(np.asarray(targets)), num_classes))
    b = np.sqrt(onehot_prediction(targets, num_classes))
    theta = np.arccos(1.0 / np.sqrt(num_classes))
    e = b - np.cos(theta) * a
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    s = np.linspace(0.0, 1.0, num)[:, None, None]
    root = np.cos(s * theta) * a + np.sin(s * theta) * e
    probs = np.clip(root, 0.0, None) ** 2
    return probs / probs.sum(-1, keepdims=True)


def geodesic_progress(probs: Any, targets: Any, block: int = 1024) -> np.ndarray:
    """Each model's position along the geodesic from P₀ (0) to P* (1), averaged over samples.

    For each probe sample the √p vector is projected onto the plane of the great circle
    through √P₀ and √P*; its angle from √P₀ divided by θ = arccos(1/√C) is the progress.
    Moving towards the truth gives values in [0, 1]; confident wrong predictions give
    negative values (the circle continues past P₀ away from P*).

    Args:
        probs: (M, N, C) probabilities (or any row-sliceable array).
        targets: (N,) true classes.
        block: models per block.

    Returns:
        (M,) progress values.
    """
    M, N, C = (int(v) for v in probs.shape)
    t = np.asarray(targets, dtype=np.int64)
    if t.shape != (N,):
        raise ValueError(f"targets must have shape ({N},) to match the probe set, got {t.shape}")
    theta = np.arccos(1.0 / np.sqrt(C))
    a = 1.0 / np.sqrt(C)
    out = np.empty(M)
    for i0 in range(0, M, block):
        r = np.sqrt(np.clip(np.asarray(probs[i0: i0 + block], dtype=np.float64), 0.0, None))
        along_a = r.sum(-1) * a                       # <√p, √P₀>
        along_b = r[:, np.arange(N), t]               # <√p, √P*>
        along_e = (along_b - np.cos(theta) * along_a) / np.sin(theta)
        out[i0: i0 + block] = np.mean(np.arctan2(along_e, along_a), axis=-1) / theta
    return out
