"""The training-Jacobian lens (Scherlis & Belrose 2024): J = ∂θ_T/∂θ₀ and its regions.

The names are imported on first use: ``trainmap.jacobian.regions`` and ``trainmap.jacobian.figures``
(the SVD, the regions and the plots) import neither JAX nor the engine.
"""

from __future__ import annotations

from trainmap._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
