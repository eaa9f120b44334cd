"""Write ``baseline_singular_values.npz``: singular values of small runs, one per engine route.

The file pins the numbers that every refactoring must reproduce bit for bit
(``tests/test_baseline.py``): the SHA-256 of each route's J, and its singular values (which
float64 LAPACK reproduces only to its own rounding, about 1e-15 σ_max, since OpenBLAS picks its
kernels by CPU). Regenerate it only when a change is *meant* to alter the numbers,
and say so in the commit message: ``python tests/data/make_baseline.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainmap.jacobian import exact_jacobian
from trainmap.jacobian.exact.checkpoint import array_sha256
from trainmap.presets import TORCH_DEFAULTS, digits_mlp

#: route name -> keyword arguments of exact_jacobian
ROUTES = {
    "mlp_rules": {},
    "autodiff_shared": {"specialize": False},
    "per_chunk": {"primal": "per_chunk"},
    "reverse": {"mode": "reverse"},
    "float64": {"dtype": np.float64},
}

#: a small version of the earlier reference setup (torch init, permuted split, shuffled order, erf
#: GELU): MLP 64→8→10 (610 parameters), 2 epochs (50 steps)
SETUP = dict(hidden=8, epochs=2, **TORCH_DEFAULTS)


def jacobian(route: str) -> np.ndarray:
    """J for one route on :data:`SETUP`, in its own dtype."""
    setup = digits_mlp(**SETUP)
    kw = dict(ROUTES[route])
    return np.asarray(exact_jacobian(setup.recipe, setup.theta0, chunk_size=64, progress=False, **kw))


def singular_values(J: np.ndarray) -> np.ndarray:
    """σ of J (float64 SVD), descending."""
    return np.linalg.svd(np.asarray(J, dtype=np.float64), compute_uv=False)


def gram_products() -> np.ndarray:
    """(JᵀJ V, J V) of the matrix-free operator on :data:`SETUP` for a fixed block V: (2, 2, P)."""
    from trainmap.jacobian.matrix_free import TrainingOperator

    setup = digits_mlp(**SETUP)
    V = np.random.default_rng(0).standard_normal((2, setup.recipe.num_params)).astype(np.float32)
    op = TrainingOperator(setup.recipe, setup.theta0)
    return np.stack([np.asarray(a) for a in op.gram(V)])


def main() -> None:
    out = Path(__file__).with_name("baseline_singular_values.npz")
    arrays: dict = {}
    for name in ROUTES:
        J = jacobian(name)
        arrays[name], arrays[f"{name}_sha256"] = singular_values(J), np.array(array_sha256(J))
    arrays["matrix_free_gram"] = gram_products()
    np.savez(out, **arrays)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
