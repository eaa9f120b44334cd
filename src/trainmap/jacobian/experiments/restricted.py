"""Experiment 3 — restricted training: train only inside the span of k right singular vectors.

θ = θ₀ + B z with B: (P, k) orthonormal and z trained from 0 by the recipe's own optimizer,
loss and data order (:func:`restricted_recipe` builds that recipe for z). The k directions come
from the bulk (smallest |σ−1|), its complement (largest |σ−1|), the top-k (chaotic end), the
bottom-k (stable end), or a random k-subspace (control). All choices that share a k train
together in one ``vmap``.

Structure-aware optimizers (optax masks, ``multi_transform``) see z as one flat array; plain
SGD/momentum/Adam behave exactly as on θ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trainmap._io import atomic_save_npy
from trainmap.jacobian.experiments import _common as C
from trainmap.jacobian.experiments import plots
from trainmap.jacobian.precision import precision_context
from trainmap.jacobian.regions import JacobianSVD, Thresholds, region_mask
from trainmap.recipe import Recipe

CHOICES = ("bulk", "complement", "top", "bottom", "random")
CAPTIONS = {
    "restricted_loss.png": "Test loss after training only inside a k-dimensional subspace of right "
                           "singular vectors, against k. Expected: bulk-restricted training stays "
                           "near the initial loss (dotted); the others approach unrestricted "
                           "training (dashed). The vertical line marks the bulk's size.",
}


def restricted_recipe(recipe: Recipe, theta0: Any, B: Any) -> Recipe:
    """The recipe for z in θ = θ₀ + B z (same loss, optimizer, data and batch order).

    Args:
        recipe: the unrestricted run.
        theta0: (P,) the fixed origin θ₀.
        B: (P, k) basis of the subspace (orthonormal for the geometry to be preserved; any
            matrix works). B may be a traced JAX array, so this can be built inside ``vmap``.

    Returns:
        A :class:`Recipe` with ``num_params = k`` whose ``train(zeros(k))`` returns z_T; the
        final θ is θ₀ + B z_T (see :func:`restricted_final`).
    """
    B = jnp.asarray(B)
    if B.ndim != 2 or B.shape[0] != recipe.num_params:
        raise ValueError(f"B must be (P, k) with P = {recipe.num_params}, got {B.shape}")
    th0 = jnp.asarray(theta0)
    base_apply, unravel = recipe.apply, recipe.unravel

    def apply_z(z: jax.Array, x: jax.Array) -> jax.Array:
        return base_apply(unravel(th0.astype(z.dtype) + B.astype(z.dtype) @ z), x)

    return Recipe(apply_z, recipe.loss, recipe.optimizer, recipe.x, recipe.y, recipe.batches,
                  lambda z: z, int(B.shape[1]), {**recipe.config, "restricted_k": int(B.shape[1])})


def restricted_final(recipe: Recipe, theta0: Any, B: Any) -> jax.Array:
    """θ_T = θ₀ + B z_T of training restricted to span(B). B: (P, k) -> (P,). Jittable, vmappable."""
    B = jnp.asarray(B)
    th0 = jnp.asarray(theta0)
    z0 = jnp.zeros((B.shape[1],), dtype=th0.dtype)
    zT = restricted_recipe(recipe, th0, B).train(z0)
    return th0 + B.astype(th0.dtype) @ zT


def choose_basis(dec: JacobianSVD, choice: str, k: int, seed: int = 0) -> np.ndarray:
    """(P, k) orthonormal basis for a restricted run.

    choice: "bulk" (k smallest |σ−1|), "complement" (k largest |σ−1|), "top" (k largest σ),
    "bottom" (k smallest σ) or "random" (Haar-random, seeded by ``seed`` and k).
    """
    P = dec.S.size
    if not 1 <= k <= P:
        raise ValueError(f"k must be in [1, {P}], got {k}")
    dist = np.abs(dec.S.astype(np.float64) - 1.0)
    if choice == "bulk":
        idx = np.argsort(dist, kind="stable")[:k]
    elif choice == "complement":
        idx = np.argsort(-dist, kind="stable")[:k]
    elif choice == "top":
        idx = np.arange(k)
    elif choice == "bottom":
        idx = np.arange(P - k, P)
    elif choice == "random":
        return C.random_orthonormal(P, k, seed * 1_000_003 + k, dec.Vt.dtype)
    else:
        raise ValueError(f"unknown choice {choice!r}; use one of {CHOICES}")
    return np.ascontiguousarray(dec.Vt[np.sort(idx)].T)


def default_ks(P: int, bulk_count: int | None = None) -> list[int]:
    """k grid: 16, 64, 256, 1024 (those below P) plus the bulk size.

    Each step of a restricted run costs two (P × k) matrix-vector products, so large k dominate
    the cost; k = P (every choice spans everything, so all equal unrestricted training) is a
    useful check but costs as much as the rest of the grid together: pass it in ``ks``.
    """
    ks = {k for k in (16, 64, 256, 1024) if k < P}
    if bulk_count and bulk_count < P:
        ks.add(int(bulk_count))
    return sorted(ks) or [P]


@C.jax_recipe_only
def restricted_training(
    recipe: Recipe,
    theta0: Any,
    out_dir: str | Path,
    *,
    dec: JacobianSVD | None = None,
    eval_set: tuple[Any, Any] | None = None,
    ks: Sequence[int] | None = None,
    choices: Sequence[str] = CHOICES,
    seed: int = 0,
    dtype: Any = np.float32,
    thresholds: Thresholds = Thresholds(),
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Test loss of training restricted to k singular directions, per choice and k.

    Args:
        recipe, theta0: the run; out_dir: results folder.
        dec: the Jacobian's SVD (S and Vt used; computed when None).
        eval_set: (x, y) for the test loss/accuracy (default: the training data).
        ks: subspace dimensions (default :func:`default_ks`); values above P are dropped.
        choices: subset of :data:`CHOICES`.
        seed: seed of the random subspaces.
        dtype: precision of the runs.

    Returns:
        Summary: initial and unrestricted test loss, and per choice the test losses over ``ks``,
        and the fraction of the unrestricted loss reduction reached at the bulk's size
        ("at_bulk_k") and at the largest k < P ("at_max_k").

    Arrays: ``ks.npy`` (K,), ``test_loss.npy`` / ``test_accuracy.npy`` / ``train_loss.npy``
    (len(choices), K).
    """
    t = C.Timer()
    out = C.prepare_folder(out_dir, resume=resume, overwrite=overwrite)
    if resume and (done := C.finished(out)):
        return done
    bad = [c for c in choices if c not in CHOICES]
    if bad:
        raise ValueError(f"unknown choices {bad}; use a subset of {CHOICES}")
    if dec is None:
        dec = C.jacobian_svd(recipe, theta0, thresholds=thresholds, progress=progress)
    P = recipe.num_params
    bulk_count = int(region_mask(dec.codes, "bulk").sum())
    k_list = sorted({int(k) for k in (ks if ks is not None else default_ks(P, bulk_count)) if 1 <= int(k) <= P})
    if not k_list:
        raise ValueError(f"no k in [1, {P}] given")
    x_eval, y_eval = eval_set if eval_set is not None else (recipe.x, recipe.y)
    dt = np.dtype(dtype)
    nc, nk = len(choices), len(k_list)
    test_loss = np.full((nc, nk), np.nan)
    test_acc = np.full((nc, nk), np.nan)
    train_loss = np.full((nc, nk), np.nan)
    with precision_context(dt):
        th0 = jnp.asarray(theta0, dtype=dt)
        full = jax.jit(recipe.train)(th0)
        (init_l, full_l), _ = C.loss_acc_many(recipe, jnp.stack([th0, full]), x_eval, y_eval)
        run = jax.jit(jax.vmap(lambda B: restricted_final(recipe, th0, B)))
        for j, k in enumerate(C.progress_iter(k_list, "restricted training over k", progress)):
            Bs = jnp.asarray(np.stack([choose_basis(dec, c, k, seed) for c in choices]), dtype=dt)
            finals = run(Bs)
            finals = np.asarray(finals)
            ok = np.all(np.isfinite(finals), axis=1)
            lo, ac = C.loss_acc_many(recipe, np.where(ok[:, None], finals, 0.0).astype(dt), x_eval, y_eval)
            test_loss[:, j] = np.where(ok, lo, np.nan)
            test_acc[:, j] = np.where(ok, ac, np.nan)
            train_loss[:, j] = np.where(
                ok, C.loss_acc_many(recipe, np.where(ok[:, None], finals, 0.0).astype(dt),
                                    recipe.x, recipe.y)[0], np.nan)
            del Bs
    ks_arr = np.asarray(k_list)
    for name, arr in (("ks", ks_arr), ("test_loss", test_loss), ("test_accuracy", test_acc),
                      ("train_loss", train_loss)):
        atomic_save_npy(out / f"{name}.npy", arr)

    init_l, full_l = float(init_l), float(full_l)

    def frac(v: float) -> float | None:
        if not np.isfinite(v) or init_l == full_l:
            return None
        return (init_l - v) / (init_l - full_l)

    below = [j for j, k in enumerate(k_list) if k < P] or [nk - 1]
    j_max = below[-1]
    j_bulk = k_list.index(bulk_count) if bulk_count in k_list else None
    per_choice: dict[str, Any] = {}
    for i, c in enumerate(choices):
        per_choice[c] = {
            "test_loss": [None if not np.isfinite(v) else float(v) for v in test_loss[i]],
            "test_accuracy": [None if not np.isfinite(v) else float(v) for v in test_acc[i]],
            "improvement_at_max_k": frac(test_loss[i, j_max]),
            "improvement_at_bulk_k": frac(test_loss[i, j_bulk]) if j_bulk is not None else None,
        }
    summary: dict[str, Any] = {
        "ks": k_list, "max_k": k_list[j_max], "bulk_count": bulk_count,
        "test_loss_initial": init_l, "test_loss_unrestricted": full_l, "choices": per_choice,
        "wall_time_s": t(),
    }
    if "bulk" in choices and P in k_list:
        # k = P: every choice spans the whole space, so all should equal unrestricted training
        summary["max_abs_gap_at_k_equal_P"] = float(np.nanmax(np.abs(test_loss[:, k_list.index(P)] - full_l)))
    # the largest k on the grid at which bulk-restricted training stays near the initial loss
    stays = [k for j, k in enumerate(k_list)
             if "bulk" in per_choice and (frac(test_loss[list(choices).index("bulk"), j]) or 0.0) < 0.2]
    summary["bulk_stays_up_to_k"] = max(stays) if stays else None
    summary["finding"] = _finding(per_choice, k_list, k_list[j_max], summary["bulk_stays_up_to_k"])
    plots.restricted_figure(out, ks_arr, {c: test_loss[i] for i, c in enumerate(choices)},
                            init_l, full_l, bulk_count)
    cfg = {**C.recipe_config(recipe), **(config or {}), "experiment": "restricted", "ks": k_list,
           "choices": list(choices), "seed": seed, "dtype": dt.name,
           "thresholds": C.thresholds_config(dec.thresholds)}
    return C.finish(out, cfg, summary, CAPTIONS)


def _finding(per_choice: Mapping[str, Any], ks: Sequence[int], kmax: int,
             stays: int | None) -> dict[str, Any]:
    """Holds when, at the largest k < P (by default the bulk's size), bulk-restricted training
    achieves < 20% of the unrestricted loss reduction while every other choice achieves > 80%."""
    fr = {c: v["improvement_at_max_k"] for c, v in per_choice.items()}
    if "bulk" not in fr:
        return {"claim": "n/a", "holds": None, "statement": "bulk not among the choices"}
    others = {c: f for c, f in fr.items() if c != "bulk"}
    bulk_ok = fr["bulk"] is not None and fr["bulk"] < 0.2
    others_ok = all(f is not None and f > 0.8 for f in others.values())
    statement = f"at k = {kmax}, fraction of the unrestricted loss reduction: " + ", ".join(
        f"{c} {f:.2f}" if f is not None else f"{c} n/a" for c, f in fr.items())
    if stays is not None:
        j = list(ks).index(stays)
        rnd = per_choice.get("random")
        statement += (f"; bulk-restricted training stays below 20% up to k = {stays}")
        if rnd is not None and rnd["test_loss"][j] is not None:
            statement += f" (test loss {per_choice['bulk']['test_loss'][j]:.3g} vs random {rnd['test_loss'][j]:.3g})"
    return {"claim": "bulk-restricted training stays near the initial loss; the other subspaces "
                     "approach unrestricted training",
            "holds": bool(bulk_ok and others_ok), "bulk_holds": bool(bulk_ok),
            "others_hold": bool(others_ok), "statement": statement}
