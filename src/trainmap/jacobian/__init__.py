"""The training-Jacobian lens (Scherlis & Belrose 2024): J = ∂θ_T/∂θ₀ and its regions.

The names are imported on first use: ``trainmap.jacobian.regions`` and ``trainmap.jacobian.figures``
(the SVD, the regions and the plots) import neither JAX nor the engine.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: public name -> module
_EXPORTS = {
    "CheckpointError": "trainmap.jacobian.exact",
    "exact_jacobian": "trainmap.jacobian.exact",
    "analyze": "trainmap.jacobian.analysis",
    "load_svd": "trainmap.jacobian.analysis",
    "TrainingOperator": "trainmap.jacobian.matrix_free",
    "JacobianSVD": "trainmap.jacobian.regions",
    "Thresholds": "trainmap.jacobian.regions",
    "classify": "trainmap.jacobian.regions",
    "region_summary": "trainmap.jacobian.regions",
    "svd": "trainmap.jacobian.regions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainmap.jacobian' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
