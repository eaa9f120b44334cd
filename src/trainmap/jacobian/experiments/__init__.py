"""The experiments of Scherlis & Belrose (2024) on the training Jacobian, for any ``Recipe``.

Each experiment is one function that writes a results folder (config.json, summary.json with a
``finding`` entry, .npy arrays, PNG figures, captions.json, report.html) and returns its summary:

=====================================  ===========================================================
:func:`perturbation_response`          1. retrain from θ₀ + ε v_i: where does linearity fail?
:func:`ood_effect`                     2. KL of each v_i on train / test / noise / inverted inputs
:func:`restricted_training`            3. train only in span of k singular vectors (θ = θ₀ + B z)
:func:`data_label_dependence`          4. spectra for real / shuffled-label / noise-input data
:func:`seed_overlap`                   5. bulk overlap across seeds (principal angles)
:func:`parameter_change`               6. θ_T − θ₀ in the singular basis
:func:`linearized_explanation`         7. bulk vs null space of the output Jacobian
:func:`reproduce`                      all seven on the reference setup, one results folder
=====================================  ===========================================================
"""

from trainmap.jacobian.experiments._common import (
                                                   ExperimentError,
                                                   jacobian_spectrum,
                                                   jacobian_svd,
                                                   overlap,
                                                   principal_cosines,
                                                   random_orthonormal,
                                                   random_overlap,
                                                   train_many,
)
from trainmap.jacobian.experiments.change import parameter_change
from trainmap.jacobian.experiments.dependence import data_label_dependence, noise_inputs, shuffled_labels
from trainmap.jacobian.experiments.linearized import linearized_explanation, output_gram
from trainmap.jacobian.experiments.ood import kl_per_direction, ood_effect, probe_sets
from trainmap.jacobian.experiments.perturbation import perturbation_response
from trainmap.jacobian.experiments.reproduce import reproduce
from trainmap.jacobian.experiments.restricted import (
                                                   choose_basis,
                                                   restricted_final,
                                                   restricted_recipe,
                                                   restricted_training,
)
from trainmap.jacobian.experiments.seeds import seed_overlap

__all__ = [
    "ExperimentError", "choose_basis", "data_label_dependence", "jacobian_spectrum", "jacobian_svd",
    "kl_per_direction", "linearized_explanation", "noise_inputs", "ood_effect", "output_gram",
    "overlap", "parameter_change", "perturbation_response", "principal_cosines", "probe_sets",
    "random_orthonormal", "random_overlap", "reproduce", "restricted_final", "restricted_recipe",
    "restricted_training", "seed_overlap", "shuffled_labels", "train_many",
]
