"""One training run through all three lenses, and the views that join them.

:func:`analyze_run` trains the run once, recording the weight trajectory θ_t and the predictions
p_t(y|x) on a probe set, and writes one results folder:

* ``jacobian/``: the training Jacobian J = ∂θ_T/∂θ₀, its SVD and regions
  (:func:`trainmap.jacobian.analyze`; exact only: the joint views need the full right-singular basis);
* ``koopman/``: the DMD (Koopman) spectrum of the weight trajectory, on its leading principal
  components (:func:`trainmap.koopman.analysis.spectrum`);
* ``ribbon/``: the InPCA embedding of the prediction trajectory with the P₀ (uniform) and P*
  (truth) references (Mao et al. 2024);
* at the top, three views that join them (arrays, figures and numbers in ``summary.json``):

  1. **Where training moves.** c_t = Vᵀ(θ_t − θ₀) in the right-singular basis of J; for each region
     R the share of ‖θ_t − θ₀‖² in it, Σ_{i∈R} c_{t,i}² / ‖c_t‖², over t (``region_energy.npy``,
     (R_steps, 3): chaotic, bulk, stable). At t = T it is the change experiment of Scherlis & Belrose.
  2. **The Koopman spectrum of each region.** DMD of the trajectory's coordinates in each region
     (c_{t,i}, i ∈ R, on their leading principal components): eigenvalues λ near 1 are slow modes.
     ``eigenvalues_<region>.npy``; the summary gives |λ|_max per region. It asks whether the slow
     Koopman modes live in the chaotic subspace.
  3. **Predictions perturbed along each region.** Training restarted from θ₀ + ε v, v a seeded
     random unit vector in each region's subspace, its prediction trajectory embedded with InPCA
     jointly with the unperturbed one (``perturbed_embedding.npy``, (4, R_steps, k): base, chaotic,
     bulk, stable); the summary gives each run's final Bhattacharyya distance from the base run. It
     asks whether the bulk matters for the ribbon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from trainmap._progress import stage
from trainmap.jacobian.regions import REGIONS, region_mask
from trainmap.protocol import is_traceable
from trainmap.record.predictions import softmax
from trainmap.record.recorders import default_every, recorded_run
from trainmap.results import mode_of, open_results, reopen

CAPTIONS = {
    "perturbed_embedding.plotly.json": "The predictions' InPCA trajectory, unperturbed and restarted along "
                                       "each region (drag to rotate; click a legend entry to hide it).",
    "region_energy.png": "share of ‖θ_t − θ₀‖² in each region of J over training (the bulk's share is "
                         "the one to compare with its share of dimensions)",
    "region_spectra.png": "DMD eigenvalues of the trajectory restricted to each region: near 1 = slow modes",
    "perturbed_embedding.png": "InPCA of the predictions, unperturbed and restarted along each region",
}


def _region_energy(coords: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """coords: (R, P) = Vᵀ(θ_t − θ₀); codes: (P,) region codes -> (R, 3) shares in the order of
    :data:`~trainmap.jacobian.regions.REGIONS` (0 where θ_t = θ₀)."""
    sq = coords.astype(np.float64) ** 2
    total = np.maximum(sq.sum(1, keepdims=True), 1e-300)
    return np.stack([sq[:, region_mask(codes, r)].sum(1) for r in REGIONS], axis=1) / total


def analyze_run(
    recipe: Any,
    theta0: Any,
    out_dir: str | Path,
    *,
    probe: tuple[Any, Any] | None = None,
    eval_sets: Mapping[str, tuple[Any, Any]] | None = None,
    every: int | None = None,
    epsilon: float = 0.1,
    components: int = 5,
    seed: int = 0,
    memory_budget_gb: float = 2.0,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train once, look through the three lenses, join them (see the module docstring).

    Args:
        recipe: a classifier's training run: a JAX :class:`~trainmap.recipe.Recipe` or a PyTorch
            :func:`trainmap.torch.torch_recipe`.
        theta0: (P,) initial flat parameters.
        out_dir: results folder (created).
        probe: (x (N, ...), y (N,)) inputs whose predictions are recorded (default: the first 256
            training samples).
        eval_sets: passed to the Jacobian lens (default: the recipe's data).
        every: steps between recorded points (default: T // 50, at least 1).
        epsilon: size of the restarts θ₀ + ε v along each region (in units of ‖θ₀‖ / √P per
            coordinate: ε · ‖θ₀‖ overall).
        components: principal components for the DMD fits and InPCA dimensions.
        seed: seed of the perturbation directions.
        memory_budget_gb: the Jacobian engine's budget.
        resume, overwrite: see :mod:`trainmap.results`.
        progress: a line per stage and the Jacobian's progress bar.
        config: extra JSON-able settings recorded in config.json.

    Returns:
        The top-level summary (also ``summary.json``).
    """
    from trainmap.jacobian.analysis import analyze
    from trainmap.koopman.analysis import ObservableConfig, spectrum
    from trainmap.koopman.figures import eigenvalue_figure
    from trainmap.ribbon.distances import bhattacharyya
    from trainmap.ribbon.experiments.embed import joint_embedding, stress_summary

    theta0 = recipe.check_theta(theta0)
    T, P = recipe.num_steps, recipe.num_params
    if P * P * 4 * 4 > memory_budget_gb * 2**30:
        raise ValueError(f"J of {P:,} parameters (with its SVD, ~{16 * P * P / 2**30:.1f} GiB) exceeds "
                         f"--memory-gb {memory_budget_gb}; the joint views need the exact SVD, so raise the "
                         "budget or use `trainmap jacobian --method slq` for the spectrum alone")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    k = default_every(T, every)
    x_probe, y_probe = probe if probe is not None else (np.asarray(recipe.x)[:256], np.asarray(recipe.y)[:256])
    cfg = {**recipe.config, **(config or {}), "num_params": P, "num_steps": T, "every": k,
           "epsilon": epsilon, "components": components, "seed": seed, "probe_size": int(len(x_probe)),
           "memory_budget_gb": memory_budget_gb, "recipe_fingerprint": recipe.fingerprint()}
    folder = open_results(out_dir, mode_of(resume, overwrite), kind="analyze", config=cfg)

    with stage("training once, recording θ_t and predictions", progress):
        rec = recorded_run(recipe, theta0, k, x_probe)
        params = np.asarray(rec.params)  # (R, P)
        probs = softmax(rec.probe_outputs, dtype=np.float64)  # (R, N, C)
        steps = np.asarray(rec.steps)

    js = analyze(recipe, theta0, folder.dir("jacobian"), eval_sets=eval_sets, memory_budget_gb=memory_budget_gb,
                 resume=True, progress=progress)
    jdir = reopen(folder.path / "jacobian")  # the joint views read Vᵀ and the regions (checksums verified)
    Vt, codes = jdir.load_array("svd_Vt", mmap=True), jdir.load_array("regions")

    with stage("Koopman spectrum of the weight trajectory", progress):
        kdir = open_results(folder.dir("koopman"), "overwrite", kind="koopman",
                            config={"pca": components, "every": k})
        pca = max(1, min(components, len(steps) - 2))
        spec = spectrum(params[None], ObservableConfig(pca=pca), per_run=False)
        ksum = kdir.finish({"num_eigenvalues": int(spec.pooled.size), "abs_max": float(np.abs(spec.pooled).max()),
                            "dmd_residual": float(spec.score), "pca": pca},
                           arrays={"eigenvalues": spec.pooled},
                           figures={"eigenvalues.png": eigenvalue_figure({"weights": spec.pooled},
                                                                         title="DMD of θ_t")})

    with stage("InPCA of the prediction trajectory", progress):
        rdir = open_results(folder.dir("ribbon"), "overwrite", kind="ribbon", config={"components": components})
        emb = joint_embedding(probs, np.asarray(y_probe), components=components, references=True, progress=False)
        rsum = rdir.finish(stress_summary(emb.model), arrays={"inpca_embedding": emb.model.embedding_,
                                                              "inpca_eigenvalues": emb.model.eigenvalues_})

    with stage("joint views: regions × trajectory, regions × Koopman, regions × ribbon", progress):
        coords = (params - np.asarray(theta0)[None]) @ np.asarray(Vt, np.float64).T  # (R, P)
        energy = _region_energy(coords, codes)
        spectra: dict[str, np.ndarray] = {}
        for name in REGIONS:
            c = coords[:, region_mask(codes, name)]
            if c.shape[1] == 0:
                continue
            r = max(1, min(components, c.shape[1], len(steps) - 2))
            spectra[name] = spectrum(c[None], ObservableConfig(pca=r), per_run=False).pooled
        rng = np.random.default_rng(seed)
        scale = epsilon * float(np.linalg.norm(np.asarray(theta0)))
        starts, names = [], []
        for name in REGIONS:
            basis = np.asarray(Vt[region_mask(codes, name)])
            if basis.shape[0] == 0:
                continue
            v = rng.normal(size=basis.shape[0]) @ basis
            starts.append(np.asarray(theta0) + scale * v / np.linalg.norm(v))
            names.append(name)
        if is_traceable(recipe):  # all restarts in one vmapped program
            run_probs = jax.jit(jax.vmap(lambda th: recipe.run(th, k, probe=x_probe, record_params=False).probe_outputs))(
                jnp.asarray(np.stack(starts), theta0.dtype))
        else:
            run_probs = np.stack([recorded_run(recipe, th.astype(np.asarray(theta0).dtype), k, x_probe,
                                               record_params=False).probe_outputs for th in starts])
        pert = np.concatenate([probs[None], softmax(run_probs, dtype=np.float64)])  # (1 + n, R, N, C)
        n_runs, R = pert.shape[:2]
        joint = joint_embedding(pert.reshape(n_runs * R, *pert.shape[2:]), np.asarray(y_probe),
                                components=components, references=True, progress=False)
        pert_emb = joint.model.embedding_[: n_runs * R].reshape(n_runs, R, -1)
        final_dist = {name: float(bhattacharyya(pert[i + 1, -1], pert[0, -1]))
                      for i, name in enumerate(names)}
        figs = _figures(steps, energy, spectra, pert_emb, ["unperturbed", *names])
        if pert_emb.shape[-1] >= 3:  # the interactive view, one colour and one legend entry per restart
            from trainmap._io import atomic_write_bytes
            from trainmap.ribbon.figures import embedding_plotly_figure

            groups = ["unperturbed", *names]
            view = embedding_plotly_figure(list(pert_emb), groups,
                                           [[f"{g}, step {int(s)}" for s in steps] for g in groups])
            atomic_write_bytes(folder / "perturbed_embedding.plotly.json", view.to_json().encode())

    summary = {
        "num_params": P, "num_steps": T, "recorded_steps": int(len(steps)),
        "jacobian": {r: {"count": js[r]["count"], "fraction": js[r]["fraction"]} for r in REGIONS},
        "sigma_max": js["sigma_max"],
        "koopman": {"abs_max": ksum["abs_max"], "num_eigenvalues": ksum["num_eigenvalues"]},
        "ribbon": {k2: v for k2, v in rsum.items() if k2 in ("chi_1", "chi_2", "chi_3")},
        "energy_share_at_T": dict(zip(REGIONS, map(float, energy[-1]))),
        "dimension_share": {r: js[r]["fraction"] for r in REGIONS},
        "region_koopman_abs_max": {r: float(np.abs(v).max()) for r, v in spectra.items()},
        "perturbed_final_bhattacharyya": final_dist,
        "epsilon_norm": scale,
    }
    arrays = {"region_energy": energy, "recorded_steps": steps, "perturbed_embedding": pert_emb,
              **{f"eigenvalues_{r}": v for r, v in spectra.items()}}
    with stage("saving", progress):
        return folder.finish(summary, arrays=arrays, figures=figs, captions=CAPTIONS)


def _figures(steps: np.ndarray, energy: np.ndarray, spectra: Mapping[str, np.ndarray], emb: np.ndarray,
             labels: list[str]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    colors = {"chaotic": "C3", "bulk": "C0", "stable": "C2", "unperturbed": "k"}
    fig1, ax = plt.subplots(figsize=(5, 3.2))
    for i, r in enumerate(REGIONS):
        ax.plot(steps, energy[:, i], label=r, color=colors[r])
    ax.set_xlabel("step t")
    ax.set_ylabel("share of ‖θ_t − θ₀‖²")
    ax.set_ylim(0, 1)
    ax.legend()
    fig1.tight_layout()
    fig2, axes = plt.subplots(1, max(1, len(spectra)), figsize=(3.2 * max(1, len(spectra)), 3.2), squeeze=False)
    circle = np.exp(1j * np.linspace(0, 2 * np.pi, 200))
    for ax, (r, lam) in zip(axes[0], spectra.items()):
        ax.plot(circle.real, circle.imag, color="0.7", lw=0.8)
        ax.scatter(lam.real, lam.imag, color=colors[r], s=18)
        ax.set_title(r)
        ax.set_aspect("equal")
        ax.set_xlabel("Re λ")
    axes[0][0].set_ylabel("Im λ")
    fig2.tight_layout()
    fig3, ax = plt.subplots(figsize=(4.5, 3.6))
    for i, name in enumerate(labels):
        ax.plot(emb[i, :, 0], emb[i, :, 1] if emb.shape[2] > 1 else np.zeros(emb.shape[1]), marker=".",
                label=name, color=colors.get(name, f"C{i}"))
    ax.set_xlabel("InPCA 1")
    ax.set_ylabel("InPCA 2")
    ax.legend()
    fig3.tight_layout()
    return {"region_energy.png": fig1, "region_spectra.png": fig2, "perturbed_embedding.png": fig3}
