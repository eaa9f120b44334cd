"""CNN early training: Koopman spectra over successive windows of the first steps.

Redman et al. (2024, §4.3) find that the early training of CNNs passes through transitions
that show up as jumps in the Koopman spectrum. Here a LeNet-style CNN trains on the 8×8 UCI
digits with SGD; all parameters are recorded at every step, projected on 10 principal
components fitted on every seed and step, cut into (overlapping) windows, and each window gets
a spectrum (DMD with delays, pooled over seeds, and per seed). The heat map of log W₁ between
windows shows where the dynamics change; consecutive windows are also compared with the
permutation test over seeds.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
import optax

from trainmap.data import load_digits
from trainmap.koopman.experiments._common import progress_iter, summarize_test
from trainmap.koopman.experiments.training import accuracy, stack_inits, train_and_record
from trainmap.models import lenet
from trainmap.recipe import cross_entropy, epoch_batches
from trainmap.results import check_folder, mode_of


def windows(num_points: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Start/stop indices of windows of ``size`` recorded points every ``stride`` points."""
    if size > num_points:
        raise ValueError(f"window size {size} exceeds the {num_points} recorded points")
    return [(s, s + size) for s in range(0, num_points - size + 1, stride)]


def train_cnn(seeds: Sequence[int], steps: int, lr: float, momentum: float, batch_size: int,
              channels: Sequence[int] = (6, 16), hidden: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train the CNN for every seed and record all parameters at every step.

    Returns:
        (params (S, steps + 1, P), losses (S, steps), accuracies (S, steps + 1, 2) train/test).
    """
    data = load_digits(image_shape=True)
    model = lenet(channels=channels, hidden=hidden)
    per_epoch = len(data.x_train) // batch_size
    epochs = math.ceil(steps / per_epoch)
    batches = np.stack([epoch_batches(len(data.x_train), batch_size, epochs, int(s))[:steps] for s in seeds])
    params0 = stack_inits(model.init, list(seeds))
    from jax.flatten_util import ravel_pytree

    x_tr, y_tr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_te, y_te = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    opt = optax.sgd(lr, momentum=momentum or None)
    return train_and_record(
        model.apply, cross_entropy, opt, params0, data.x_train, data.y_train, batches, steps,
        record=lambda p: ravel_pytree(p)[0],
        metrics=lambda p: jnp.stack([accuracy(model.apply(p, x_tr), y_tr), accuracy(model.apply(p, x_te), y_te)]),
    )


def run(out: Any = None, seeds: Sequence[int] = tuple(range(6)), steps: int = 400, lr: float = 0.05,
        momentum: float = 0.9, batch_size: int = 64, window: int = 50, stride: int = 25, pca: int = 10,
        delays: int = 4, rank: int = 10, n_permutations: int = 9999, alpha: float = 0.05,
        progress: bool = True, overwrite: bool = False) -> dict:
    """Train, window, fit spectra, and compare windows.

    Returns:
        The summary dict (and writes a results folder when ``out`` is given).
    """
    mode = mode_of(overwrite=overwrite)
    if out is not None:  # refuse a folder before the work, not after
        check_folder(out, mode, kind="koopman-cnn-early")
    from trainmap.koopman.conjugacy import permutation_test
    from trainmap.koopman.distances import distance_matrix, wasserstein
    from trainmap.koopman.dmd import DMD
    from trainmap.koopman.observables import PCAObservable

    params, losses, accs = train_cnn(seeds, steps, lr, momentum, batch_size)
    obs = PCAObservable(pca).fit(params)
    z = obs.transform(params)  # (S, steps + 1, pca)
    wins = windows(z.shape[1], window, stride)
    pooled, per_seed = [], []
    for a, b in progress_iter(wins, "window spectra", progress):
        pooled.append(DMD(rank=rank, delays=delays).fit(z[:, a:b]).eigenvalues_)
        per_seed.append([DMD(rank=rank, delays=delays).fit(z[i, a:b]).eigenvalues_ for i in range(len(seeds))])
    dmat = distance_matrix(pooled)
    consecutive = np.array([dmat[i, i + 1] for i in range(len(wins) - 1)])
    tests = []
    for i in range(len(wins) - 1):
        spec = per_seed[i] + per_seed[i + 1]
        labels = ["early"] * len(seeds) + ["late"] * len(seeds)
        tests.append(permutation_test(spec, labels, n_permutations=n_permutations, seed=0, alpha=alpha))
    jump = int(np.argmax(consecutive))
    summary: dict = {
        "windows": [[int(a), int(b)] for a, b in wins],
        "window_steps": "window i covers recorded steps [start, stop)",
        "largest_change_between_windows": [jump, jump + 1],
        "largest_change_steps": [int(wins[jump][0]), int(wins[jump + 1][1])],
        "largest_consecutive_W1": float(consecutive[jump]),
        "median_consecutive_W1": float(np.median(consecutive)),
        "consecutive_W1": consecutive.tolist(),
        "consecutive_p_values": [t.p_value for t in tests],
        "consecutive_distinguishable": [t.distinguishable for t in tests],
        "first_vs_last_window_W1": float(wasserstein(pooled[0], pooled[-1])),
        "pca_explained_variance": float(obs.explained_variance_ratio_.sum()),
        "final_train_accuracy_mean": float(accs[:, -1, 0].mean()),
        "final_test_accuracy_mean": float(accs[:, -1, 1].mean()),
        "test_rule": tests[0].rule if tests else "",
        "warnings": [],
    }
    if tests:
        summary["largest_change_test"] = summarize_test(tests[jump])
    if out is not None:
        _write(out, dict(seeds=list(seeds), steps=steps, lr=lr, momentum=momentum, batch_size=batch_size,
                         window=window, stride=stride, pca=pca, delays=delays, rank=rank, model="lenet6-16-64-relu",
                         data="digits 8x8", n_permutations=n_permutations, alpha=alpha,
                         observables="all parameters -> PCA (fitted on all seeds and steps)"),
               summary, wins, pooled, per_seed, dmat, consecutive, losses, accs, mode=mode)
    return summary


def _write(out, config, summary, wins, pooled, per_seed, dmat, consecutive, losses, accs, mode: str = "new") -> None:
    from trainmap.koopman import figures
    from trainmap.koopman.results import ragged, write_results

    names = [f"{a}-{b}" for a, b in wins]
    plt = figures._plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    mids = [0.5 * (a + b) for a, b in wins]
    ax.plot([0.5 * (mids[i] + mids[i + 1]) for i in range(len(consecutive))], consecutive, "o-")
    ax.set_yscale("log")
    ax.set_xlabel("training step (between window centres)")
    ax.set_ylabel("W1(window i, window i+1)")
    ax.set_title("spectral change between consecutive windows")
    pick = {f"steps {names[i]}": pooled[i] for i in sorted({0, len(pooled) // 2, len(pooled) - 1})}
    figs = {
        "window_heatmap.png": figures.distance_matrix_figure(dmat, names, "log10 W1 between window spectra", log=True),
        "consecutive_change.png": fig,
        "window_spectra.png": figures.eigenvalue_figure(pick, "pooled DMD eigenvalues of three windows"),
        "accuracy.png": figures.curves_figure(np.arange(accs.shape[1]), {"train": accs[:, :, 0], "test": accs[:, :, 1]},
                                              "step", "accuracy", "CNN accuracy (mean, 25-75% band over seeds)"),
    }
    captions = {
        "window_heatmap.png": "Blocks of small distance are phases with similar dynamics; a sharp edge marks a transition.",
        "consecutive_change.png": "Peaks locate transitions in early training.",
        "window_spectra.png": "How the eigenvalues move from the first to the last window.",
        "accuracy.png": "Where the accuracy rises fastest, compare with the spectral transitions.",
    }
    arrays = {"window_eigenvalues": ragged(pooled), "window_distances": dmat, "consecutive_W1": consecutive,
              "per_seed_window_eigenvalues": np.stack([ragged(p) for p in per_seed]),
              "losses": losses, "accuracies": accs}
    write_results(out, config, summary, arrays, figs, captions, kind="koopman-cnn-early", mode=mode)
