"""Linear-model theory of hyper-ribbons (after Mao et al., "An analytical characterization of
sloppiness in neural networks: insights from linear models").

Linear regression f(x) = wᵀx trained by gradient descent on ½‖Xw − y‖²/n with realizable
targets y = Xw* has the closed-form trajectory

    w_t = w* + (I − ηΣ)^t (w₀ − w*),         Σ = XᵀX / n,

and, in expectation over the batches, SGD follows the same recursion (the update is linear in
w and the batch covariance is unbiased for Σ). With a Gaussian likelihood of fixed σ the
Bhattacharyya distance between two models is ‖f − f'‖²/(8σ²n) = (w − w')ᵀΣ(w − w')/(8σ²), so
InPCA is PCA of z = Σ^{1/2} w: the InPCA eigenvalues are the squared singular values of the
centred point matrix Z divided by 8σ². Everything here is float64 NumPy.

Conventions: an ensemble of M runs differs in w₀ ~ N(0, s₀² I), s₀² = init_std²/d, and shares
the ground truth w* with ‖w*‖ = scale · init_std (so ``scale`` ≈ ‖w*‖/‖w₀‖). Σ has eigenvalues
λ_k = b·e^{−c k}/d (exponential) or b·k^{−c}/d (power law), k = 1..d, and η = lr_factor/λ_1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from trainmap.ribbon.measures import explained_stress


# ----------------------------------------------------------------------------- spectra
def input_eigenvalues(d: int = 200, decay: float = 0.1, kind: str = "exponential",
                      b: float | None = None) -> np.ndarray:
    """Eigenvalues of the input covariance, sorted descending.

    Args:
        d: input dimension.
        decay: c, the decay rate (exponential: e^{−ck}; power law: k^{−c}).
        kind: ``"exponential"`` or ``"power"``.
        b: overall scale; default 50c for exponential decay (1 when c = 0), 1 for power laws.

    Returns:
        (d,) eigenvalues λ_1 ≥ ... ≥ λ_d ≥ 0.
    """
    if d < 1 or decay < 0:
        raise ValueError(f"need d >= 1 and decay >= 0, got d={d}, decay={decay}")
    k = np.arange(1, d + 1, dtype=np.float64)
    if kind == "exponential":
        b = (50.0 * decay if decay > 0 else 1.0) if b is None else b
        return b * np.exp(-decay * k) / d
    if kind == "power":
        b = 1.0 if b is None else b
        return b * k ** (-decay) / d
    raise ValueError(f"unknown kind {kind!r}; use 'exponential' or 'power'")


def exact_covariance_inputs(eigenvalues: Any, n: int, seed: int = 0) -> np.ndarray:
    """Inputs X (n, d) whose sample covariance XᵀX/n equals diag(eigenvalues) exactly.

    X = √n · Q · diag(√λ) with Q (n, d) having orthonormal columns (needs n ≥ d).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    d = lam.size
    if n < d:
        raise ValueError(f"exact covariance needs n >= d, got n={n}, d={d}; use more samples")
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, d)))
    return np.sqrt(n) * q * np.sqrt(lam)[None, :]


# ----------------------------------------------------------------------------- problem
@dataclass(frozen=True)
class LinearProblem:
    """An ensemble of linear-regression runs with a diagonal input covariance.

    Attributes:
        eigenvalues: (d,) λ_k of Σ (Σ is diagonal in this basis).
        w_star: (d,) ground-truth weights.
        w0: (M, d) initial weights of the M runs.
        lr: η.
        steps: (R,) recorded gradient steps (increasing, starting at 0).
        sigma: σ of the Gaussian likelihood (sets the distance scale only).
    """

    eigenvalues: np.ndarray
    w_star: np.ndarray
    w0: np.ndarray
    lr: float
    steps: np.ndarray
    sigma: float = 1.0

    @property
    def num_runs(self) -> int:
        return int(self.w0.shape[0])


def uniform_steps(num_steps: int, num_records: int = 41) -> np.ndarray:
    """(R,) distinct steps evenly spaced from 0 to ``num_steps``."""
    return np.unique(np.round(np.linspace(0, num_steps, min(num_records, num_steps + 1))).astype(np.int64))


def make_linear_problem(d: int = 200, decay: float = 0.1, scale: float = 1.0, num_steps: int = 100,
                        runs: int = 16, kind: str = "exponential", lr_factor: float = 0.5,
                        init_std: float = 1.0, num_records: int = 41, sigma: float = 1.0,
                        seed: int = 0) -> LinearProblem:
    """Build a :class:`LinearProblem`.

    Args:
        d, decay, kind: input spectrum (:func:`input_eigenvalues`).
        scale: ‖w*‖ / E‖w₀‖, the ground-truth scale relative to the initial weights.
        num_steps: T, the number of gradient steps.
        runs: M, runs in the ensemble (different w₀).
        lr_factor: η = lr_factor / λ_1 (stable for lr_factor < 2).
        init_std: E‖w₀‖ ≈ init_std (w₀ ~ N(0, init_std²/d · I)).
        num_records: points recorded per run (evenly spaced steps).
        sigma: likelihood σ.
        seed: seed for w₀ and w*.
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps (--steps) must be >= 1, got {num_steps}")
    if int(runs) < 2:
        raise ValueError(f"runs (--runs) must be >= 2: an ensemble of one run has no spread to embed, got {runs}")
    if int(num_records) < 2:
        raise ValueError(f"num_records (--records) must be >= 2, got {num_records}")
    if not 0 < lr_factor < 2:
        raise ValueError(f"lr_factor (--lr-factor) must lie in (0, 2): gradient descent on this quadratic "
                         f"diverges for η λ_max >= 2, got {lr_factor}")
    if int(d) < 1 or not scale > 0:
        raise ValueError(f"need d (--dim) >= 1 and scale (--scale) > 0, got d={d}, scale={scale}")
    lam = input_eigenvalues(d, decay, kind)
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(d)
    w_star = scale * init_std * g / np.linalg.norm(g)
    w0 = rng.standard_normal((runs, d)) * init_std / np.sqrt(d)
    return LinearProblem(lam, w_star, w0, lr_factor / float(lam[0]), uniform_steps(num_steps, num_records), sigma)


# ----------------------------------------------------------------------------- closed form
def closed_form_weights(cov: Any, w0: Any, w_star: Any, lr: float, steps: Sequence[int]) -> np.ndarray:
    """w_t = w* + (I − ηΣ)^t (w₀ − w*) for a general symmetric Σ.

    Args:
        cov: (d,) eigenvalues of a diagonal Σ, or a (d, d) symmetric matrix.
        w0: (M, d) or (d,) initial weights.
        w_star: (d,) fixed point.
        lr: η.
        steps: (R,) steps t.

    Returns:
        (M, R, d) weights (M = 1 for a single w₀).
    """
    w0 = np.atleast_2d(np.asarray(w0, dtype=np.float64))
    w_star = np.asarray(w_star, dtype=np.float64)
    t = np.asarray(steps, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim == 1:
        rho = 1.0 - lr * cov
        return w_star + rho[None, None, :] ** t[None, :, None] * (w0 - w_star)[:, None, :]
    lam, V = np.linalg.eigh(cov)
    coef = (w0 - w_star) @ V                       # (M, d) in the eigenbasis
    rho = (1.0 - lr * lam)[None, None, :] ** t[None, :, None]
    return w_star + (rho * coef[:, None, :]) @ V.T


def simulate_gd(X: Any, y: Any, w0: Any, lr: float, steps: Sequence[int]) -> np.ndarray:
    """Plain full-batch gradient descent on ½‖Xw − y‖²/n, recording the weights.

    Args:
        X: (n, d) inputs; y: (n,) targets; w0: (M, d) or (d,) initial weights.
        lr: η; steps: (R,) recorded steps (increasing).

    Returns:
        (M, R, d) weights at the recorded steps.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.atleast_2d(np.asarray(w0, dtype=np.float64)).copy()
    steps = np.asarray(steps, dtype=np.int64)
    out = np.empty((w.shape[0], len(steps), w.shape[1]))
    n, t, j = X.shape[0], 0, 0
    while j < len(steps):
        if t == steps[j]:
            out[:, j] = w
            j += 1
            continue
        w = w - lr * ((w @ X.T - y) @ X) / n
        t += 1
    return out


def inpca_spectrum_from_points(Z: Any, sigma: float = 1.0, k: int | None = None) -> tuple[np.ndarray, float]:
    """InPCA eigenvalues of Gaussian predictions from their Σ^{1/2}-whitened points.

    With D_ij = ‖z_i − z_j‖²/(8σ²), W = C Z Zᵀ C/(8σ²): its eigenvalues are the squared
    singular values of the centred Z over 8σ² (all ≥ 0).

    Args:
        Z: (n, d) points (e.g. Σ^{1/2} w, or predictions / √N).
        sigma: likelihood σ.
        k: how many to return (default all).

    Returns:
        ((k,) eigenvalues descending, ‖W‖_F² = Σ of all eigenvalues²).
    """
    Z = np.asarray(Z, dtype=np.float64)
    Zc = Z - Z.mean(axis=0, keepdims=True)
    s = np.linalg.svd(Zc, compute_uv=False)
    lam = s**2 / (8.0 * sigma**2)
    return lam[: k or len(lam)], float(np.sum(lam**2))


def analytic_spectrum(problem: LinearProblem, k: int | None = None) -> tuple[np.ndarray, float]:
    """InPCA spectrum of the ensemble from the closed form (no training).

    Returns:
        ((k,) eigenvalues, ‖W‖_F²) for the M·R points of all runs at the recorded steps.
    """
    w = closed_form_weights(problem.eigenvalues, problem.w0, problem.w_star, problem.lr, problem.steps)
    Z = (w * np.sqrt(problem.eigenvalues)).reshape(-1, w.shape[-1])
    return inpca_spectrum_from_points(Z, problem.sigma, k)


def trained_predictions(problem: LinearProblem, num_samples: int | None = None, seed: int = 1) -> np.ndarray:
    """Predictions of the ensemble trained by actual gradient descent on exact-covariance data.

    Args:
        problem: the ensemble.
        num_samples: probe/training set size n (default 2d).
        seed: seed of the inputs.

    Returns:
        (M, R, n) predictions f = X w_t on the training inputs X (XᵀX/n = Σ exactly).
    """
    d = problem.eigenvalues.size
    n = num_samples or 2 * d
    X = exact_covariance_inputs(problem.eigenvalues, n, seed)
    w = simulate_gd(X, X @ problem.w_star, problem.w0, problem.lr, problem.steps)
    return w @ X.T


def empirical_spectrum(problem: LinearProblem, k: int = 10, num_samples: int | None = None,
                       seed: int = 1) -> tuple[np.ndarray, float]:
    """InPCA spectrum from actual training: GD, predictions, Gaussian Bhattacharyya, InPCA.

    Returns:
        ((k,) eigenvalues sorted by |λ|, ‖W‖_F²).
    """
    from trainmap.ribbon.distances import gaussian_bhattacharyya_matrix
    from trainmap.ribbon.inpca import InPCA

    F = trained_predictions(problem, num_samples, seed)
    D = gaussian_bhattacharyya_matrix(F.reshape(-1, F.shape[-1]), problem.sigma**2)
    model = InPCA(n_components=k, solver="dense").fit_distances(D)
    return model.eigenvalues_, model.total_stress_


# ----------------------------------------------------------------------------- kernel machines
def random_relu_features(x: Any, num_features: int = 512, seed: int = 0) -> np.ndarray:
    """Fixed random ReLU features φ(x) = max(0, xΩ/√d)·√(2/F), Ω ~ N(0, I).

    Args:
        x: (n, d) inputs; num_features: F; seed: seed of Ω.

    Returns:
        (n, F) features; the kernel K = ΦΦᵀ approximates the arc-cosine kernel.
    """
    x = np.asarray(x, dtype=np.float64)
    omega = np.random.default_rng(seed).standard_normal((x.shape[1], num_features))
    return np.maximum(x @ omega / np.sqrt(x.shape[1]), 0.0) * np.sqrt(2.0 / num_features)


def kernel_closed_form(K: Any, f0: Any, f_star: Any, lr: float, steps: Sequence[int]) -> np.ndarray:
    """Function-space trajectory of a kernel machine (fixed features) under gradient descent.

    For f = Φθ and GD on ½‖Φθ − y‖²/n, the training-set predictions obey
    f_{t+1} = f_t − η (K/n)(f_t − y) with K = ΦΦᵀ, so f_t = y + (I − ηK/n)^t (f₀ − y).

    Args:
        K: (n, n) kernel matrix on the training inputs.
        f0: (M, n) or (n,) initial predictions; f_star: (n,) targets y.
        lr: η; steps: (R,) steps.

    Returns:
        (M, R, n) predictions.
    """
    K = np.asarray(K, dtype=np.float64)
    return closed_form_weights(K / K.shape[0], f0, f_star, lr, steps)


def simulate_feature_gd(Phi: Any, y: Any, theta0: Any, lr: float, steps: Sequence[int]) -> np.ndarray:
    """GD on the parameters of a fixed-feature model; returns (M, R, n) training predictions."""
    Phi = np.asarray(Phi, dtype=np.float64)
    theta = simulate_gd(Phi, y, theta0, lr, steps)
    return theta @ Phi.T


# ----------------------------------------------------------------------------- theory of the phases
def mode_moments(x: Any, taus: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time moments of the relaxation factors e_k(τ) = ρ_k^τ over the recorded steps.

    Args:
        x: (d,) contraction factors ρ_k = 1 − ηλ_k.
        taus: (R,) recorded steps.

    Returns:
        (E_t[ρ_k^{2t}] (d,), E_t[ρ_k^t] (d,), ρ^t matrix (R, d)).
    """
    E = np.asarray(x, dtype=np.float64)[None, :] ** np.asarray(taus, dtype=np.float64)[:, None]
    return np.mean(E**2, axis=0), np.mean(E, axis=0), E


def theory_covariance(eigenvalues: Any, scale: float, lr: float, steps: Any, init_std: float = 1.0) -> np.ndarray:
    """Large-ensemble covariance of the whitened points z = Σ^{1/2} w over runs and times.

    Σ_z = s₀² [ diag(λ_k E_t ρ_k^{2t}) + r² · diag(√λ) Cov_t(ρ^t) diag(√λ) ],
    s₀² = init_std²/d, r = scale; the first term is the spread of the initialisations that
    survives training, the second the common path from w₀ ≈ 0 to w* with a typical truth
    (|w*_k| = r s₀; the spectrum does not depend on the signs of w*).

    Returns:
        (d, d) covariance; InPCA eigenvalues ≈ its eigenvalues / (8σ²).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    d = lam.size
    m2, m1, E = mode_moments(1.0 - lr * lam, steps)
    cov_t = (E - m1).T @ (E - m1) / E.shape[0]
    s0 = init_std**2 / d
    sl = np.sqrt(lam)
    return s0 * (np.diag(lam * m2) + scale**2 * sl[:, None] * cov_t * sl[None, :])


def ribbon_score(eigenvalues: Any, total_stress: float, k: int = 3) -> float:
    """Hyper-ribbon score: χ_k, the explained stress of the top k components (default χ_3)."""
    return float(explained_stress(np.asarray(eigenvalues)[:k], total_stress)[-1])


def theory_score(eigenvalues: Any, scale: float, lr: float, steps: Any, k: int = 3) -> float:
    """χ_k of the large-ensemble theory covariance (:func:`theory_covariance`)."""
    mu = np.linalg.eigvalsh(theory_covariance(eigenvalues, scale, lr, steps))[::-1]
    return ribbon_score(mu, float(np.sum(mu**2)), k)


def crossover_scale(eigenvalues: Any, lr: float, steps: Any) -> float:
    """r_b: the ground-truth scale at which the path's spread equals the initialisations' spread.

    r_b² = Σ_k λ_k E_t[ρ_k^{2t}] / Σ_k λ_k Var_t[ρ_k^t]  (traces of the two terms of
    :func:`theory_covariance`). Below r_b the embedding is dominated by where runs start, above
    it by the common path.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    m2, m1, _ = mode_moments(1.0 - lr * lam, steps)
    var = np.maximum(m2 - m1**2, 1e-300)
    return float(np.sqrt(np.sum(lam * m2) / np.sum(lam * var)))


def init_only_score(eigenvalues: Any, lr: float, steps: Any, k: int = 3) -> float:
    """χ_k when the initialisations dominate: the spectrum is diag(λ_k E_t[ρ_k^{2t}]) exactly."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    m2, _, _ = mode_moments(1.0 - lr * lam, steps)
    mu = np.sort(lam * m2)[::-1]
    return ribbon_score(mu, float(np.sum(mu**2)), k)


def plateau_decay(num_steps: int, d: int = 200, kind: str = "exponential", lr_factor: float = 0.5,
                  num_records: int = 41, k: int = 3, chi: float = 0.9, c_max: float = 8.0) -> float:
    """c_A(T): the smallest decay rate for which an initialisation-dominated ensemble is a ribbon.

    Solves χ_k(diag(λ_k E_t[ρ_k^{2t}])) = χ for c by bisection (the score rises with c). Its
    limits (see docs/ribbon.md): when every relaxation is resolved by the recording
    (ηλ_1T ≲ R/2), relaxed modes form a plateau of height ≈ 1/(2ηT) holding 1 + ln(ηλ_1T)/c
    modes, so c_A ≈ ln(ηλ_1T)/(k − 2); when the fastest modes relax between two records
    (ηλ_1T ≫ R) they survive only in the t = 0 points with weight λ_k/R, the spectrum is
    geometric with ratio e^{−c}, and c_A → ln(1/(1−χ))/k.

    Returns:
        c_A (``c_max`` if no c up to ``c_max`` reaches χ).
    """
    steps = uniform_steps(int(num_steps), num_records)

    def score(c: float) -> float:
        lam = input_eigenvalues(d, c, kind)
        return init_only_score(lam, lr_factor / float(lam[0]), steps, k)

    lo, hi = 1e-6, c_max
    if score(hi) < chi:
        return c_max
    if score(lo) >= chi:
        return 0.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if score(mid) < chi else (lo, mid)
    return float(hi)


def truth_window_ok(lr_times_lambda1: float, num_steps: int, k: int = 3, chi: float = 0.9) -> bool:
    """Whether the common path alone is a hyper-ribbon: the relaxation rates span a log-window
    L = ln(ηλ_1T); a sum of exponentials with rates spread over L has InPCA eigenvalues falling
    like e^{−π²j/L}, so χ_k ≈ 1 − e^{−kπ²/L} ≥ χ iff L ≤ kπ²/ln(1/(1−χ))."""
    L = np.log(max(lr_times_lambda1 * num_steps, 1.0 + 1e-12))
    return bool(L <= k * np.pi**2 / np.log(1.0 / (1.0 - chi)))


@dataclass(frozen=True)
class PhaseDiagram:
    """Hyper-ribbon scores over (decay c, scale r, steps T).

    Attributes:
        decays: (A,) decay rates c; scales: (B,) ‖w*‖/‖w₀‖; steps: (S,) numbers of steps T.
        numeric: (S, A, B) χ_3 of finite ensembles (closed form, M runs, recorded steps).
        theory: (S, A, B) χ_3 of the large-ensemble theory covariance.
        crossover: (S, A) r_b(c, T), the init/path crossover scale.
        plateau: (S,) c_A(T), the decay above which initialisation-dominated ensembles are ribbons.
        truth_ok: (S,) whether the path alone is a ribbon at that T.
        threshold: the χ_3 level called a hyper-ribbon.
    """

    decays: np.ndarray
    scales: np.ndarray
    steps: np.ndarray
    numeric: np.ndarray
    theory: np.ndarray
    crossover: np.ndarray
    plateau: np.ndarray
    truth_ok: np.ndarray
    threshold: float

    def predicted(self) -> np.ndarray:
        """(S, A, B) bool: the derived boundaries' prediction.

        Ribbon iff c ≥ c_A(T), or the path dominates: r ≥ r_b/√(1 − χ) (the initialisations'
        spread is at most a fraction 1 − χ of the path's) and the path alone is a ribbon.
        """
        factor = 1.0 / np.sqrt(1.0 - self.threshold)
        above = self.scales[None, None, :] >= factor * self.crossover[:, :, None]
        above &= self.truth_ok[:, None, None]
        return above | (self.decays[None, :, None] >= self.plateau[:, None, None])


def phase_diagram(decays: Sequence[float], scales: Sequence[float], steps: Sequence[int], d: int = 200,
                  runs: int = 16, kind: str = "exponential", lr_factor: float = 0.5, num_records: int = 41,
                  threshold: float = 0.9, seed: int = 0, progress: bool = False) -> PhaseDiagram:
    """χ_3 over a grid of (decay, scale, steps), numerically and from the derived theory.

    Returns:
        A :class:`PhaseDiagram`.
    """
    decays, scales, steps = (np.asarray(v) for v in (decays, scales, steps))
    num = np.zeros((len(steps), len(decays), len(scales)))
    theo = np.zeros_like(num)
    cross = np.zeros((len(steps), len(decays)))
    plateau = np.array([plateau_decay(int(T), d, kind, lr_factor, num_records, 3, threshold) for T in steps])
    truth_ok = np.array([truth_window_ok(lr_factor, int(T), 3, threshold) for T in steps])
    cells = [(s, a) for s in range(len(steps)) for a in range(len(decays))]
    it: Any = cells
    if progress:
        from rich.progress import track

        it = track(cells, description="phase diagram")
    for s, a in it:
        for b, r in enumerate(scales):
            prob = make_linear_problem(d, float(decays[a]), float(r), int(steps[s]), runs, kind,
                                       lr_factor, num_records=num_records, seed=seed)
            lam, tot = analytic_spectrum(prob, 3)
            num[s, a, b] = ribbon_score(lam, tot)
            theo[s, a, b] = theory_score(prob.eigenvalues, float(r), prob.lr, prob.steps)
        cross[s, a] = crossover_scale(prob.eigenvalues, prob.lr, prob.steps)
    return PhaseDiagram(decays, scales, steps, num, theo, cross, plateau, truth_ok, threshold)
