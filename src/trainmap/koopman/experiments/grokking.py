"""Transformers with and without grokking (Redman et al. 2024, §4.4).

A one-layer transformer (d_model 128, 4 heads, d_mlp 512, no LayerNorm) learns ``a + b mod p``
from 30% of the pairs with full-batch AdamW (lr 1e-3, betas (0.9, 0.98)):

* *grokking*: weight decay 1.0 — it fits the training set quickly and generalises much later;
* *non-grokking*: initial weights scaled by 0.8, no weight decay, and the total weight norm
  reset to its initial value after every step (Liu et al. 2023, "Omnigrok") — no grokking:
  no long delay between fitting the training set and generalising.

Spectra come from the first 100 steps only: MLP output weights (d_mlp × d_model numbers)
recorded every step, PCA to 10 dimensions fitted on all runs of both conditions, 32 delays,
10 eigenvalues, one spectrum per seed, and the permutation test between conditions. A longer
run of each condition (optionally with a smaller p to fit a CPU budget) checks that the first
really groks (test accuracy passes 95% well after train accuracy does) and the second does not.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from trainmap.data import ModularData, modular_addition
from trainmap.koopman.experiments._common import progress_iter, summarize_test
from trainmap.koopman.experiments.training import accuracy, seeds_recipe, stack_inits, train_and_record
from trainmap.models import transformer
from trainmap.recipe import cross_entropy
from trainmap.results import check_folder, mode_of

CONDITIONS = ("grokking", "non-grokking")


def _tree_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(leaf ** 2) for leaf in jax.tree_util.tree_leaves(tree)))


def condition(name: str, lr: float = 1e-3, weight_decay: float = 1.0, init_scale: float = 0.8) -> dict:
    """Optimizer, initial scaling and post-update map of a condition.

    Returns:
        ``{"optimizer", "init_scale", "post_update"}``; post_update is None (grokking) or the
        norm constraint ``params * ‖params0‖ / ‖params‖`` (non-grokking).
    """
    if name == "grokking":
        opt = optax.adamw(lr, b1=0.9, b2=0.98, weight_decay=weight_decay)
        return {"optimizer": opt, "init_scale": 1.0, "post_update": None}
    if name == "non-grokking":
        opt = optax.adamw(lr, b1=0.9, b2=0.98, weight_decay=0.0)

        def constrain(params: Any, params0: Any) -> Any:
            scale = _tree_norm(params0) / _tree_norm(params)
            return jax.tree_util.tree_map(lambda a: a * scale, params)

        return {"optimizer": opt, "init_scale": init_scale, "post_update": constrain}
    raise ValueError(f"unknown condition {name!r}; use one of {CONDITIONS}")


def _model(p: int, d_model: int, n_heads: int, d_mlp: int):
    return transformer(p + 1, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, n_ctx=3)


def early_trajectories(data: ModularData, name: str, seeds: Sequence[int], steps: int = 100,
                       d_model: int = 128, n_heads: int = 4, d_mlp: int = 512,
                       weight_decay: float = 1.0, init_scale: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Train ``seeds`` runs of a condition for ``steps`` full-batch steps.

    Returns:
        (MLP output weights (S, steps + 1, d_mlp d_model) float32, accuracies (S, steps + 1, 2)
        train/test).
    """
    model = _model(data.p, d_model, n_heads, d_mlp)
    cond = condition(name, weight_decay=weight_decay, init_scale=init_scale)
    params0 = jax.tree_util.tree_map(lambda a: a * cond["init_scale"], stack_inits(model.init, list(seeds)))
    x_tr, y_tr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_te, y_te = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    recs, _, accs = train_and_record(
        model.apply, cross_entropy, cond["optimizer"], params0, data.x_train, data.y_train, None, steps,
        record=lambda p: p["mlp"]["w_out"].reshape(-1),
        post_update=cond["post_update"],
        metrics=lambda p: jnp.stack([accuracy(model.apply(p, x_tr), y_tr), accuracy(model.apply(p, x_te), y_te)]),
    )
    return recs, accs


def long_run(data: ModularData, name: str, seed: int = 0, max_steps: int = 20000, eval_every: int = 100,
             target: float = 0.95, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512,
             weight_decay: float = 1.0, init_scale: float = 0.8, progress: bool = True) -> dict:
    """Train one run for up to ``max_steps`` (stopping early ``2 * eval_every`` steps after test
    accuracy first exceeds ``target`` for the grokking condition), evaluating every ``eval_every``.

    Returns:
        ``{"steps": (K,), "train_acc": (K,), "test_acc": (K,), "train_loss": (K,),
        "weight_norm": (K,), "grok_step": first step with test acc > target or None}``.
    """
    model = _model(data.p, d_model, n_heads, d_mlp)
    cond = condition(name, weight_decay=weight_decay, init_scale=init_scale)
    opt, post = cond["optimizer"], cond["post_update"]
    params0 = jax.tree_util.tree_map(lambda a: a * cond["init_scale"], model.init(jax.random.key(int(seed))))
    x_tr, y_tr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_te, y_te = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    stacked = jax.tree_util.tree_map(lambda a: a[None], params0)
    recipe = seeds_recipe(model.apply, cross_entropy, opt, stacked, data.x_train, data.y_train, None,
                          eval_every, post)

    @jax.jit
    def block(state):
        state = recipe.advance(state, 0, eval_every)
        params = recipe.unravel(state.theta)
        mets = jnp.stack([accuracy(model.apply(params, x_tr), y_tr), accuracy(model.apply(params, x_te), y_te),
                          cross_entropy(model.apply(params, x_tr), y_tr), _tree_norm(params)])
        return state, mets

    state = recipe.init(ravel_pytree(params0)[0])
    rows, steps, grok, after = [], [], None, 0
    for k in progress_iter(range(max_steps // eval_every), f"long run ({name}, p={data.p})", progress):
        state, mets = block(state)
        mets = np.asarray(mets)
        rows.append(mets)
        steps.append((k + 1) * eval_every)
        if grok is None and mets[1] > target:
            grok = steps[-1]
        if grok is not None and name == "grokking":
            after += 1
            if after > 2:
                break
    arr = np.asarray(rows)
    return {"steps": np.asarray(steps), "train_acc": arr[:, 0], "test_acc": arr[:, 1], "train_loss": arr[:, 2],
            "weight_norm": arr[:, 3], "grok_step": grok}


def _first_above(steps: np.ndarray, acc: np.ndarray, threshold: float) -> int | None:
    idx = np.flatnonzero(acc > threshold)
    return int(steps[idx[0]]) if idx.size else None


def _delay(name: str, long: dict, eval_every: int, threshold: float = 0.95) -> dict:
    """Grokking = delayed generalisation: test accuracy passes ``threshold`` at least two
    evaluations after train accuracy does."""
    tr = _first_above(long["steps"], long["train_acc"], threshold)
    te = _first_above(long["steps"], long["test_acc"], threshold)
    delay = None if tr is None or te is None else te - tr
    return {f"{name}_train_acc_over_95pct_step": tr, f"{name}_test_acc_over_95pct_step": te,
            f"{name}_generalisation_delay_steps": delay,
            f"{name}_groks": bool(delay is not None and delay >= 2 * eval_every)}


def run(out: Any = None, p: int = 113, train_fraction: float = 0.3, seeds: Sequence[int] = tuple(range(5)),
        steps: int = 100, pca: int = 10, delays: int = 32, rank: int = 10, d_model: int = 128,
        n_heads: int = 4, d_mlp: int = 512, long_p: int | None = 59, long_train_fraction: float | None = 0.6,
        long_steps: int = 3000, eval_every: int = 250, n_permutations: int = 9999, alpha: float = 0.05,
        data_seed: int = 0, progress: bool = True, overwrite: bool = False) -> dict:
    """Early-training spectra of both conditions, the permutation test, and the long runs.

    Args:
        long_p: modulus of the long runs (None or 0 skips them); a smaller p than ``p`` keeps
            the CPU time modest and is reported in the summary.
        long_train_fraction: train fraction of the long runs (None: ``train_fraction``). The
            default 0.6 with p = 59 groks within ~1,000 steps; with 0.3 the test accuracy is
            still ~0.34 after 15,000 steps, too long for a CPU.

    Returns:
        The summary dict (and writes a results folder when ``out`` is given).
    """
    mode = mode_of(overwrite=overwrite)
    if out is not None:  # refuse a folder before the work, not after
        check_folder(out, mode, kind="koopman-grokking")
    from trainmap.koopman.conjugacy import permutation_test
    from trainmap.koopman.distances import distance_matrix, wasserstein
    from trainmap.koopman.dmd import DMD
    from trainmap.koopman.observables import PCAObservable

    data = modular_addition(p, train_fraction, seed=data_seed)
    recs, accs = {}, {}
    for name in progress_iter(list(CONDITIONS), f"first {steps} steps (p={p})", progress):
        recs[name], accs[name] = early_trajectories(data, name, seeds, steps, d_model, n_heads, d_mlp)
    obs = PCAObservable(pca, dtype=np.float32).fit([recs[c] for c in CONDITIONS])
    z = {c: obs.transform(recs[c]) for c in CONDITIONS}
    del recs
    spectra = {c: [DMD(rank=rank, delays=delays).fit(z[c][i]).eigenvalues_ for i in range(len(seeds))]
               for c in CONDITIONS}
    pooled = {c: DMD(rank=rank, delays=delays).fit(z[c]).eigenvalues_ for c in CONDITIONS}
    all_spec = spectra[CONDITIONS[0]] + spectra[CONDITIONS[1]]
    labels = [c for c in CONDITIONS for _ in seeds]
    dmat = distance_matrix(all_spec)
    test = permutation_test(dmat, labels, n_permutations=n_permutations, seed=0, alpha=alpha)
    summary: dict = {
        "p": p, "train_fraction": train_fraction, "n_seeds": len(seeds),
        "W1_pooled_grokking_vs_non": float(wasserstein(pooled[CONDITIONS[0]], pooled[CONDITIONS[1]])),
        "test": summarize_test(test),
        "test_rule": test.rule,
        "pca_explained_variance": float(obs.explained_variance_ratio_.sum()),
        f"train_accuracy_at_step_{steps}": {c: float(accs[c][:, -1, 0].mean()) for c in CONDITIONS},
        f"test_accuracy_at_step_{steps}": {c: float(accs[c][:, -1, 1].mean()) for c in CONDITIONS},
        "warnings": [],
    }
    longs: dict[str, dict] = {}
    if long_p:
        ldata = modular_addition(long_p, long_train_fraction or train_fraction, seed=data_seed)
        for c in CONDITIONS:
            longs[c] = long_run(ldata, c, seed=int(seeds[0]), max_steps=long_steps, eval_every=eval_every,
                                d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, progress=progress)
        summary["long_run"] = {
            "p": long_p, "train_fraction": long_train_fraction or train_fraction,
            "note": (f"long runs use p={long_p} and train fraction {long_train_fraction or train_fraction} "
                     f"instead of p={p} and {train_fraction}, to grok within a CPU budget"),
            **{f"{c}_final_test_accuracy": float(longs[c]["test_acc"][-1]) for c in CONDITIONS},
            **{f"{c}_final_train_accuracy": float(longs[c]["train_acc"][-1]) for c in CONDITIONS},
            **{f"{c}_steps": int(longs[c]["steps"][-1]) for c in CONDITIONS},
            **{k: v for c in CONDITIONS for k, v in _delay(c, longs[c], eval_every).items()},
        }
        lr_ = summary["long_run"]
        if not lr_["grokking_groks"]:
            summary["warnings"].append("the weight-decay run showed no delayed generalisation (grokking) "
                                       f"within {long_steps} steps")
        if lr_["non-grokking_groks"]:
            summary["warnings"].append("the norm-constrained run showed delayed generalisation (grokking)")
    if out is not None:
        _write(out, dict(p=p, train_fraction=train_fraction, seeds=list(seeds), steps=steps, pca=pca, delays=delays,
                         rank=rank, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, lr=1e-3, betas=[0.9, 0.98],
                         weight_decay={"grokking": 1.0, "non-grokking": 0.0}, init_scale_non_grokking=0.8,
                         long_p=long_p, long_train_fraction=long_train_fraction, long_steps=long_steps,
                         eval_every=eval_every, n_permutations=n_permutations, alpha=alpha, data_seed=data_seed,
                         observables="MLP output weights -> PCA(10) fitted on all runs of both conditions"),
               summary, spectra, pooled, dmat, labels, test, accs, longs, mode=mode)
    return summary


def _write(out, config, summary, spectra, pooled, dmat, labels, test, accs, longs, mode: str = "new") -> None:
    from trainmap.koopman import figures
    from trainmap.koopman.experiments._common import pairs_by_group
    from trainmap.koopman.results import ragged, write_results

    steps = np.arange(next(iter(accs.values())).shape[1])
    figs = {
        "spectra.png": figures.eigenvalue_figure({c: spectra[c] for c in CONDITIONS},
                                                 "DMD eigenvalues from the first steps, all seeds"),
        "distance_matrix.png": figures.distance_matrix_figure(dmat, labels, "W1 between per-seed spectra", log=True),
        "distances_by_pair.png": figures.distance_bars_figure(pairs_by_group(dmat, labels), "within vs between"),
        "null.png": figures.null_figure(test.null, test.statistic, "grokking vs non-grokking: permutation null",
                                        "between - within W1"),
        "early_accuracy.png": figures.curves_figure(steps, {f"{c} {k}": accs[c][:, :, j] for c in CONDITIONS
                                                            for j, k in enumerate(("train", "test"))},
                                                    "step", "accuracy", "accuracy during the analysed steps"),
    }
    captions = {
        "spectra.png": "Where the two conditions' eigenvalues sit relative to each other and to the unit circle.",
        "distance_matrix.png": "Small within-condition blocks and large off-diagonal blocks mean distinguishable dynamics.",
        "distances_by_pair.png": "Within-condition against between-condition W1; black bars are means.",
        "null.png": "The observed statistic against the permutation null over seeds.",
        "early_accuracy.png": "Both conditions start to fit the training set within the analysed window.",
    }
    arrays = {f"eigenvalues_{c}": ragged(spectra[c]) for c in CONDITIONS}
    arrays.update({f"pooled_eigenvalues_{c}": pooled[c] for c in CONDITIONS})
    arrays["distance_matrix"] = dmat
    arrays.update({f"early_accuracy_{c}": accs[c] for c in CONDITIONS})
    if longs:
        plt = figures._plt()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, c in enumerate(CONDITIONS):
            lr = longs[c]
            ax.plot(lr["steps"], lr["train_acc"], "-", color=figures.COLORS[i + 1], label=f"{c} train")
            ax.plot(lr["steps"], lr["test_acc"], "--", color=figures.COLORS[i + 1], label=f"{c} test")
            arrays[f"long_{c}"] = np.stack([lr["steps"], lr["train_acc"], lr["test_acc"], lr["train_loss"],
                                            lr["weight_norm"]])
        ax.axhline(0.95, color="0.5", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
        ax.set_title(f"long runs (p={summary['long_run']['p']})")
        figs["long_run_accuracy.png"] = fig
        captions["long_run_accuracy.png"] = ("Grokking: train accuracy saturates early and test accuracy passes "
                                             "95% much later; without grokking there is no such delay.")
    write_results(out, config, summary, arrays, figs, captions, kind="koopman-grokking", mode=mode)
