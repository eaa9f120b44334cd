"""Narrow vs wide MLPs (Redman et al. 2024, §4.2): is the early training of input→h→10 ReLU
networks (no bias) conjugate across widths h?

SGD (lr 0.1, batch 60) for 1,000 steps, the output-layer weights (10 h numbers) recorded at
every step are the observables; the number of delays is scaled with h so the embedded dimension
is about ``embed_dim`` for every width; DMD keeps 10 eigenvalues; one spectrum per seed. The
UCI digits (64 inputs) are used by default; MNIST (784 inputs) is read from a local .npz with
arrays ``x_train, y_train`` (and optionally ``x_test, y_test``), as Keras's ``mnist.npz``.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
import optax

from trainmap.data import Dataset, load_digits
from trainmap.koopman.experiments._common import pairs_by_group, progress_iter, summarize_test
from trainmap.koopman.experiments.training import accuracy, stack_inits, train_and_record
from trainmap.models import mlp
from trainmap.recipe import cross_entropy, epoch_batches
from trainmap.results import check_folder, mode_of


def load_mnist_npz(path: str | Path) -> Dataset:
    """MNIST from a local .npz (keys ``x_train, y_train`` and optionally ``x_test, y_test``).

    Images are flattened and scaled to [0, 1] (divided by 255 when stored as integers).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no MNIST file at {path}; pass a local .npz with x_train and y_train")
    with np.load(path, allow_pickle=False) as z:
        missing = {"x_train", "y_train"} - set(z.files)
        if missing:
            raise ValueError(f"{path} lacks arrays {sorted(missing)}; it has {z.files}")
        arrays = {k: z[k] for k in z.files}

    def prep(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1).astype(np.float32)
        return x / 255.0 if x.max() > 1.5 else x

    x_tr, y_tr = prep(arrays["x_train"]), arrays["y_train"].astype(np.int32)
    if "x_test" in arrays:
        x_te, y_te = prep(arrays["x_test"]), arrays["y_test"].astype(np.int32)
    else:
        x_te, y_te = x_tr[:0], y_tr[:0]
    return Dataset(x_tr, y_tr, x_te, y_te, int(y_tr.max()) + 1)


def delays_for(width: int, num_classes: int, embed_dim: int) -> int:
    """Delays n so that ``num_classes * width * (n + 1)`` is closest to ``embed_dim`` (n >= 0)."""
    return max(0, int(round(embed_dim / (num_classes * width))) - 1)


def train_width(data: Dataset, width: int, seeds: Sequence[int], steps: int, lr: float,
                batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train one width for every seed; seed s sets both the initialisation and the data order.

    Returns:
        (output weights (S, steps + 1, 10 h), losses (S, steps), accuracies (S, steps + 1, 2):
        train and test accuracy after each step).
    """
    d_in = int(np.prod(data.x_train.shape[1:]))
    model = mlp((d_in, width, data.num_classes), activation="relu", bias=False)
    per_epoch = len(data.x_train) // batch_size
    epochs = math.ceil(steps / per_epoch)
    batches = np.stack([epoch_batches(len(data.x_train), batch_size, epochs, int(s))[:steps] for s in seeds])
    params0 = stack_inits(model.init, list(seeds))
    x = data.x_train.reshape(len(data.x_train), -1)
    x_te = data.x_test.reshape(len(data.x_test), -1) if len(data.x_test) else x[:1]
    y_te = data.y_test if len(data.x_test) else data.y_train[:1]
    recs, losses, mets = train_and_record(
        model.apply, cross_entropy, optax.sgd(lr), params0, x, data.y_train, batches, steps,
        record=lambda p: p[1]["w"].T.reshape(-1),  # output layer, (10, h) row-major
        metrics=lambda p: jnp.stack([accuracy(model.apply(p, jnp.asarray(x)), jnp.asarray(data.y_train)),
                                     accuracy(model.apply(p, jnp.asarray(x_te)), jnp.asarray(y_te))]),
    )
    return recs, losses, mets


def run(out: Any = None, widths: Sequence[int] = (5, 10, 40), seeds: Sequence[int] = tuple(range(10)),
        steps: int = 1000, lr: float = 0.1, batch_size: int = 60, embed_dim: int = 400, rank: int = 10,
        mnist: str | None = None, n_permutations: int = 9999, alpha: float = 0.05,
        control_delays: int | None = 3, progress: bool = True, overwrite: bool = False) -> dict:
    """Train every width for every seed, fit one spectrum per run, test all width pairs.

    ``control_delays`` repeats the tests with the same number of delays for every width (the
    scaled delays of the main analysis change the embedding together with the width); None
    skips the control.

    Returns:
        The summary dict (and writes a results folder when ``out`` is given).
    """
    mode = mode_of(overwrite=overwrite)
    if out is not None:  # refuse a folder before the work, not after
        check_folder(out, mode, kind="koopman-mlp-width")
    from trainmap.koopman.conjugacy import permutation_test
    from trainmap.koopman.distances import distance_matrix
    from trainmap.koopman.dmd import DMD

    data = load_mnist_npz(mnist) if mnist else load_digits()
    spectra: dict[int, list[np.ndarray]] = {}
    pooled: dict[int, np.ndarray] = {}
    losses: dict[int, np.ndarray] = {}
    accs: dict[int, np.ndarray] = {}
    control: dict[int, list[np.ndarray]] = {}
    delays = {h: delays_for(h, data.num_classes, embed_dim) for h in widths}
    for h in progress_iter(list(widths), "training widths", progress):
        recs, loss, acc = train_width(data, h, seeds, steps, lr, batch_size)
        losses[h], accs[h] = loss, acc
        spectra[h] = [DMD(rank=rank, delays=delays[h]).fit(recs[i]).eigenvalues_ for i in range(len(seeds))]
        pooled[h] = DMD(rank=rank, delays=delays[h]).fit(recs).eigenvalues_
        if control_delays is not None:
            control[h] = [DMD(rank=rank, delays=control_delays).fit(recs[i]).eigenvalues_ for i in range(len(seeds))]
    all_spec = [s for h in widths for s in spectra[h]]
    labels = [f"h={h}" for h in widths for _ in seeds]
    dmat = distance_matrix(all_spec)
    tests = {}
    for a, b in itertools.combinations(widths, 2):
        idx = [i for i, lab in enumerate(labels) if lab in (f"h={a}", f"h={b}")]
        tests[f"h={a} vs h={b}"] = permutation_test(dmat[np.ix_(idx, idx)], [labels[i] for i in idx],
                                                    n_permutations=n_permutations, seed=0, alpha=alpha)
    summary: dict = {
        "data": "mnist (local npz)" if mnist else "digits (64 inputs, 1,600 training images)",
        "delays": {f"h={h}": delays[h] for h in widths},
        "embedded_dim": {f"h={h}": data.num_classes * h * (delays[h] + 1) for h in widths},
        "final_batch_loss_mean": {f"h={h}": float(losses[h][:, -20:].mean()) for h in widths},
        "final_train_accuracy_mean": {f"h={h}": float(accs[h][:, -1, 0].mean()) for h in widths},
        "final_test_accuracy_mean": {f"h={h}": float(accs[h][:, -1, 1].mean()) for h in widths},
    }
    for k, t in tests.items():
        summary[k] = summarize_test(t)
    summary["test_rule"] = next(iter(tests.values())).rule
    if control:
        cspec = [s_ for h in widths for s_ in control[h]]
        cmat = distance_matrix(cspec)
        ctrl = {}
        for a, b in itertools.combinations(widths, 2):
            idx = [i for i, lab in enumerate(labels) if lab in (f"h={a}", f"h={b}")]
            t = permutation_test(cmat[np.ix_(idx, idx)], [labels[i] for i in idx],
                                 n_permutations=n_permutations, seed=0, alpha=alpha)
            ctrl[f"h={a} vs h={b}"] = {"p_value": t.p_value, "between_mean": t.between_mean,
                                       "within_mean": t.within_mean, "distinguishable": t.distinguishable}
        summary[f"equal_delays_control (delays={control_delays} for every width)"] = ctrl
    summary["warnings"] = []
    if out is not None:
        _write(out, dict(widths=list(widths), seeds=list(seeds), steps=steps, lr=lr, batch_size=batch_size,
                         embed_dim=embed_dim, rank=rank, mnist=mnist, n_permutations=n_permutations,
                         alpha=alpha, observables="output-layer weights, every step", bias=False,
                         activation="relu", optimizer="sgd"),
               summary, spectra, pooled, dmat, labels, tests, losses, mode=mode)
    return summary


def _write(out, config, summary, spectra, pooled, dmat, labels, tests, losses, mode: str = "new") -> None:
    from trainmap.koopman import figures
    from trainmap.koopman.results import ragged, write_results

    widths = list(spectra)
    first = {f"h={h} (seed 0)": spectra[h][0] for h in widths}
    figs = {
        "spectra_seed0.png": figures.eigenvalue_figure(first, "DMD eigenvalues of one seed per width"),
        "spectra_all_seeds.png": figures.eigenvalue_figure({f"h={h}": spectra[h] for h in widths},
                                                           "DMD eigenvalues, all seeds"),
        "distance_matrix.png": figures.distance_matrix_figure(dmat, labels, "W1 between per-seed spectra", log=True),
        "distances_by_pair.png": figures.distance_bars_figure(pairs_by_group(dmat, labels),
                                                              "within-width vs between-width W1"),
        "loss.png": figures.curves_figure(np.arange(1, losses[widths[0]].shape[1] + 1),
                                          {f"h={h}": losses[h] for h in widths}, "step", "batch loss",
                                          "training loss (mean, 25-75% band over seeds)", logy=True),
    }
    for k, t in tests.items():
        name = "null_" + k.replace("=", "").replace(" ", "_") + ".png"
        figs[name] = figures.null_figure(t.null, t.statistic, f"{k}: permutation null", "between - within W1")
    captions = {
        "spectra_seed0.png": "Eigenvalues near 1 dominate; compare where the widths' clusters sit.",
        "spectra_all_seeds.png": "Seed-to-seed spread of each width's eigenvalues: the scale the test compares against.",
        "distance_matrix.png": "Block structure (small within-width blocks) means widths are distinguishable.",
        "distances_by_pair.png": "Within-width (a | a) against between-width (a | b) W1; black bars are means.",
        "loss.png": "All widths train; the narrow net is slower.",
    }
    arrays = {f"eigenvalues_h{h}": ragged(spectra[h]) for h in widths}
    arrays.update({f"pooled_eigenvalues_h{h}": pooled[h] for h in widths})
    arrays["distance_matrix"] = dmat
    arrays.update({f"losses_h{h}": losses[h] for h in widths})
    write_results(out, config, summary, arrays, figs, captions, kind="koopman-mlp-width", mode=mode)
