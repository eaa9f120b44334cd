"""Property-based tests of the public constructors: for arbitrary shapes, NaN/inf, empty and
out-of-range values a constructor either works or raises a ValueError that names the problem;
it never crashes elsewhere and never returns garbage (a result it returns is finite)."""

from __future__ import annotations

import numpy as np
import optax
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trainmap.koopman import DMD
from trainmap.models import mlp
from trainmap.recipe import flat_params, make_recipe
from trainmap.record import from_arrays
from trainmap.record.predictions import predictions_from_arrays
from trainmap.ribbon import InPCA

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def _ok_or_value_error(fn):
    try:
        return fn()
    except ValueError as exc:
        assert str(exc), "a ValueError must say what is wrong"
        return None


@SETTINGS
@given(hnp.arrays(np.float32, shapes, elements=floats))
def test_dmd_fit(arr):
    dmd = _ok_or_value_error(lambda: DMD(rank=None, delays=0).fit(arr))
    if dmd is not None:
        assert np.all(np.isfinite(dmd.eigenvalues_))


@SETTINGS
@given(hnp.arrays(np.float64, shapes, elements=floats), st.integers(-2, 4), st.integers(-1, 3))
def test_dmd_hyper_parameters(arr, rank, delays):
    dmd = _ok_or_value_error(lambda: DMD(rank=rank if rank else None, delays=delays).fit(arr))
    if dmd is not None:
        assert np.all(np.isfinite(dmd.eigenvalues_)) and dmd.rank_ >= 1


@SETTINGS
@given(hnp.arrays(np.float64, shapes, elements=floats))
def test_from_arrays(arr):
    t = _ok_or_value_error(lambda: from_arrays(arr))
    if t is not None:
        assert len(t.shape) == 3 and np.all(np.isfinite(np.asarray(t.features)))


@SETTINGS
@given(hnp.arrays(np.float64, shapes, elements=st.one_of(st.floats(-1, 2, width=32), st.just(float("nan")))))
def test_prediction_stores(arr):
    t = _ok_or_value_error(lambda: predictions_from_arrays(probs=arr))
    if t is not None:
        p = np.asarray(t.probs)
        assert p.ndim == 4 and np.all(np.isfinite(p)) and np.allclose(p.sum(-1), 1, atol=1e-3)


@SETTINGS
@given(hnp.arrays(np.float64, shapes, elements=st.one_of(st.floats(-1, 2, width=32), st.just(float("nan")))))
def test_inpca_fit(arr):
    model = _ok_or_value_error(lambda: InPCA(2, solver="dense").fit(arr))
    if model is not None:
        assert np.all(np.isfinite(model.embedding_))


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 30), st.integers(-2, 40), st.integers(-1, 3), floats, st.integers(-3, 5))
def test_make_recipe(n, batch_size, epochs, fill, label):
    rng = np.random.default_rng(0)
    model = mlp((3, 2, 3))
    theta0, unravel = flat_params(model.init, 0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    if n:
        x[0, 0] = fill
    y = np.full(n, label, dtype=np.int32)
    recipe = _ok_or_value_error(lambda: make_recipe(model.apply, unravel, theta0.size, x, y, optax.sgd(0.1),
                                                    batch_size=batch_size, epochs=epochs))
    if recipe is not None:
        _ok_or_value_error(lambda: recipe.check_theta(theta0))  # labels checked against 3 classes
        assert recipe.num_steps >= 1 and np.all(np.isfinite(np.asarray(recipe.x)))
