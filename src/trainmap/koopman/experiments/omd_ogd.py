"""Validation experiment: online mirror descent vs online gradient descent vs bisection.

Redman et al. (2024, §4.1), after Ghai, Lu & Hazan (2022, "Non-convex online learning via
algorithmic equivalence"): on the loss ``f(x) = Σ_i tan(x_i)`` over the box ``[0.01, 1]²``,

* OMD with the log-barrier mirror map ``R(x) = −Σ log x_i``: ``∇R(x⁺) = ∇R(x) − η ∇f(x)``, i.e.
  ``1/x⁺ = 1/x + η sec²(x)``, followed by the Bregman projection onto the box (for a separable
  mirror map on a box this is a coordinate-wise clip);
* OGD on ``u`` with ``x = exp(u)``: ``u⁺ = u − η eˣ sec²(eˣ)`` (x = eᵘ), Euclidean projection
  onto ``[log 0.01, 0]²``;

are conjugate to first order in η (the exponential reparameterisation turns the log-barrier
mirror step into a gradient step), while the bisection method (BM, root finding of f along a
segment) is a different dynamical system. Each method is observed in its own coordinates
(x for OMD, u for OGD, the iterate z for BM), with 4 delays and all 10 DMD eigenvalues.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainmap.results import check_folder, mode_of

LOWER, UPPER = 0.01, 1.0


def _grad_f(x: jax.Array) -> jax.Array:
    return 1.0 / jnp.cos(x) ** 2


def omd(x0: jax.Array, eta: float, steps: int) -> jax.Array:
    """Log-barrier online mirror descent. x0: (runs, 2). Returns (runs, steps, 2) iterates."""

    def step(x, _):
        y = -1.0 / x - eta * _grad_f(x)  # mirror step in the dual space
        nxt = jnp.clip(-1.0 / y, LOWER, UPPER)  # Bregman projection = clip (separable R)
        return nxt, nxt

    _, xs = jax.lax.scan(step, x0, None, length=steps - 1)
    return jnp.concatenate([x0[None], xs]).swapaxes(0, 1)


def ogd(u0: jax.Array, eta: float, steps: int) -> jax.Array:
    """Projected gradient descent on u with x = exp(u). u0: (runs, 2). Returns (runs, steps, 2)."""
    grad = jax.grad(lambda u: jnp.sum(jnp.tan(jnp.exp(u))))

    def step(u, _):
        nxt = jnp.clip(u - eta * jax.vmap(grad)(u), np.log(LOWER), np.log(UPPER))
        return nxt, nxt

    _, us = jax.lax.scan(step, u0, None, length=steps - 1)
    return jnp.concatenate([u0[None], us]).swapaxes(0, 1)


def bisection(a0: jax.Array, b0: jax.Array, steps: int) -> jax.Array:
    """Bisection for a root of f on the segment [a0, b0] (f(a0) < 0 < f(b0)).

    a0, b0: (runs, 2). Returns (runs, steps, 2) midpoints.
    """

    def f(z):
        return jnp.sum(jnp.tan(z), axis=-1, keepdims=True)

    def step(carry, _):
        a, b = carry
        z = 0.5 * (a + b)
        fz = f(z)
        a = jnp.where(fz < 0, z, a)
        b = jnp.where(fz > 0, z, b)
        return (a, b), 0.5 * (a + b)

    _, zs = jax.lax.scan(step, (a0, b0), None, length=steps - 1)
    return jnp.concatenate([(0.5 * (a0 + b0))[None], zs]).swapaxes(0, 1)


def grid_initial_conditions(n: int = 5) -> dict[str, np.ndarray]:
    """The published n×n grid: x0 ∈ [0.1, 0.9]², u0 = log x0, BM brackets a0, b0."""
    g = np.linspace(0.1, 0.9, n)
    x0 = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    ga = np.linspace(-4 / 3, -1 / 3, n)
    gb = np.linspace(1 / 7, 8 / 7, n)
    a0 = np.stack(np.meshgrid(ga, ga), -1).reshape(-1, 2)
    b0 = np.stack(np.meshgrid(gb, gb), -1).reshape(-1, 2)
    return {"x0": x0, "a0": a0, "b0": b0}


def random_initial_conditions(n: int, seed: int) -> dict[str, np.ndarray]:
    """n initial conditions drawn uniformly from the same ranges as the grid."""
    rng = np.random.default_rng(seed)
    return {"x0": rng.uniform(0.1, 0.9, (n, 2)), "a0": rng.uniform(-4 / 3, -1 / 3, (n, 2)),
            "b0": rng.uniform(1 / 7, 8 / 7, (n, 2))}


@partial(jax.jit, static_argnames=("steps",))
def _all_methods(x0: jax.Array, a0: jax.Array, b0: jax.Array, eta: jax.Array, steps: int) -> tuple:
    return omd(x0, eta, steps), ogd(jnp.log(x0), eta, steps), bisection(a0, b0, steps)


def simulate(ics: dict[str, np.ndarray], eta: float = 1e-2, steps: int = 100) -> dict[str, np.ndarray]:
    """Run the three methods from matching initial conditions, in float64.

    Returns:
        ``{"OMD": (runs, steps, 2) x-iterates, "OGD": (runs, steps, 2) u-iterates,
        "BM": (runs, steps, 2) bisection midpoints}``.
    """
    with jax.enable_x64(True):
        f64 = partial(jnp.asarray, dtype=jnp.float64)
        out = _all_methods(f64(ics["x0"]), f64(ics["a0"]), f64(ics["b0"]), f64(eta), int(steps))
        return {k: np.asarray(v, dtype=np.float64) for k, v in zip(("OMD", "OGD", "BM"), out)}


def run(out: Any = None, eta: float = 1e-2, steps: int = 100, grid: int = 5, delays: int = 4,
        rank: int = 10, replicates: int = 10, n_permutations: int = 9999, seed: int = 0,
        alpha: float = 0.05, progress: bool = True, overwrite: bool = False) -> dict:
    """The whole experiment; writes a results folder when ``out`` is given.

    Headline: W₁ between the spectra of the three methods fitted on the published grid, the
    ratio W(OGD, BM) / W(OMD, OGD), and permutation tests over ``replicates`` independent
    draws of ``grid²`` random initial conditions per method.

    Returns:
        The summary dict.
    """
    mode = mode_of(overwrite=overwrite)
    if out is not None:  # refuse a folder before the work, not after
        check_folder(out, mode, kind="koopman-omd-ogd")
    from trainmap.koopman.conjugacy import conjugacy_test, matched_swap_test
    from trainmap.koopman.distances import wasserstein
    from trainmap.koopman.dmd import DMD

    methods = ("OMD", "OGD", "BM")
    pairs = (("OMD", "OGD"), ("OGD", "BM"), ("OMD", "BM"))
    trajs = simulate(grid_initial_conditions(grid), eta, steps)
    with warnings.catch_warnings():
        # BM converges to machine precision within ~50 steps: its snapshots have numerical
        # rank 6 < 10, so its spectrum keeps 6 eigenvalues and W1 uses the transport solver
        warnings.simplefilter("ignore", UserWarning)
        fits = {m: DMD(rank=rank, delays=delays).fit(trajs[m]) for m in methods}
    eig = {m: fits[m].eigenvalues_ for m in methods}
    # the published analysis keeps all 10 eigenvalues, even those of directions at round-off
    eig_forced = {m: DMD(rank=rank, delays=delays, tol=0.0).fit(trajs[m]).eigenvalues_ for m in methods}
    w = {f"{a}-{b}": wasserstein(eig[a], eig[b]) for a, b in pairs}
    w_forced = {f"{a}-{b}": wasserstein(eig_forced[a], eig_forced[b]) for a, b in pairs}
    ratio = w["OGD-BM"] / w["OMD-OGD"]

    reps: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    # controls: the same systems seen through the other method's coordinates
    controls: dict[str, list[np.ndarray]] = {"OMD in log x": [], "OGD in exp u": []}
    it: Any = range(replicates)
    if progress:
        from rich.progress import track

        it = track(it, description="OMD/OGD/BM replicates")
    for r in it:
        sim = simulate(random_initial_conditions(grid * grid, seed * 1000 + r), eta, steps)
        for m in methods:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                reps[m].append(DMD(rank=rank, delays=delays).fit(sim[m]).eigenvalues_)
        controls["OMD in log x"].append(DMD(rank=rank, delays=delays).fit(np.log(sim["OMD"])).eigenvalues_)
        controls["OGD in exp u"].append(DMD(rank=rank, delays=delays).fit(np.exp(sim["OGD"])).eigenvalues_)
    tests = {f"{a}-{b}": conjugacy_test(reps[a], reps[b], n_permutations=n_permutations, seed=seed, alpha=alpha)
             for a, b in pairs}
    control_tests = {
        "OMD(x) vs OGD(exp u), same coordinates": conjugacy_test(
            reps["OMD"], controls["OGD in exp u"], n_permutations=n_permutations, seed=seed, alpha=alpha),
        "OMD(log x) vs OGD(u), same coordinates": conjugacy_test(
            controls["OMD in log x"], reps["OGD"], n_permutations=n_permutations, seed=seed, alpha=alpha),
        "OMD(x) vs OMD(log x), identical system": conjugacy_test(
            reps["OMD"], controls["OMD in log x"], n_permutations=n_permutations, seed=seed, alpha=alpha),
    }
    swap = matched_swap_test(eig_forced["OMD"], eig_forced["OGD"], n_shuffles=1000, seed=seed)
    swap_bm = matched_swap_test(eig_forced["OGD"], eig_forced["BM"], n_shuffles=1000, seed=seed)

    summary: dict = {
        "W_OMD_OGD": w["OMD-OGD"], "W_OGD_BM": w["OGD-BM"], "W_OMD_BM": w["OMD-BM"],
        "ratio_W_OGD_BM_over_W_OMD_OGD": ratio,
        "eigenvalues_kept": {m: int(len(eig[m])) for m in methods},
        "forced_rank_as_published": {"W_OMD_OGD": w_forced["OMD-OGD"], "W_OGD_BM": w_forced["OGD-BM"],
                                     "ratio": w_forced["OGD-BM"] / w_forced["OMD-OGD"]},
        "published": {"W_OMD_OGD": 0.008, "W_OGD_BM": 0.75},
        "reproduces_separation": bool(ratio > 20),
        "dmd_residual": {m: fits[m].score(trajs[m]) for m in methods},
    }
    for k, t in tests.items():
        summary[f"test_{k}"] = {"p_value": t.p_value, "statistic": t.statistic, "effect_size": t.effect_size,
                                "between_mean": t.between_mean, "within_mean": t.within_mean,
                                "distinguishable": t.distinguishable, "verdict": t.verdict}
    summary["test_rule"] = tests["OMD-OGD"].rule
    summary["coordinate_controls"] = {k: {"p_value": t.p_value, "between_mean": t.between_mean,
                                          "within_mean": t.within_mean, "distinguishable": t.distinguishable}
                                      for k, t in control_tests.items()}
    summary["coordinate_controls_note"] = (
        "DMD with 4 delays of a 2-D state is a finite dictionary: its spectral estimate depends on the "
        "coordinates the state is observed in. Replicates of these deterministic systems vary little, so "
        "the test can detect that bias; compare OMD and OGD in the same coordinates to remove it.")
    summary["published_shuffle_test"] = {
        "OMD-OGD": {"p_value": swap["p_value"], "max_shuffled_minus_observed": swap["max_excess"]},
        "OGD-BM": {"p_value": swap_bm["p_value"], "max_shuffled_minus_observed": swap_bm["max_excess"]},
        "note": "shuffled W never exceeds the observed W (max excess <= 0), so this p-value only counts ties",
    }
    summary["warnings"] = []
    if ratio <= 20:
        summary["warnings"].append(f"ratio W(OGD,BM)/W(OMD,OGD) = {ratio:.3g} <= 20: separation not reproduced")
    if out is not None:
        _write(out, dict(eta=eta, steps=steps, grid=grid, delays=delays, rank=rank, replicates=replicates,
                         n_permutations=n_permutations, seed=seed, alpha=alpha,
                         loss="f(x) = sum_i tan(x_i) on [0.01, 1]^2", precision="float64"),
               summary, trajs, eig, reps, tests, swap, mode=mode)
    return summary


def _write(out, config, summary, trajs, eig, reps, tests, swap, mode: str = "new") -> None:
    from trainmap.koopman import figures
    from trainmap.koopman.distances import distance_matrix
    from trainmap.koopman.results import ragged, write_results

    spectra = [s for m in ("OMD", "OGD", "BM") for s in reps[m]]
    labels = [m for m in ("OMD", "OGD", "BM") for _ in reps[m]]
    dmat = distance_matrix(spectra)
    figs = {
        "spectra.png": figures.eigenvalue_figure(eig, "DMD eigenvalues, 5x5 grid (4 delays, 10 eigenvalues)"),
        "trajectories.png": figures.trajectories_figure(trajs, "iterates from the grid (own coordinates)"),
        "replicate_distances.png": figures.distance_matrix_figure(dmat, labels, "W1 between replicate spectra", log=True),
        "null_OMD_OGD.png": figures.null_figure(tests["OMD-OGD"].null, tests["OMD-OGD"].statistic,
                                                "OMD vs OGD: permutation null", "between - within W1"),
        "null_OGD_BM.png": figures.null_figure(tests["OGD-BM"].null, tests["OGD-BM"].statistic,
                                               "OGD vs BM: permutation null", "between - within W1"),
        "published_shuffle_test.png": figures.null_figure(swap["shuffled"], swap["observed"],
                                                          "published shuffle test, OMD vs OGD", "W1 after swaps"),
    }
    captions = {
        "spectra.png": "OMD and OGD eigenvalues should overlap; BM's should sit elsewhere (zoom panel on the right).",
        "trajectories.png": "Each method in its own coordinates: x for OMD, u = log x for OGD, the midpoint for BM.",
        "replicate_distances.png": "W1 between spectra of independent initial-condition draws: an OMD/OGD block of small distances, BM apart.",
        "null_OMD_OGD.png": "OMD (in x) vs OGD (in u = log x): where the observed statistic falls in the null; see coordinate_controls in the summary for the same comparison in shared coordinates.",
        "null_OGD_BM.png": "Observed statistic far right of the null: OGD and BM are distinguishable.",
        "published_shuffle_test.png": "Every shuffled W1 is <= the observed one: the published test cannot reject.",
    }
    arrays = {f"eigenvalues_{m}": eig[m] for m in eig}
    arrays.update({f"replicate_eigenvalues_{m}": ragged(reps[m]) for m in reps})
    arrays["replicate_distances"] = dmat
    arrays.update({f"trajectory_{m}": trajs[m] for m in trajs})
    write_results(out, config, summary, arrays, figs, captions, kind="koopman-omd-ogd", mode=mode)
