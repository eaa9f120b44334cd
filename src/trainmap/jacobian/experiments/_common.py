"""Helpers shared by the training-Jacobian experiments.

* results folders: :func:`prepare_folder`, :func:`finish` (config, summary, captions);
* Jacobians: :func:`jacobian_svd` (the full SVD, through :func:`~trainmap.jacobian.analyze`,
  cached in a results folder) and :func:`jacobian_spectrum` (σ and right singular vectors only,
  from the eigendecomposition of JᵀJ — cheaper, enough for subspace overlaps);
* subspaces: :func:`overlap`, :func:`principal_cosines`, :func:`random_orthonormal`,
  :func:`closest_to_one`;
* training many runs at once: :func:`train_many` (``vmap`` over blocks of initial parameters).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from trainmap._io import load_npy, read_json
from trainmap._progress import progress_iter  # noqa: F401  (used by the experiments as C.progress_iter)
from trainmap.jacobian.regions import REGIONS, JacobianSVD, Thresholds, classify, region_mask
from trainmap.recipe import Recipe
from trainmap.results import FolderError, ResultsFolder, mode_of, open_results, reopen

MARKER = "summary.json"


def jax_recipe_only(fn: Callable) -> Callable:
    """Refuse a recipe of another backend (torch) with one line: these experiments vmap training
    over many θ₀ or rebuild the recipe (other data, a restricted parameterisation) with JAX."""
    import functools

    from trainmap.protocol import is_traceable

    @functools.wraps(fn)
    def wrapped(recipe: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_traceable(recipe):
            raise ValueError(f"{fn.__name__} needs a JAX recipe (it trains many runs at once with jax.vmap or "
                             f"rebuilds the run); a {getattr(recipe, 'backend', '?')} recipe supports exact_jacobian, "
                             "analyze and the matrix-free route")
        return fn(recipe, *args, **kwargs)

    return wrapped


class ExperimentError(RuntimeError):
    """An experiment cannot run with the given inputs (the message says how to fix it)."""


# ----------------------------------------------------------------------------- folders
def prepare_folder(out: str | Path, *, resume: bool = False, overwrite: bool = False,
                   kind: str = "jacobian-experiment") -> ResultsFolder:
    """Open an experiment's results folder (:func:`trainmap.results.open_results`).

    Args:
        out: the folder.
        resume: keep what is there (finished sub-results are reused by the caller).
        overwrite: remove what trainmap wrote at ``out`` first.
        kind: what the folder holds.
    """
    return open_results(out, mode_of(resume, overwrite), kind=kind)


def finish(out: ResultsFolder, config: Mapping[str, Any], summary: dict[str, Any],
           captions: Mapping[str, str]) -> dict[str, Any]:
    """Write config.json, captions.json and summary.json (last: it marks the folder finished).
    Returns the summary as written."""
    out.write_config(config)
    return out.finish(summary, captions=captions)


def finished(out: str | Path | ResultsFolder) -> dict[str, Any] | None:
    """The summary of a finished results folder, or None."""
    path = out.path if isinstance(out, ResultsFolder) else Path(out)
    try:
        return reopen(path).summary
    except FolderError:
        return None


class Timer:
    """Wall-clock seconds since creation: ``Timer()()``."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def recipe_config(recipe: Recipe) -> dict[str, Any]:
    """The recipe's JSON-able description plus P and T."""
    return {**recipe.config, "num_params": recipe.num_params, "num_steps": recipe.num_steps}


def thresholds_config(th: Thresholds) -> dict[str, float]:
    return {"stable_below": th.low, "chaotic_above": th.high}


# ----------------------------------------------------------------------------- Jacobians
def data_fingerprint(recipe: Recipe) -> str:
    """SHA-256 of the recipe's inputs, targets and batch order (detects a changed data set)."""
    import hashlib

    h = hashlib.sha256()
    for a in (recipe.x, recipe.y, recipe.batches):
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()


def _check_same_run(folder: Path, recipe: Recipe, theta0: Any, dtype: Any = None) -> None:
    """Stop if ``folder`` holds the Jacobian of another recipe, θ₀ or (``dtype``) precision."""
    th_path = folder / "theta0.npy"
    if th_path.exists():
        old = load_npy(th_path)
        new = np.asarray(theta0, dtype=old.dtype)
        if old.shape != new.shape or not np.array_equal(old, new):
            raise ExperimentError(
                f"{folder} holds the Jacobian of a different θ₀ (or model); point to the folder "
                "of this recipe's run, or delete it to recompute")
    cfg_path = folder / "config.json"
    if cfg_path.exists():
        cfg = read_json(cfg_path)
        if dtype is not None and "dtype" in cfg and cfg["dtype"] != np.dtype(dtype).name:
            raise ExperimentError(f"{folder} holds a {cfg['dtype']} Jacobian, but {np.dtype(dtype).name} "
                                  "was asked for; use another folder, or delete it to recompute")
        if "data_sha256" in cfg and cfg["data_sha256"] != data_fingerprint(recipe):
            raise ExperimentError(f"{folder} holds the Jacobian of a run on other data (inputs, "
                                  "labels or batch order); delete it or use another folder")
        if "num_steps" in cfg and int(cfg["num_steps"]) != recipe.num_steps:
            raise ExperimentError(f"{folder} holds the Jacobian of a {cfg['num_steps']}-step run, "
                                  f"this recipe has {recipe.num_steps} steps; use the matching folder")
        for key in ("hidden", "epochs", "lr", "optimizer", "batch_size", "seed", "activation"):
            if key in cfg and key in recipe.config and cfg[key] != _json_value(recipe.config[key]):
                raise ExperimentError(f"{folder} was computed with {key}={cfg[key]!r}, this recipe "
                                      f"has {key}={recipe.config[key]!r}; use the matching folder")
        if "recipe_fingerprint" in cfg and cfg["recipe_fingerprint"] != recipe.fingerprint():
            raise ExperimentError(f"{folder} holds the Jacobian of another training run (its model, loss, "
                                  "optimizer or learning rate differ); use the matching "
                                  "folder, or delete it to recompute")


def _json_value(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def jacobian_svd(
    recipe: Recipe,
    theta0: Any,
    folder: str | Path | None = None,
    *,
    eval_sets: Mapping[str, tuple[Any, Any]] | None = None,
    thresholds: Thresholds = Thresholds(),
    resume: bool = True,
    progress: bool = True,
    chunk_size: int | None = None,
    memory_budget_gb: float = 2.0,
    dtype: Any = np.float32,
) -> JacobianSVD:
    """The full SVD J = U diag(S) Vᵀ of the training Jacobian, computed once and cached.

    ``dtype`` (float32 or float64) is the precision of J and its SVD; a cached folder of another
    precision is refused.

    With ``folder`` the work is done by :func:`~trainmap.jacobian.analyze` (a complete results
    folder: figures, summary, resumable chunks) and a finished folder is reused after checking
    that it belongs to this recipe and θ₀. Without ``folder`` everything stays in memory.

    Returns:
        :class:`~trainmap.jacobian.JacobianSVD` with U, S, Vt: (P, P), (P,), (P, P).
    """
    from trainmap.jacobian.analysis import analyze, load_svd
    from trainmap.jacobian.exact import exact_jacobian
    from trainmap.jacobian.regions import svd

    if folder is None:
        J = exact_jacobian(recipe, theta0, chunk_size=chunk_size, memory_budget_gb=memory_budget_gb,
                           progress=progress, dtype=dtype)
        return svd(J, thresholds, dtype)
    folder = Path(folder)
    if finished(folder) is not None:
        _check_same_run(folder, recipe, theta0, dtype)
        dec = load_svd(folder)
        if dec.thresholds != thresholds:
            dec = JacobianSVD(dec.U, dec.S, dec.Vt, classify(dec.S, thresholds), dec.cos_uv, thresholds)
        return dec
    _check_same_run(folder, recipe, theta0, dtype)
    analyze(recipe, theta0, folder, eval_sets=eval_sets, thresholds=thresholds,
            chunk_size=chunk_size, memory_budget_gb=memory_budget_gb, dtype=dtype,
            resume=resume and folder.exists(), progress=progress)
    return load_svd(folder)


def spectrum_from_jacobian(J: np.ndarray, thresholds: Thresholds = Thresholds()) -> JacobianSVD:
    """σ and right singular vectors of J from the eigendecomposition of JᵀJ (no U).

    About 3× cheaper than a full SVD. σ is accurate to about 1e-7·σ_max²/σ in float32 (≈ 4e-5
    at σ ≈ 1 for σ_max ≈ 25), ample for region labels at |σ − 1| ≤ 0.1 but not for σ ≪ 1.

    Args:
        J: (P, P) training Jacobian.

    Returns:
        :class:`JacobianSVD` with ``U = None`` and ``cos_uv = None``; S descending, Vt (P, P).
    """
    J = np.asarray(J)
    if not np.all(np.isfinite(J)):
        raise ValueError("J contains NaN/inf; recompute it (the training run may have diverged)")
    G = J.T @ J
    w, V = scipy.linalg.eigh(G, driver="evd", overwrite_a=True, check_finite=False)
    S = np.sqrt(np.clip(w[::-1], 0.0, None)).astype(J.dtype)
    Vt = np.ascontiguousarray(V[:, ::-1].T)
    return JacobianSVD(None, S, Vt, classify(S, thresholds), None, thresholds)  # type: ignore[arg-type]


def jacobian_spectrum(
    recipe: Recipe,
    theta0: Any,
    folder: str | Path | None = None,
    *,
    thresholds: Thresholds = Thresholds(),
    resume: bool = True,
    progress: bool = True,
    chunk_size: int | None = None,
    memory_budget_gb: float = 2.0,
    dtype: Any = np.float32,
) -> JacobianSVD:
    """σ and Vᵀ of the training Jacobian (see :func:`spectrum_from_jacobian`), cached in ``folder``.

    ``dtype`` (float32 or float64) is the precision of J; a cached folder of another is refused.

    ``folder`` holds ``jacobian.npy``, ``singular_values.npy``, ``svd_Vt.npy``, ``theta0.npy``
    and ``summary.json`` (written last); the Jacobian's chunks are checkpointed in
    ``folder/checkpoint`` so a killed computation resumes. A folder written by
    :func:`~trainmap.jacobian.analyze` is read as well.
    """
    from trainmap.jacobian.exact import exact_jacobian

    if folder is None:
        J = exact_jacobian(recipe, theta0, chunk_size=chunk_size, memory_budget_gb=memory_budget_gb,
                           progress=progress, dtype=dtype)
        return spectrum_from_jacobian(J, thresholds)
    folder = Path(folder)
    if finished(folder) is not None:  # a spectrum folder, or a full analysis folder
        _check_same_run(folder, recipe, theta0, dtype)
        done = reopen(folder)
        S = done.load_array("singular_values")
        return JacobianSVD(None, S, done.load_array("svd_Vt"), classify(S, thresholds),  # type: ignore[arg-type]
                           None, thresholds)
    cfg = {**recipe_config(recipe), "data_sha256": data_fingerprint(recipe),
           "recipe_fingerprint": recipe.fingerprint(), "dtype": np.dtype(dtype).name}
    mode = "resume" if resume and folder.exists() else "new"
    if mode == "resume":
        _check_same_run(folder, recipe, theta0, dtype)
    out = open_results(folder, mode, kind="jacobian-spectrum", config=cfg)
    out.save_array("theta0", np.asarray(theta0))
    if out.resumed and out.has("jacobian.npy"):
        J = out.load_array("jacobian")
    else:
        J = exact_jacobian(recipe, theta0, chunk_size=chunk_size, memory_budget_gb=memory_budget_gb,
                           checkpoint_dir=out.dir("checkpoint"), resume=out.resumed, progress=progress,
                           dtype=dtype)
        out.save_array("jacobian", J)
    dec = spectrum_from_jacobian(J, thresholds)
    counts = {r: int(region_mask(dec.codes, r).sum()) for r in REGIONS}
    out.finish({"num_params": int(dec.S.size), "counts": counts, "sigma_max": float(dec.S[0])},
               arrays={"singular_values": dec.S, "svd_Vt": dec.Vt})
    return dec


# ----------------------------------------------------------------------------- subspaces
def closest_to_one(dec: JacobianSVD, k: int) -> np.ndarray:
    """Indices of the k singular values closest to 1 (smallest |σ − 1|), in index order."""
    return np.sort(np.argsort(np.abs(dec.S - 1.0), kind="stable")[:k])


def bulk_basis(dec: JacobianSVD, k: int | None = None) -> np.ndarray:
    """(P, k) right singular vectors of the bulk: the region (k=None) or the k closest to σ = 1."""
    if k is None:
        return dec.basis("bulk")
    return dec.Vt[closest_to_one(dec, k)].T


def random_orthonormal(P: int, k: int, seed: int, dtype: Any = np.float32) -> np.ndarray:
    """(P, k) Haar-random orthonormal basis (QR of a Gaussian matrix, sign-fixed), seeded."""
    if not 0 <= k <= P:
        raise ValueError(f"need 0 <= k <= P, got k={k}, P={P}")
    g = np.random.default_rng(seed).standard_normal((P, k))
    q, r = np.linalg.qr(g)
    q *= np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))
    return q.astype(dtype)


def overlap(A: np.ndarray, B: np.ndarray) -> float:
    """Mean cos² of the principal angles between span(A) and span(B).

    = ‖P_A P_B‖²_F / min(k_A, k_B) = ‖AᵀB‖²_F / min(k_A, k_B) for orthonormal bases
    A: (P, k_A), B: (P, k_B). 1 when one subspace contains the other, 0 when orthogonal;
    for independent random subspaces its mean is max(k_A, k_B) / P (:func:`random_overlap`).
    """
    A, B = np.asarray(A), np.asarray(B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0]:
        raise ValueError(f"bases must be (P, k) with the same P, got {A.shape} and {B.shape}")
    k = min(A.shape[1], B.shape[1])
    if k == 0:
        return float("nan")
    M = A.T @ B
    return float(np.sum(np.square(M, dtype=np.float64)) / k)


def random_overlap(k_a: int, k_b: int, P: int) -> float:
    """Expected :func:`overlap` of independent uniformly random subspaces: max(k_A, k_B) / P."""
    return max(k_a, k_b) / P


def principal_cosines(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Cosines of the min(k_A, k_B) principal angles between span(A) and span(B), descending.

    Computed as square roots of the eigenvalues of MᵀM (M = AᵀB of the smaller side), which is
    much cheaper than an SVD for large k.
    """
    A, B = np.asarray(A), np.asarray(B)
    if A.shape[1] > B.shape[1]:
        A, B = B, A
    M = (A.T @ B).astype(np.float64)  # (kA, kB), kA <= kB
    w = scipy.linalg.eigvalsh(M @ M.T, driver="evd", check_finite=False)
    return np.sqrt(np.clip(w[::-1], 0.0, 1.0))


# ----------------------------------------------------------------------------- training
def train_many(
    recipe: Recipe,
    thetas: Any,
    *,
    block: int = 32,
    progress: bool = False,
    description: str = "training",
) -> np.ndarray:
    """Train from many initial points at once: ``vmap`` of ``recipe.train`` over blocks.

    Args:
        recipe: the training run.
        thetas: (n, P) initial parameters; their dtype sets the computation's dtype (enable
            ``jax.enable_x64`` for float64).
        block: runs per compiled ``vmap`` call (memory grows linearly with it).

    Returns:
        (n, P) final parameters as NumPy.
    """
    from trainmap.protocol import is_traceable

    if not is_traceable(recipe):  # another backend: one run after the other
        thetas = np.asarray(thetas)
        res = np.stack([recipe.train(t) for t in progress_iter(thetas, description, progress, total=len(thetas))]) \
            if len(thetas) else np.zeros((0, recipe.num_params), thetas.dtype)
        return _check_finite_runs(res)
    thetas = jnp.asarray(thetas)
    n = thetas.shape[0]
    if n == 0:
        return np.zeros((0, recipe.num_params), dtype=np.dtype(thetas.dtype))
    b = max(1, min(block, n))
    fn = jax.jit(jax.vmap(recipe.train))
    out = []
    starts = range(0, n, b)
    for s in progress_iter(starts, description, progress, total=len(starts)):
        chunk = thetas[s: s + b]
        pad = b - chunk.shape[0]
        if pad:  # keep one compiled shape
            chunk = jnp.concatenate([chunk, jnp.repeat(chunk[-1:], pad, axis=0)])
        res = np.asarray(fn(chunk))
        out.append(res[: b - pad])
    return _check_finite_runs(np.concatenate(out))


def _check_finite_runs(res: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(res)):
        bad = int(np.sum(~np.all(np.isfinite(res), axis=1)))
        raise ExperimentError(f"{bad} of {res.shape[0]} training runs diverged (NaN/inf parameters); the "
                              "perturbations are too large for this learning rate")
    return res


def logits_many(apply: Callable, unravel: Callable, thetas: Any, x: Any) -> jax.Array:
    """Outputs of many parameter vectors on one input set: (n, P), (N, ...) -> (n, N, C)."""
    x = jnp.asarray(x, dtype=jnp.asarray(thetas).dtype)
    return jax.vmap(lambda th: apply(unravel(th), x))(jnp.asarray(thetas))


def loss_acc_many(recipe: Recipe, thetas: Any, x: Any, y: Any, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Cross-entropy loss and accuracy of many parameter vectors: (n, P) -> ((n,), (n,))."""
    from trainmap.protocol import is_traceable
    from trainmap.recipe import classification_metrics, cross_entropy

    if not is_traceable(recipe):  # another backend: its own predictions, one vector at a time
        m = [classification_metrics(recipe.predict(th, x), y) for th in np.asarray(thetas)]
        return np.asarray([r["loss"] for r in m]), np.asarray([r["accuracy"] for r in m])
    thetas = jnp.asarray(thetas)
    labels = jnp.asarray(y)

    def one_block(ths: jax.Array) -> tuple[jax.Array, jax.Array]:  # eager: small, no recompiles
        lg = logits_many(recipe.apply, recipe.unravel, ths, x)
        loss = jax.vmap(lambda z: cross_entropy(z, labels))(lg)
        acc = jnp.mean(jnp.argmax(lg, -1) == labels[None], axis=1)
        return loss, acc

    losses, accs = [], []
    for s in range(0, thetas.shape[0], block):
        lo, ac = one_block(thetas[s: s + block])
        losses.append(np.asarray(lo))
        accs.append(np.asarray(ac))
    return np.concatenate(losses), np.concatenate(accs)
