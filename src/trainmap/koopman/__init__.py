"""The Koopman lens: DMD spectra of training trajectories and a permutation conjugacy test."""

from trainmap.koopman.analysis import ObservableConfig, compare, spectrum
from trainmap.koopman.conjugacy import (
    PermutationTestResult,
    conjugacy_test,
    matched_swap_test,
    permutation_test,
)
from trainmap.koopman.distances import distance_matrix, optimal_matching, wasserstein
from trainmap.koopman.dmd import (
    DMD,
    DMDBase,
    ExactDMD,
    HankelDMD,
    as_stack,
    delay_embed,
    per_run_eigenvalues,
    snapshot_pairs,
)
from trainmap.koopman.observables import PCAObservable, RandomProjection, select_layers

__all__ = [
    "DMD", "DMDBase", "ExactDMD", "HankelDMD", "ObservableConfig", "PCAObservable",
    "PermutationTestResult", "RandomProjection", "as_stack", "compare", "conjugacy_test",
    "delay_embed", "distance_matrix", "matched_swap_test", "optimal_matching",
    "per_run_eigenvalues", "permutation_test", "select_layers", "snapshot_pairs", "spectrum",
    "wasserstein",
]
