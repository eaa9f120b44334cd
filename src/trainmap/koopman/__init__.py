"""The Koopman lens: DMD spectra of training trajectories and a permutation conjugacy test."""

from trainmap.koopman.conjugacy import (
    PermutationTestResult,
    conjugacy_test,
    matched_swap_test,
    permutation_test,
)
from trainmap.koopman.distances import distance_matrix, optimal_matching, wasserstein
from trainmap.koopman.dmd import (
    DMD,
    as_stack,
    delay_embed,
    dmd_eigenvalues,
    per_run_eigenvalues,
    snapshot_pairs,
)
from trainmap.koopman.observables import PCAObservable, RandomProjection, select_layers

__all__ = [
    "DMD", "PCAObservable", "PermutationTestResult", "RandomProjection", "as_stack",
    "conjugacy_test", "delay_embed", "distance_matrix", "dmd_eigenvalues", "matched_swap_test",
    "optimal_matching", "per_run_eigenvalues", "permutation_test", "select_layers",
    "snapshot_pairs", "wasserstein",
]
