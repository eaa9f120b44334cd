"""The linear-model theory of hyper-ribbons against training: one ensemble (``trainmap ribbon
linear``) and the phase diagram over (decay, scale, steps) (``trainmap ribbon phase-diagram``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trainmap.results import open_results


def linear_ensemble(out: str | Path, *, decay: float = 0.5, scale: float = 10.0, steps: int = 100,
                    kind: str = "exponential", dim: int = 200, runs: int = 16, records: int = 41,
                    lr_factor: float = 0.5, kernel: bool = True, seed: int = 0,
                    mode: str = "new") -> dict[str, Any]:
    """Linear regression: the closed-form InPCA spectrum of an ensemble against trained runs.

    Returns:
        The summary (also in ``summary.json``): χ_3 from the closed form and the theory, the
        top-5 relative difference of the analytic and trained spectra, and the kernel check.
    """
    from trainmap.ribbon.distances import gaussian_bhattacharyya_matrix
    from trainmap.ribbon.figures import linear_figures
    from trainmap.ribbon.inpca import InPCA
    from trainmap.ribbon.linear import (
        analytic_spectrum,
        closed_form_weights,
        crossover_scale,
        exact_covariance_inputs,
        make_linear_problem,
        plateau_decay,
        ribbon_score,
        simulate_gd,
        theory_score,
        trained_predictions,
    )
    from trainmap.ribbon.measures import decay_fit

    prob = make_linear_problem(dim, decay, scale, steps, runs, kind, lr_factor, num_records=records, seed=seed)
    config = dict(command="ribbon linear", decay=decay, scale=scale, steps=steps, kind=kind, dim=dim, runs=runs,
                  records=records, lr_factor=lr_factor, kernel=kernel, seed=seed, lr=prob.lr)
    folder = open_results(out, mode, kind="ribbon-linear", config=config)
    k = 10
    lam_a, tot_a = analytic_spectrum(prob, k)
    F = trained_predictions(prob, 2 * dim, seed + 1)
    D = gaussian_bhattacharyya_matrix(F.reshape(-1, F.shape[-1]), prob.sigma**2)
    model = InPCA(k, solver="dense").fit_distances(D)
    lam_e = model.eigenvalues_
    if not (np.all(np.isfinite(lam_a)) and np.all(np.isfinite(lam_e)) and np.all(np.isfinite(F))):
        raise ValueError("the linear ensemble diverged (non-finite predictions or spectra); lower --lr-factor "
                         "or --scale; no ribbon is reported for a diverged run")
    rel = np.abs(lam_e[:5] - lam_a[:5]) / np.abs(lam_a[:5])
    X = exact_covariance_inputs(prob.eigenvalues, 2 * dim, seed + 1)
    gd = simulate_gd(X, X @ prob.w_star, prob.w0, prob.lr, prob.steps)
    cf = closed_form_weights(X.T @ X / len(X), prob.w0, prob.w_star, prob.lr, prob.steps)
    summary = dict(
        chi_3_numeric=ribbon_score(lam_a, tot_a), chi_3_theory=theory_score(prob.eigenvalues, scale, prob.lr, prob.steps),
        analytic_eigenvalues=lam_a, trained_eigenvalues=lam_e, max_rel_diff_top5=float(rel.max()),
        closed_form_vs_gd_max_abs=float(np.abs(gd - cf).max()),
        eigenvalue_decay_ratio=decay_fit(lam_a[:5]).ratio,
        crossover_scale_rb=crossover_scale(prob.eigenvalues, prob.lr, prob.steps),
        decay_boundary_cA=plateau_decay(steps, dim, kind, lr_factor, records),
    )
    summary["is_hyper_ribbon"] = bool(summary["chi_3_numeric"] >= 0.9)
    if kernel:
        summary.update(_kernel_check(decay, dim, steps, runs, records, seed))
    linear_figures(folder, lam_a, lam_e, model.embedding_, runs, len(prob.steps),
                   f"c={decay:g}, ‖w*‖/‖w₀‖={scale:g}, T={steps}")
    return folder.finish(summary, arrays={"analytic_eigenvalues": lam_a, "trained_eigenvalues": lam_e,
                                          "embedding": model.embedding_})


def _kernel_check(decay: float, dim: int, steps: int, runs: int, records: int, seed: int) -> dict:
    """Kernel machine on sloppy inputs: closed form in function space vs GD on the features."""
    import numpy as np

    from trainmap.data.synthetic import sloppy_inputs, tanh_teacher
    from trainmap.ribbon.linear import (
        inpca_spectrum_from_points,
        kernel_closed_form,
        random_relu_features,
        ribbon_score,
        simulate_feature_gd,
        uniform_steps,
    )

    n = 120
    x = sloppy_inputs(n, dim, decay, seed=seed).astype(np.float64)
    y = tanh_teacher(dim, 50, 1, float(np.mean(np.sum(x**2, 1))), seed + 1)(x)[:, 0]
    Phi = random_relu_features(x, 256, seed + 2)
    K = Phi @ Phi.T
    kap = np.linalg.eigvalsh(K / n)[::-1]
    lr = 0.5 / kap[0]
    theta0 = np.random.default_rng(seed + 3).standard_normal((runs, Phi.shape[1])) * 0.1
    st = uniform_steps(steps, records)
    sim = simulate_feature_gd(Phi, y, theta0, lr, st)
    cf = kernel_closed_form(K, theta0 @ Phi.T, y, lr, st)
    lam, tot = inpca_spectrum_from_points(cf.reshape(-1, n) / np.sqrt(n), 1.0, 10)
    return dict(kernel_closed_form_vs_gd_max_abs=float(np.abs(sim - cf).max()),
                kernel_chi_3=ribbon_score(lam, tot), kernel_eigen_decay_top5=(kap[1:6] / kap[:5]).tolist())



def phase_diagram_experiment(out: str | Path, decays: Sequence[float], scales: Sequence[float],
                             steps: Sequence[int], *, kind: str = "exponential", dim: int = 200,
                             runs: int = 16, records: int = 41, threshold: float = 0.9, seed: int = 0,
                             mode: str = "new", progress: bool = True) -> dict[str, Any]:
    """χ_3 over (decay, scale, steps) against the derived boundaries.

    Returns:
        The summary (also in ``summary.json``): agreement of the numeric phase with the derived
        boundaries and with the large-ensemble theory, and every disagreeing cell.
    """
    from trainmap.ribbon.figures import phase_figure
    from trainmap.ribbon.linear import phase_diagram

    config = dict(command="ribbon phase-diagram", decays=list(decays), scales=list(scales), steps=list(steps),
                  kind=kind, dim=dim, runs=runs, records=records, threshold=threshold, seed=seed, lr_factor=0.5)
    folder = open_results(out, mode, kind="ribbon-phase-diagram", config=config)
    pd = phase_diagram(list(decays), list(scales), [int(v) for v in steps], dim, runs, kind,
                       num_records=records, threshold=threshold, seed=seed, progress=progress)
    num_phase = pd.numeric >= threshold
    theo_phase = pd.theory >= threshold
    pred = pd.predicted()
    disagree = np.argwhere(num_phase != pred)
    summary = dict(
        cells=int(num_phase.size),
        ribbon_fraction_numeric=float(num_phase.mean()),
        agreement_numeric_vs_boundaries=float(np.mean(num_phase == pred)),
        agreement_numeric_vs_theory=float(np.mean(num_phase == theo_phase)),
        agreement_theory_vs_boundaries=float(np.mean(theo_phase == pred)),
        decay_boundary_cA={int(T): float(c) for T, c in zip(pd.steps, pd.plateau)},
        disagreements=[dict(steps=int(pd.steps[s]), decay=float(pd.decays[a]), scale=float(pd.scales[b]),
                            chi_3=float(pd.numeric[s, a, b]), boundaries_say_ribbon=bool(pred[s, a, b]))
                       for s, a, b in disagree],
    )
    phase_figure(folder, pd)
    return folder.finish(summary, arrays={name: getattr(pd, name)
                                          for name in ("numeric", "theory", "crossover", "plateau")})
