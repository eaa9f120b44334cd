"""Experiment 7 — a linearised explanation of the bulk: the null space of the output Jacobian.

Let F(θ): (N·C, P) be the stacked Jacobian ∂f(x_n)/∂θ of the network's outputs over training
inputs. In the linearised (NTK) picture, every gradient step moves θ inside the row space of F,
so a perturbation of θ₀ lying in the null space of F along the whole trajectory is carried
through training unchanged: σ = 1 and u = v, i.e. a bulk direction. This experiment measures how
much of the actual bulk that explains: it compares the bulk (dimension k) with the k
eigenvectors of smallest eigenvalue of the output Gram matrix G = FᵀF at θ₀, and of the
trajectory Gram Σ_t G(θ_t) / tr G(θ_t) over points along training.

Outputs are the logits centred over classes by default (softmax cross-entropy ignores a shift
common to all classes, so that direction never receives gradient).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from trainmap._io import atomic_save_npy
from trainmap.jacobian.experiments import _common as C
from trainmap.jacobian.experiments import plots
from trainmap.jacobian.precision import precision_context
from trainmap.jacobian.regions import REGIONS, JacobianSVD, Thresholds, region_mask
from trainmap.recipe import Recipe

CAPTIONS = {
    "output_gram_spectrum.png": "Eigenvalues of the output Gram matrix FᵀF (stacked ∂f(x)/∂θ over "
                                "training inputs) at θ₀ and summed along the trajectory, relative "
                                "to the largest. The dashed line marks where the last k (= bulk "
                                "size) eigenvalues begin: the 'null space' compared with the bulk.",
    "null_bulk_cosines.png": "Cosines of the principal angles between the bulk and the k-dimensional "
                             "near-null space of the output Jacobian (θ₀ and trajectory), with a "
                             "random pair of k-subspaces for reference.",
}


def _jacobian_fn(recipe: Recipe, center: bool) -> Any:
    """Jitted ``(theta (P,), x (b, ...)) -> (b, C, P)`` output Jacobians (built once, reused)."""

    def f(t: jax.Array, xi: jax.Array) -> jax.Array:
        o = recipe.apply(recipe.unravel(t), xi[None])[0]
        return o - jnp.mean(o) if center else o

    return jax.jit(jax.vmap(jax.jacrev(f), in_axes=(None, 0)))


def output_gram(
    recipe: Recipe,
    theta: Any,
    x: Any,
    *,
    center: bool = True,
    block: int = 64,
    dtype: Any = np.float64,
    _fn: Any = None,
) -> np.ndarray:
    """G = FᵀF with F the stacked output Jacobian ∂f(x_n)/∂θ over the inputs x.

    Args:
        recipe: supplies ``apply`` and ``unravel``; theta: (P,) parameters.
        x: (N, ...) inputs.
        center: centre the outputs over classes first (f − mean_c f).
        block: inputs per compiled Jacobian block.
        dtype: precision of F and G (float64 default: the near-null eigenvalues matter).

    Returns:
        (P, P) symmetric positive semi-definite NumPy array.
    """
    dt = np.dtype(dtype)
    with precision_context(dt):
        th = jnp.asarray(theta, dtype=dt)
        xs = jnp.asarray(x, dtype=dt)
        N = xs.shape[0]
        b = max(1, min(block, N))
        jac = _fn if _fn is not None else _jacobian_fn(recipe, center)
        G = np.zeros((th.shape[0], th.shape[0]), dtype=dt)
        for s in range(0, N, b):
            chunk = xs[s: s + b]
            pad = b - chunk.shape[0]
            if pad:
                chunk = jnp.concatenate([chunk, jnp.zeros((pad, *chunk.shape[1:]), dt)])
            F = np.asarray(jac(th, chunk))[: b - pad].reshape(-1, th.shape[0])
            G += F.T @ F
    return G


def trajectory_points(recipe: Recipe, theta0: Any, n_points: int) -> np.ndarray:
    """(n_points, P) parameters at evenly spaced steps 0 … T along the training run."""
    T = recipe.num_steps
    n_points = max(1, int(n_points))
    if n_points == 1:
        return np.asarray(theta0)[None]
    rec = recipe.run(jnp.asarray(theta0), record_every=1 if T < n_points else max(1, T // (n_points - 1)))
    params = np.asarray(rec.params)
    pick = np.unique(np.round(np.linspace(0, len(params) - 1, n_points)).astype(int))
    return params[pick]


@C.jax_recipe_only
def linearized_explanation(
    recipe: Recipe,
    theta0: Any,
    out_dir: str | Path,
    *,
    dec: JacobianSVD | None = None,
    inputs: Any = None,
    n_inputs: int | None = 512,
    n_points: int = 5,
    center: bool = True,
    null_rtol: float = 1e-10,
    seed: int = 0,
    thresholds: Thresholds = Thresholds(),
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare the bulk with the (near-)null space of the training data's output Jacobian.

    Args:
        recipe, theta0: the run; out_dir: results folder.
        dec: the Jacobian's SVD/spectrum at θ₀ (computed when None).
        inputs: (N, ...) inputs stacked into F (default: the training inputs).
        n_inputs: random subset size of ``inputs`` (None: all; the Gram costs O(N·C·P²)).
        n_points: trajectory points (θ₀ … θ_T, evenly spaced) in the trajectory Gram.
        center: centre the logits over classes.
        null_rtol: eigenvalues ≤ null_rtol·λ_max count as exactly null.
        seed: seed of the input subset.

    Returns:
        Summary: k (bulk size), P, baseline k/P, and for "theta0" and "trajectory": overlap of
        the bulk with the k-dimensional near-null space (mean cos²), its excess over chance,
        the exact null dimension, the fraction of the exact null space inside the bulk
        ("null_in_bulk"), and the median Rayleigh quotient vᵀGv/λ_mean of each region's v_i.

    Arrays: ``gram_eigs_theta0.npy`` / ``gram_eigs_trajectory.npy`` (P,) ascending,
    ``cosines_theta0.npy`` / ``cosines_trajectory.npy`` (k,).
    """
    t = C.Timer()
    out = C.prepare_folder(out_dir, resume=resume, overwrite=overwrite)
    if resume and (done := C.finished(out)):
        return done
    if dec is None:
        dec = C.jacobian_spectrum(recipe, theta0, thresholds=thresholds, progress=progress)
    x = np.asarray(recipe.x if inputs is None else inputs)
    if n_inputs is not None and n_inputs < len(x):
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), n_inputs, replace=False))]
    P = recipe.num_params
    bulk = dec.basis("bulk").astype(np.float64)
    k = bulk.shape[1]
    if k == 0:
        raise C.ExperimentError("the bulk is empty; nothing to compare (check the thresholds)")
    points = trajectory_points(recipe, theta0, n_points)
    grams: dict[str, np.ndarray] = {}
    G_traj = np.zeros((P, P))
    fn = _jacobian_fn(recipe, center)
    for i in C.progress_iter(range(len(points)), "output Gram along the trajectory", progress):
        G = output_gram(recipe, points[i], x, center=center, _fn=fn)
        if i == 0:
            grams["theta0"] = G.copy()
        tr = np.trace(G)
        G_traj += G / tr if tr > 0 else G
    grams["trajectory"] = G_traj
    R1 = C.random_orthonormal(P, k, seed + 17, np.float64)
    R2 = C.random_orthonormal(P, k, seed + 18, np.float64)
    cosines = {"random pair": C.principal_cosines(R1, R2)}
    eigs = {}
    res: dict[str, Any] = {}
    for name, G in grams.items():
        w, E = scipy.linalg.eigh(G, driver="evd", check_finite=False)  # ascending
        N = E[:, :k]
        eigs[name] = w
        atomic_save_npy(out / f"gram_eigs_{name}.npy", w)
        ov = C.overlap(bulk, N)
        cos = C.principal_cosines(bulk, N)
        cosines[name] = cos
        atomic_save_npy(out / f"cosines_{name}.npy", cos)
        wmax = max(float(w[-1]), 1e-300)
        n_null = int(np.sum(w <= null_rtol * wmax))
        null_in_bulk = C.overlap(bulk, E[:, :n_null]) if n_null else None
        lam_mean = max(float(np.mean(w)), 1e-300)
        rq = {}
        for r in REGIONS:
            idx = np.flatnonzero(region_mask(dec.codes, r))
            if idx.size:  # at most 256 evenly spaced directions per region keep this cheap
                idx = idx[np.unique(np.linspace(0, idx.size - 1, min(256, idx.size)).astype(int))]
                Vr = dec.Vt[idx].astype(np.float64)
                rq[r] = float(np.median(np.einsum("ip,ip->i", Vr @ G, Vr) / lam_mean))
            else:
                rq[r] = None
        res[name] = {"overlap": ov, "excess_over_chance": (ov - k / P) / (1 - k / P) if k < P else None,
                     "exact_null_dim": n_null, "null_in_bulk": null_in_bulk,
                     "median_rayleigh_over_mean_eig": rq}
        del E
    summary: dict[str, Any] = {"k": k, "num_params": P, "baseline": k / P, "n_inputs": int(len(x)),
                               "n_points": int(len(points)), "center": center,
                               "random_pair_overlap": C.overlap(R1, R2), **res, "wall_time_s": t()}
    summary["finding"] = _finding(summary)
    plots.gram_figure(out, eigs, k)
    plots.cosine_histogram(out, cosines, "null_bulk_cosines.png",
                           f"bulk vs near-null space of F, k = {k}")
    cfg = {**C.recipe_config(recipe), **(config or {}), "experiment": "linearized",
           "n_inputs": int(len(x)), "n_points": int(len(points)), "center": center,
           "null_rtol": null_rtol, "seed": seed, "thresholds": C.thresholds_config(dec.thresholds)}
    return C.finish(out, cfg, summary, CAPTIONS)


def _finding(s: Mapping[str, Any]) -> dict[str, Any]:
    """Three verdicts on the trajectory overlap: ≥ 0.9 "the bulk is (nearly) the null space";
    excess over chance ≥ 0.5 "largely"; otherwise "only partly"."""
    best = max(("theta0", "trajectory"), key=lambda n: s[n]["overlap"])
    ov, ex = s[best]["overlap"], s[best]["excess_over_chance"] or 0.0
    if ov >= 0.9:
        verdict = "the bulk is (nearly) the null space of the output Jacobian"
    elif ex >= 0.5:
        verdict = "the bulk largely coincides with the near-null space of the output Jacobian"
    else:
        verdict = "the near-null space of the output Jacobian explains the bulk only partly"
    stmt = (f"{verdict}: overlap at θ₀ {s['theta0']['overlap']:.3f}, along the trajectory "
            f"{s['trajectory']['overlap']:.3f} (k = {s['k']}, random {s['baseline']:.3f}); exact null "
            f"space {s['trajectory']['exact_null_dim']} dims, of which a fraction "
            f"{s['trajectory']['null_in_bulk'] if s['trajectory']['null_in_bulk'] is not None else float('nan'):.3f} "
            "lies in the bulk")
    return {"claim": "the bulk is (nearly) the null space of the training data's output Jacobian",
            "holds": bool(ov >= 0.9), "verdict": verdict, "statement": stmt}
