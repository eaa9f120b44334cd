"""The training-Jacobian lens (Scherlis & Belrose 2024): J = ∂θ_T/∂θ₀ and its regions."""

from trainmap.jacobian.analysis import analyze, load_svd
from trainmap.jacobian.exact import CheckpointError, exact_jacobian
from trainmap.jacobian.matrix_free import TrainingOperator
from trainmap.jacobian.regions import JacobianSVD, Thresholds, classify, region_summary, svd

__all__ = ["CheckpointError", "JacobianSVD", "Thresholds", "TrainingOperator", "analyze", "classify",
           "exact_jacobian", "load_svd", "region_summary", "svd"]
