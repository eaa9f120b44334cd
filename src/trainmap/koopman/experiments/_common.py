"""Helpers shared by the experiment modules."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from trainmap._progress import progress_iter  # noqa: F401  (re-exported for the experiments)
from trainmap.koopman.conjugacy import PermutationTestResult


def summarize_test(t: PermutationTestResult) -> dict:
    """The headline numbers of a permutation test, for summary.json."""
    return {"p_value": t.p_value, "statistic": t.statistic, "effect_size": t.effect_size,
            "between_mean": t.between_mean, "within_mean": t.within_mean, "ratio": t.ratio,
            "exact": t.exact, "n_permutations": t.n_permutations, "min_p_value": t.min_p_value,
            "distinguishable": t.distinguishable, "verdict": t.verdict}


def pairs_by_group(d: np.ndarray, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Upper-triangle distances grouped as ``"a|a"`` (within) and ``"a|b"`` (between)."""
    groups: dict[str, list[float]] = {}
    n = len(labels)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = sorted((labels[i], labels[j]))
            groups.setdefault(f"{a} | {b}", []).append(float(d[i, j]))
    return {k: np.asarray(v) for k, v in groups.items()}
