"""The Koopman lens on recorded trajectories: :func:`spectrum` of one, :func:`compare` two.

Both read :class:`~trainmap.record.store.Trajectory` objects (from any recorder), choose the
observables (layers, then PCA or a random projection fitted on *every* run involved), fit
stacked DMD with delays, and return plain NumPy results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from trainmap.koopman.conjugacy import PermutationTestResult, permutation_test
from trainmap.koopman.distances import distance_matrix, wasserstein
from trainmap.koopman.dmd import DMD, as_stack
from trainmap.koopman.observables import PCAObservable, RandomProjection, select_layers
from trainmap.record.store import Trajectory


@dataclass
class ObservableConfig:
    """How trajectories become DMD observables.

    Attributes:
        layers: layer names to keep (None: every recorded feature).
        pca: project to this many principal components fitted on all runs (None: no PCA).
        projection: Gaussian random projection to this many dimensions (ignored with ``pca``).
        delays: number of time delays.
        rank: DMD rank (number of eigenvalues); None keeps the numerical rank.
        seed: seed of the random projection.
    """

    layers: Sequence[str] | None = None
    pca: int | None = None
    projection: int | None = None
    delays: int = 0
    rank: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("pca", "projection", "rank"):
            v = getattr(self, name)
            if v is not None and (int(v) != v or v < 1):
                raise ValueError(f"{name} (--{name}) must be an integer >= 1 (or left out), got {v}")
        if int(self.delays) != self.delays or self.delays < 0:
            raise ValueError(f"delays (--delays) must be an integer >= 0, got {self.delays}")


def observables(trajectories: Sequence[Trajectory | np.ndarray], cfg: ObservableConfig) -> list[np.ndarray]:
    """Apply layer selection and PCA / random projection, fitted jointly on all inputs.

    Returns:
        One (runs_i, steps, r) float64 stack per input.
    """
    stacks = []
    for i, t in enumerate(trajectories):
        if cfg.layers and isinstance(t, Trajectory):
            t = select_layers(t, cfg.layers)
        stacks.append(as_stack(t, name=f"trajectory {i}", dtype=np.float32 if cfg.pca else np.float64))
    if cfg.pca:
        return PCAObservable(cfg.pca, dtype=np.float32).fit_transform(stacks)
    if cfg.projection:
        return RandomProjection(cfg.projection, seed=cfg.seed).fit_transform(stacks)
    return [s.astype(np.float64) for s in stacks]


@dataclass
class SpectrumResult:
    """Spectra of one trajectory set.

    Attributes:
        pooled: (r,) eigenvalues of DMD fitted on the stack of all runs.
        per_run: one (r,) eigenvalue array per run (empty if runs are too short for ``rank``).
        dmd: the fitted pooled :class:`DMD`.
        score: relative one-step residual of the pooled fit.
    """

    pooled: np.ndarray
    per_run: list[np.ndarray]
    dmd: DMD
    score: float


def _spectra(stack: np.ndarray, cfg: ObservableConfig, per_run: bool) -> SpectrumResult:
    dmd = DMD(rank=cfg.rank, delays=cfg.delays).fit(stack)
    runs = [DMD(rank=cfg.rank, delays=cfg.delays).fit(stack[i:i + 1]).eigenvalues_
            for i in range(stack.shape[0])] if per_run else []
    return SpectrumResult(dmd.eigenvalues_, runs, dmd, dmd.score(stack))


def spectrum(traj: Trajectory | np.ndarray, cfg: ObservableConfig | None = None,
             per_run: bool = True) -> SpectrumResult:
    """Koopman (DMD) spectrum of a trajectory: pooled over runs, and per run.

    Args:
        traj: a Trajectory (runs, steps, F) or an array of that shape.
        cfg: observables, delays and rank.
        per_run: also fit each run on its own.
    """
    cfg = cfg or ObservableConfig()
    (stack,) = observables([traj], cfg)
    return _spectra(stack, cfg, per_run)


@dataclass
class ComparisonResult:
    """Two trajectory sets compared.

    Attributes:
        a, b: their :class:`SpectrumResult` (observables fitted on both together).
        pooled_distance: W₁ between the pooled spectra.
        distances: (n_a + n_b, n_a + n_b) W₁ matrix between per-run spectra (A runs first).
        labels: (n_a + n_b,) condition label of each row.
        test: permutation test over runs (None when a set has fewer than 2 runs).
    """

    a: SpectrumResult
    b: SpectrumResult
    pooled_distance: float
    distances: np.ndarray
    labels: list[str]
    test: PermutationTestResult | None = field(default=None)


def compare(
    traj_a: Trajectory | np.ndarray,
    traj_b: Trajectory | np.ndarray,
    cfg: ObservableConfig | None = None,
    n_permutations: int = 9999,
    alpha: float = 0.05,
    seed: int = 0,
    names: tuple[str, str] = ("A", "B"),
) -> ComparisonResult:
    """Compare the training dynamics of two trajectory sets.

    Args:
        traj_a, traj_b: trajectories (runs, steps, F) with the same observables (same F after
            layer selection); run counts and lengths may differ between the two sets.
        cfg: observables (PCA fitted across both sets), delays and rank.
        n_permutations, alpha, seed: the permutation test (see :func:`permutation_test`).
        names: condition names used as labels.

    Returns:
        A :class:`ComparisonResult`.
    """
    cfg = cfg or ObservableConfig()
    sa, sb = observables([traj_a, traj_b], cfg)
    if sa.shape[2] != sb.shape[2]:
        raise ValueError(f"the two trajectories have {sa.shape[2]} and {sb.shape[2]} features; select "
                         "the same layers (--layers) or use --pca/--projection")
    ra, rb = _spectra(sa, cfg, True), _spectra(sb, cfg, True)
    spectra = ra.per_run + rb.per_run
    labels = [names[0]] * len(ra.per_run) + [names[1]] * len(rb.per_run)
    dist = distance_matrix(spectra)
    test = None
    if len(ra.per_run) >= 2 and len(rb.per_run) >= 2:
        test = permutation_test(dist, labels, n_permutations=n_permutations, seed=seed, alpha=alpha)
    return ComparisonResult(ra, rb, wasserstein(ra.pooled, rb.pooled), dist, labels, test)
