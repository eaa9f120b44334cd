"""Architectures people study, through the TrainingMap protocol: a residual 1-D CNN on MNIST-1D
(generated locally), a decoder-only transformer (causal attention, LayerNorm, residuals) on modular
addition, and a deeper MLP. At two sizes each, the matrix-free route (block Lanczos on JᵀJ with SLQ
counts, incomplete Krylov space) agrees with the exact J: the top-20 singular values within their
residual bounds, the region counts within their stated error bars."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainmap.data import modular_addition
from trainmap.jacobian.exact import exact_jacobian
from trainmap.jacobian.matrix_free.pipeline import CONVERGED_RTOL, analyze_scale
from trainmap.jacobian.regions import Thresholds
from trainmap.models import decoder, mlp, resnet1d
from trainmap.recipe import flat_params, make_recipe

pytest.importorskip("mnist1d")


def _mnist1d(n: int = 48):
    from trainmap.data.mnist1d import load_mnist1d

    d = load_mnist1d(num_samples=n * 5 // 4, seed=0)
    return d.x_train[:n], d.y_train[:n]


def _cnn(channels: int, blocks: int):
    x, y = _mnist1d()
    return resnet1d(channels=channels, blocks=blocks, kernel=3), x, y, optax.sgd(0.05, momentum=0.9)


def _transformer(d_model: int, n_layers: int):
    data = modular_addition(p=7, train_fraction=0.7, seed=0)
    model = decoder(vocab=8, d_model=d_model, n_heads=2, d_mlp=2 * d_model, n_layers=n_layers, n_out=7)
    return model, data.x_train[:32], data.y_train[:32], optax.adam(3e-3, eps_root=1e-12)


def _deep_mlp(width: int, depth: int):
    x, y = _mnist1d()
    return mlp((40, *[width] * depth, 10), activation="tanh"), x, y, optax.sgd(0.1, momentum=0.9)


CASES = {
    "resnet1d-c4-b1": (_cnn, 4, 1), "resnet1d-c6-b2": (_cnn, 6, 2),
    "decoder-d4-L1": (_transformer, 4, 1), "decoder-d8-L2": (_transformer, 8, 2),
    "mlp-w6-d3": (_deep_mlp, 6, 3), "mlp-w10-d4": (_deep_mlp, 10, 4),
}


#: all but the small CNN are opt-in (`pytest -m slow`; 100 s), to keep the default suite in budget
SLOW = {"resnet1d-c6-b2", "decoder-d4-L1", "decoder-d8-L2", "mlp-w6-d3", "mlp-w10-d4"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES])
def test_matrix_free_agrees_with_exact(tmp_path, name):
    build, *size = CASES[name]
    model, x, y, opt = build(*size)
    theta0, unravel = flat_params(model.init, 0)
    recipe = make_recipe(model.apply, unravel, theta0.size, x, y, opt, batch_size=16, epochs=2, shuffle_seed=0)
    P = recipe.num_params
    J = exact_jacobian(recipe, theta0, dtype=np.float64, progress=False)
    with jax.enable_x64(True):
        ref = np.asarray(jax.jit(jax.jacfwd(recipe.train))(jnp.asarray(theta0, jnp.float64)))
    np.testing.assert_allclose(J, ref, rtol=0, atol=1e-10 * np.abs(ref).max())  # exact route, two ways
    S = np.linalg.svd(J, compute_uv=False)
    probes, steps = 4, max(6, P // 12)  # a third of the Krylov space
    assert probes * steps <= P / 2.5
    s = analyze_scale(recipe, theta0, tmp_path / name, method="lanczos", rank=20, probes=probes, steps=steps,
                      dtype=np.float64, progress=False, devices=jax.devices()[:1])
    top = s["top"]
    assert len(top["sigma"]) == 20 and top["converged"] >= 3, top
    for i, (sig, r) in enumerate(zip(top["sigma"], top["rel_residual"])):
        # some eigenvalue λ of JᵀJ has |σ̃² − λ| ≤ ‖JᵀJv − σ̃²v‖ = r·max(σ̃², 1), so some exact σ
        # is within r·max(σ̃², 1)/σ̃ of σ̃; once converged it is the i-th
        bound = 1.01 * r * max(sig ** 2, 1.0) / sig + 1e-12 * S[0]
        assert np.abs(S - sig).min() <= bound, (name, i, sig, bound)
        if r < CONVERGED_RTOL:
            assert abs(S[i] - sig) <= bound, (name, i, sig, S[i], bound)
    th = Thresholds()
    exact = {"chaotic": (S > th.high).sum(), "bulk": ((S >= th.low) & (S <= th.high)).sum(),
             "stable": (S < th.low).sum()}
    for r, n in exact.items():  # the stated error bars: probe noise and the quadrature range
        lo, hi = s[r]["quadrature_range"]
        tol = 4 * s[r]["std_err"] + 1
        assert lo - tol <= n <= hi + tol, (name, r, s[r], n)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_the_cnns_shifted_products_are_xlas_same_convolution(k):
    """resnet1d's convolution (k shifted matrix products) against lax.conv_general_dilated, in float64."""
    from trainmap.models.resnet1d import _conv

    rng = np.random.default_rng(k)
    x, w, b = rng.standard_normal((3, 11, 4)), rng.standard_normal((k, 4, 5)), rng.standard_normal(5)
    with jax.enable_x64(True):
        ref = jax.lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(w), (1,), "SAME",
                                           dimension_numbers=("NWC", "WIO", "NWC")) + b
        np.testing.assert_allclose(np.asarray(_conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))),
                                   np.asarray(ref), rtol=1e-12, atol=1e-12)
