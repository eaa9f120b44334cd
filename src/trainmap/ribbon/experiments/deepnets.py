"""The deep-network experiment: many digits classifiers, one joint InPCA embedding.

A small-scale version of Mao et al. (PNAS 2024): runs vary the architecture (MLP widths and
depths, a small CNN), optimizer (SGD, SGD with momentum, Adam), learning rate, batch size and
seed; predictions on the training set are recorded at log-spaced steps; all checkpoints, the
uniform prediction P₀ and the one-hot truth P* are embedded jointly with InPCA, and the
geodesic from P₀ to P* is projected into the embedding.

Runs that share architecture, optimizer and batch size are trained together: one jitted,
vmapped loop over (initialisation, learning rate, data order). Each finished group is saved,
so a killed experiment resumes where it stopped.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from trainmap._io import atomic_save_npy, load_npy, read_json
from trainmap._progress import progress as _progress
from trainmap.results import ResultsFolder, mode_of, open_results

ARCHITECTURES: dict[str, dict] = {
    "mlp32-relu": dict(kind="mlp", hidden=(32,), activation="relu"),
    "mlp128-tanh": dict(kind="mlp", hidden=(128,), activation="tanh"),
    "mlp64x2-relu": dict(kind="mlp", hidden=(64, 64), activation="relu"),
    "mlp32x3-gelu": dict(kind="mlp", hidden=(32, 32, 32), activation="gelu"),
    "cnn4-8": dict(kind="cnn", channels=(4, 8), hidden=32, activation="relu"),
}
LEARNING_RATES: dict[str, tuple[float, ...]] = {
    "sgd": (0.05, 0.2),
    "momentum": (0.01, 0.05),
    "adam": (0.001, 0.004),
}


@dataclass(frozen=True)
class DeepNetsConfig:
    """Grid of the experiment (the product of all lists is the set of runs).

    Attributes:
        architectures: names from :data:`ARCHITECTURES`.
        optimizers: ``"sgd"``, ``"momentum"`` (0.9) or ``"adam"``.
        lr: learning rates per optimizer.
        batch_sizes: minibatch sizes.
        seeds: seeds (initialisation and data order).
        num_steps: optimizer steps per run (same for every run).
        checkpoints: about this many log-spaced recorded steps (plus step 0).
        n_train: training-set size (the probe set is the training set).
        components: InPCA components kept.
    """

    architectures: Sequence[str] = tuple(ARCHITECTURES)
    optimizers: Sequence[str] = ("sgd", "momentum", "adam")
    lr: dict = field(default_factory=lambda: {k: list(v) for k, v in LEARNING_RATES.items()})
    batch_sizes: Sequence[int] = (32, 128)
    seeds: Sequence[int] = (0, 1)
    num_steps: int = 1000
    checkpoints: int = 24
    n_train: int = 1600
    components: int = 10

    def runs(self) -> list[dict]:
        """Every run as a dict (architecture, optimizer, lr, batch_size, seed, group)."""
        out = []
        for arch, opt, bs in itertools.product(self.architectures, self.optimizers, self.batch_sizes):
            for lr, seed in itertools.product(self.lr[opt], self.seeds):
                out.append(dict(architecture=arch, optimizer=opt, lr=float(lr), batch_size=int(bs),
                                seed=int(seed), group=f"{arch}_{opt}_b{bs}"))
        return out


def _model(arch: str, d_in: int, classes: int) -> Any:
    from trainmap.models import lenet, mlp

    spec = ARCHITECTURES.get(arch)
    if spec is None:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    if spec["kind"] == "mlp":
        return mlp((d_in, *spec["hidden"], classes), activation=spec["activation"])
    return lenet((8, 8, 1), channels=spec["channels"], hidden=spec["hidden"], num_classes=classes,
                 activation=spec["activation"])


def _base_optimizer(name: str) -> Any:
    """The optimizer at unit learning rate; the per-run rate multiplies its updates."""
    from trainmap.optimizers import make_optimizer

    if name not in ("sgd", "momentum", "adam"):
        raise ValueError(f"unknown optimizer {name!r}; use 'sgd', 'momentum' or 'adam'")
    return make_optimizer("adam" if name == "adam" else "sgd", 1.0, 1,
                          momentum=0.9 if name == "momentum" else 0.0, schedule="constant", eps_root=0.0)


def _per_run_lr() -> Any:
    """An optax transform scaling updates by a learning rate kept in its state (one per run when
    the runs are vmapped; :func:`train_group` sets it)."""
    import jax
    import jax.numpy as jnp
    import optax

    def init(params: Any) -> Any:
        return jnp.ones((), jnp.float32)

    def update(updates: Any, lr: Any, params: Any = None) -> tuple:
        return jax.tree_util.tree_map(lambda u: lr * u, updates), lr

    return optax.GradientTransformation(init, update)


def train_group(arch: str, optimizer: str, batch_size: int, lrs: Sequence[float], seeds: Sequence[int],
                x: np.ndarray, y: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train runs of one architecture/optimizer/batch size together and record predictions.

    One :class:`~trainmap.recipe.Recipe` (the optimizer at unit rate, then each run's rate)
    trains every run at once with :meth:`~trainmap.recipe.Recipe.run_many`.

    Args:
        lrs, seeds: (G,) learning rate and seed of each run in the group.
        x: (N, 64) training inputs (also the probe set); y: (N,) labels.
        steps: (R,) increasing recorded steps, the last one = number of steps T.

    Returns:
        ((G, R, N, C) float32 softmax predictions, (G,) final training accuracy).
    """
    import jax
    import jax.numpy as jnp
    import optax
    from jax.flatten_util import ravel_pytree

    from trainmap.recipe import Recipe, cross_entropy, epoch_batches

    classes = int(y.max()) + 1
    model = _model(arch, x.shape[1], classes)
    T = int(steps[-1])
    per_epoch = len(x) // batch_size
    epochs = -(-T // per_epoch)
    order = np.stack([epoch_batches(len(x), batch_size, epochs, shuffle_seed=s)[:T] for s in seeds])
    params0 = [model.init(jax.random.key(int(s))) for s in seeds]
    unravel = ravel_pytree(params0[0])[1]
    theta0 = jnp.stack([ravel_pytree(p)[0] for p in params0])
    recipe = Recipe(model.apply, cross_entropy, optax.chain(_base_optimizer(optimizer), _per_run_lr()),
                    x, y, order[0], unravel, int(theta0.shape[1]), {"architecture": arch})
    states = jax.vmap(recipe.init)(theta0)
    states = states._replace(opt_state=(states.opt_state[0], jnp.asarray(lrs, dtype=jnp.float32)))
    X = jnp.asarray(x)

    def predict(state: Any) -> Any:
        return jax.nn.softmax(model.apply(unravel(state.theta), X), -1).astype(jnp.float32)

    _, probs = recipe.run_many(theta0, steps, predict, batches=order, states=states)
    probs = np.asarray(probs, dtype=np.float32)
    acc = np.mean(np.argmax(probs[:, -1], -1) == y[None], axis=-1)
    return probs, acc


def run_experiment(out_dir: str | Path, config: DeepNetsConfig | None = None, progress: bool = True,
                   log: Callable[[str], None] = print, overwrite: bool = False) -> dict:
    """Train every run (resuming finished groups), embed, and write the results folder.

    Args:
        out_dir: results folder (``groups/`` holds per-group checkpoints for resuming).
        config: the grid (default :class:`DeepNetsConfig`).
        progress: show progress bars.
        log: where progress messages go.
        overwrite: start over in a folder of an earlier run (default: resume it).

    Returns:
        The summary dict (also written to summary.json).
    """
    from trainmap.data import load_digits
    from trainmap.record.predictions import log_spaced_steps
    from trainmap.record.store import PredictionTrajectory

    cfg = config or DeepNetsConfig()
    data = load_digits(test_size=1797 - cfg.n_train)
    x, y = data.x_train, data.y_train
    steps = log_spaced_steps(cfg.num_steps, cfg.checkpoints)
    runs = cfg.runs()
    config_json = dict(experiment="ribbon-deepnets", **_jsonable_config(cfg), recorded_steps=steps,
                       num_runs=len(runs), probe="digits training set", n_probe=len(x))
    exists = (Path(out_dir) / "manifest.json").exists()
    out = open_results(out_dir, mode_of(resume=exists and not overwrite, overwrite=overwrite),
                       kind="ribbon-deepnets", config=config_json)
    group_dir = out.dir("groups")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(r["group"], []).append(i)
    t0 = time.perf_counter()
    probs = np.zeros((len(runs), len(steps), len(x), data.num_classes), dtype=np.float32)
    acc = np.zeros(len(runs))
    bar = _progress(progress, len(groups), "training groups")
    with bar as advance:
        for name, idx in groups.items():
            f_probs, f_acc = group_dir / f"{name}.npy", group_dir / f"{name}_acc.npy"
            if f_probs.exists() and f_acc.exists():
                probs[idx], acc[idx] = load_npy(f_probs), load_npy(f_acc)
            else:
                r0 = runs[idx[0]]
                p, a = train_group(r0["architecture"], r0["optimizer"], r0["batch_size"],
                                   [runs[i]["lr"] for i in idx], [runs[i]["seed"] for i in idx], x, y, steps)
                atomic_save_npy(f_probs, p)
                atomic_save_npy(f_acc, a)
                probs[idx], acc[idx] = p, a
            advance()
    train_seconds = time.perf_counter() - t0
    finite = np.array([np.all(np.isfinite(probs[i])) for i in range(len(runs))])
    warnings = []
    if not finite.all():
        warnings.append(f"{int((~finite).sum())} runs diverged (NaN predictions) and were left out of the embedding")
    traj = PredictionTrajectory(probs, steps, [_label(r) for r in runs], y, {"runs": runs})
    traj.save(out.dir("predictions.zarr", create=False))
    log(f"trained {len(runs)} runs in {train_seconds:.0f}s; embedding...")
    summary = embed_experiment(out, probs[finite], y, [r for r, ok in zip(runs, finite) if ok], steps,
                               cfg.components, progress)
    summary.update(num_runs=len(runs), num_runs_embedded=int(finite.sum()), train_seconds=round(train_seconds, 1),
                   final_train_accuracy_mean=float(acc[finite].mean()) if finite.any() else None,
                   final_train_accuracy_min=float(acc[finite].min()) if finite.any() else None)
    summary["warnings"] = warnings + summary.get("warnings", [])
    return out.finish(summary)


def _label(r: dict) -> str:
    return f"{r['architecture']}|{r['optimizer']}|lr={r['lr']:g}|b={r['batch_size']}|seed={r['seed']}"


def _jsonable_config(cfg: DeepNetsConfig) -> dict:
    d = asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def embed_experiment(out: ResultsFolder, probs: np.ndarray, targets: np.ndarray, runs: list[dict],
                     steps: np.ndarray, components: int = 10, progress: bool = True) -> dict:
    """Joint InPCA of all checkpoints with P₀ and P*, geodesic, measures and figures.

    Args:
        out: the open results folder.
        probs: (runs, R, N, C) predictions.
        targets: (N,) true classes.
        runs: (runs,) run descriptions.
        steps: (R,) recorded steps.

    Returns:
        Summary dict.
    """
    from trainmap.ribbon.experiments.embed import joint_embedding, stress_summary
    from trainmap.ribbon.figures import deepnets_figures

    t0 = time.perf_counter()
    M, R, N, C = probs.shape
    je = joint_embedding(probs.reshape(M * R, N, C), targets, components, True, progress)
    emb, chi = je.model.embedding_, je.model.explained_stress_
    embed_seconds = time.perf_counter() - t0
    for name, arr in (("embedding", emb), ("eigenvalues", je.model.eigenvalues_), ("geodesic", je.geodesic),
                      ("progress", je.progress)):
        out.save_array(name, arr)
    holds = bool(chi[2] >= 0.7)
    verdict = (f"explained stress chi_3 = {chi[2]:.3f} (chi_2 = {chi[1]:.3f}); "
               + ("the low-dimensional picture holds here: three InPCA components carry at least 70% "
                  "of the stress, comparable to the ~71% in two dimensions reported for CIFAR-10"
                  if holds else
                  "the low-dimensional picture does NOT hold at the 70% level here"))
    deepnets_figures(out, emb, je.model.eigenvalues_, chi, je.geodesic, runs, steps, je.progress)
    return dict(**stress_summary(je.model), num_points=int(emb.shape[0]), num_checkpoints=int(R),
                progress_final_mean=float(je.progress.reshape(M, R)[:, -1].mean()),
                low_dimensional_picture_holds=holds, verdict=verdict, embed_seconds=round(embed_seconds, 1))


def load_summary(out_dir: str | Path) -> dict:
    """Read summary.json of a finished experiment."""
    return read_json(Path(out_dir) / "summary.json")
