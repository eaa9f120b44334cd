"""Hyper-ribbon lens: Bhattacharyya distances, InPCA, hyper-ribbon measures and linear-model theory.

References: Quinn et al., "Visualizing probabilistic models and data with Intensive Principal
Component Analysis", PNAS 2019; Mao et al., "The training process of many deep networks explores
the same low-dimensional manifold", PNAS 2024; Mao et al., "An analytical characterization of
sloppiness in neural networks: insights from linear models".
"""

from trainmap.ribbon.distances import (
    bhattacharyya,
    bhattacharyya_matrix,
    check_probs,
    gaussian_bhattacharyya_matrix,
    iter_bhattacharyya_blocks,
)
from trainmap.ribbon.inpca import InPCA, double_center, minkowski_sq
from trainmap.ribbon.measures import (
    DecayFit,
    decay_fit,
    explained_stress,
    geodesic_points,
    geodesic_progress,
    onehot_prediction,
    uniform_prediction,
    widths,
)

__all__ = [
    "DecayFit", "InPCA", "bhattacharyya", "bhattacharyya_matrix", "check_probs", "decay_fit",
    "double_center", "explained_stress", "gaussian_bhattacharyya_matrix", "geodesic_points",
    "geodesic_progress", "iter_bhattacharyya_blocks", "minkowski_sq", "onehot_prediction",
    "uniform_prediction", "widths",
]
