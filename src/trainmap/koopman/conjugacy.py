"""A conjugacy test with a real null distribution: a permutation test over runs.

Setting: spectra of n_A runs of condition A and n_B runs of condition B (seeds, or independent
draws of initial conditions). If the two training dynamics are conjugate they share Koopman
eigenvalues, so a run's spectrum is no closer to the spectra of its own condition than to the
other's: the condition labels are exchangeable among runs. The test

1. computes the pairwise W₁ distance matrix D (n × n) once;
2. statistic ``T = mean_{between pairs} D − mean_{within pairs} D`` (or the ratio
   between / within);
3. null: recompute T for permutations of the condition labels among runs (all of them when
   there are few, else ``n_permutations`` random ones drawn with ``seed``);
4. p-value ``(1 + #{T_perm ≥ T_obs}) / (1 + B)`` (the observed labelling counts as one of the
   permutations; with exact enumeration, B + 1 is the number of labellings);
5. effect size ``z = (T_obs − mean T_null) / sd T_null``;
6. verdict: "distinguishable at alpha" iff p ≤ alpha, else "not distinguishable at alpha".
   Not distinguishable is not a proof of conjugacy: it says the data cannot tell the two apart
   beyond their seed-to-seed variation.

:func:`matched_swap_test` reproduces the shuffle test of Redman et al. (2024) to show why it is
degenerate: swapping eigenvalues between two optimally matched sets keeps that matching
available at the same cost, so a shuffled distance can never exceed the observed one and its
"p-value" only counts ties.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from trainmap.koopman.distances import distance_matrix, optimal_matching

STATISTICS = ("difference", "ratio")


@dataclass
class PermutationTestResult:
    """Outcome of :func:`permutation_test`.

    Attributes:
        statistic: observed T (difference or ratio of mean between- and within-condition W₁).
        p_value: permutation p-value with the +1 correction, in (0, 1].
        effect_size: (T_obs − mean null) / sd null (0 when the null has no spread).
        between_mean, within_mean: mean W₁ between runs of different / the same condition.
        ratio: between_mean / within_mean (inf when within is 0).
        n_permutations: number of null labellings used (excluding the observed one).
        exact: True when every distinct labelling was enumerated.
        min_p_value: the smallest p-value this design can produce.
        alpha: significance level of the verdict.
        distinguishable: p_value <= alpha.
        verdict: a sentence with the numbers.
        rule: the decision rule in words.
        null: (n_permutations,) the null statistics.
        statistic_kind: "difference" or "ratio".
    """

    statistic: float
    p_value: float
    effect_size: float
    between_mean: float
    within_mean: float
    ratio: float
    n_permutations: int
    exact: bool
    min_p_value: float
    alpha: float
    distinguishable: bool
    verdict: str
    rule: str
    statistic_kind: str
    null: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        """JSON-able dict of everything but the null sample."""
        out = asdict(self)
        out.pop("null")
        return out


def _codes(labels: Sequence) -> np.ndarray:
    _, codes = np.unique(np.asarray([str(x) for x in labels]), return_inverse=True)
    return codes


def _stat(d: np.ndarray, codes: np.ndarray, iu: tuple[np.ndarray, np.ndarray], kind: str) -> tuple[float, float, float]:
    same = codes[iu[0]] == codes[iu[1]]
    vals = d[iu]
    within = float(vals[same].mean())
    between = float(vals[~same].mean())
    if kind == "difference":
        return between - within, between, within
    return (between / within if within > 0 else math.inf), between, within


def _labellings(codes: np.ndarray, n_permutations: int, rng: np.random.Generator) -> tuple[list[np.ndarray], bool]:
    """Distinct relabellings of the runs (excluding the observed one), exact when few."""
    n = codes.size
    counts = np.bincount(codes)
    total = math.factorial(n)
    for c in counts:
        total //= math.factorial(int(c))
    if total - 1 <= n_permutations:
        out = []
        for perm in _multiset_assignments(counts):
            if not np.array_equal(perm, codes):
                out.append(perm)
        return out, True
    return [rng.permutation(codes) for _ in range(n_permutations)], False


def _multiset_assignments(counts: np.ndarray):
    """Every assignment of group codes to n positions with the given group sizes."""
    n = int(counts.sum())
    if len(counts) == 2:
        for pos in itertools.combinations(range(n), int(counts[0])):
            lab = np.ones(n, dtype=np.int64)
            lab[list(pos)] = 0
            yield lab
        return
    for perm in sorted(set(itertools.permutations(np.repeat(np.arange(len(counts)), counts)))):
        yield np.asarray(perm)


def permutation_test(
    spectra_or_distances: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence,
    n_permutations: int = 9999,
    seed: int = 0,
    alpha: float = 0.05,
    statistic: str = "difference",
    fold_conjugates: bool = False,
) -> PermutationTestResult:
    """Permutation test of "same dynamics" over runs.

    Args:
        spectra_or_distances: either n spectra (complex arrays, one per run) or a precomputed
            (n, n) symmetric distance matrix.
        labels: (n,) condition of each run; at least two conditions, each with >= 2 runs
            (within-condition distances need pairs).
        n_permutations: random relabellings when there are more distinct labellings than this;
            otherwise all labellings are enumerated (exact test).
        seed: seed of the random relabellings.
        alpha: significance level of the verdict.
        statistic: ``"difference"`` (between − within) or ``"ratio"`` (between / within).
        fold_conjugates: passed to the W₁ distance when spectra are given.

    Returns:
        A :class:`PermutationTestResult`.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise ValueError(f"n_permutations (--n-permutations) must be an integer >= 1, got {n_permutations}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha (--alpha) must lie strictly between 0 and 1, got {alpha}")
    arr = spectra_or_distances
    if isinstance(arr, np.ndarray) and arr.ndim == 2 and arr.shape[0] == arr.shape[1] and np.isrealobj(arr) \
            and np.allclose(arr, arr.T) and np.allclose(np.diag(arr), 0):
        d = np.asarray(arr, dtype=np.float64)
    else:
        d = distance_matrix(list(arr), fold_conjugates=fold_conjugates)
    codes = _codes(labels)
    n = d.shape[0]
    if codes.size != n:
        raise ValueError(f"{codes.size} labels for {n} runs; give one condition label per run")
    counts = np.bincount(codes)
    if counts.size < 2:
        raise ValueError("labels name a single condition; the test compares at least two")
    if counts.min() < 2:
        raise ValueError(f"every condition needs at least 2 runs (seeds) for within-condition "
                         f"distances; got group sizes {counts.tolist()}. Record more seeds")
    iu = np.triu_indices(n, k=1)
    t_obs, between, within = _stat(d, codes, iu, statistic)
    rng = np.random.default_rng(seed)
    perms, exact = _labellings(codes, int(n_permutations), rng)
    null = np.asarray([_stat(d, p, iu, statistic)[0] for p in perms], dtype=np.float64)
    finite = np.isfinite(null)
    scale = max(abs(t_obs), 1e-300) if math.isfinite(t_obs) else 1.0
    ge = int(np.sum(null >= t_obs - 1e-12 * scale)) if math.isfinite(t_obs) else int(np.sum(~finite))
    p = (1 + ge) / (1 + len(null))
    sd = float(null[finite].std()) if finite.any() else 0.0
    effect = (t_obs - float(null[finite].mean())) / sd if sd > 0 and math.isfinite(t_obs) else 0.0
    ratio = between / within if within > 0 else math.inf
    distinguishable = p <= alpha
    rule = (f"distinguishable iff the permutation p-value <= alpha = {alpha:g}; the statistic is "
            f"mean between-condition minus mean within-condition W1 distance"
            if statistic == "difference" else
            f"distinguishable iff the permutation p-value <= alpha = {alpha:g}; the statistic is "
            f"the ratio of mean between- to mean within-condition W1 distance")
    word = "distinguishable (not conjugate)" if distinguishable else "not distinguishable"
    verdict = (f"{word} at alpha={alpha:g}: p={p:.4g} ({'exact' if exact else 'Monte Carlo'}, "
               f"{len(null)} relabellings), between/within W1 = {between:.4g}/{within:.4g}, "
               f"effect size z={effect:.3g}")
    return PermutationTestResult(
        statistic=float(t_obs), p_value=float(p), effect_size=float(effect),
        between_mean=between, within_mean=within, ratio=float(ratio),
        n_permutations=len(null), exact=exact, min_p_value=1.0 / (1 + len(null)) if not exact
        else _min_exact_p(d.shape[0], counts),
        alpha=alpha, distinguishable=bool(distinguishable), verdict=verdict, rule=rule,
        statistic_kind=statistic, null=null,
    )


def _min_exact_p(n: int, counts: np.ndarray) -> float:
    total = math.factorial(n)
    for c in counts:
        total //= math.factorial(int(c))
    # with two equal groups, swapping the labels wholesale gives the same statistic
    sym = 2 if len(counts) == 2 and counts[0] == counts[1] else 1
    return sym / total


def conjugacy_test(
    spectra_a: Sequence[np.ndarray],
    spectra_b: Sequence[np.ndarray],
    **kwargs,
) -> PermutationTestResult:
    """Permutation test between two conditions, each given as a list of per-run spectra.

    Keyword arguments go to :func:`permutation_test`.
    """
    spectra = list(spectra_a) + list(spectra_b)
    labels = ["A"] * len(spectra_a) + ["B"] * len(spectra_b)
    return permutation_test(spectra, labels, **kwargs)


def matched_swap_test(a: np.ndarray, b: np.ndarray, n_shuffles: int = 100, seed: int = 0) -> dict:
    """The published shuffle test, kept to document its degeneracy.

    Eigenvalues are optimally matched, then each matched pair is swapped between the two sets
    with probability 1/2 and W₁ recomputed. The matching that pairs each swapped couple again
    costs exactly the observed W₁, so every shuffled distance is <= the observed one, and the
    published "p-value" ``mean(W_obs <= W_shuffled)`` only measures how often the optimum ties.

    Returns:
        ``{"observed": W, "shuffled": (n_shuffles,) array, "p_value": fraction of shuffles with
        W_shuffled >= W_obs, "max_excess": max(W_shuffled − W_obs)}`` (max_excess <= 0 up to
        rounding, always).
    """
    a = np.asarray(a, dtype=np.complex128)
    b = np.asarray(b, dtype=np.complex128)
    perm, w_obs = optimal_matching(a, b)
    rng = np.random.default_rng(seed)
    shuffled = np.empty(n_shuffles)
    for k in range(n_shuffles):
        flip = rng.random(a.size) < 0.5
        a2 = np.where(flip, b[perm], a)
        b2 = np.where(flip, a, b[perm])
        shuffled[k] = optimal_matching(a2, b2)[1]
    return {"observed": w_obs, "shuffled": shuffled,
            "p_value": float(np.mean(shuffled >= w_obs - 1e-12 * max(w_obs, 1e-300))),
            "max_excess": float(np.max(shuffled - w_obs))}
