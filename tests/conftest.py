"""Shared fixtures: tiny recipes that train in milliseconds."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
if "TRAINMAP_CACHE_DIR" not in os.environ:  # one fresh compilation cache per test session, never the user's
    import atexit
    import shutil
    import tempfile

    os.environ["TRAINMAP_CACHE_DIR"] = tempfile.mkdtemp(prefix="trainmap-test-cache-")
    atexit.register(shutil.rmtree, os.environ["TRAINMAP_CACHE_DIR"], True)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

from trainmap._cache import enable_compilation_cache  # noqa: E402
from trainmap.models import mlp  # noqa: E402
from trainmap.recipe import flat_params, make_recipe  # noqa: E402

enable_compilation_cache()  # as the CLI does: tests that rebuild the same programs load them


def tiny_recipe(seed: int = 0, n: int = 24, d: int = 5, h: int = 4, c: int = 3, epochs: int = 2,
                batch: int = 8, lr: float = 0.1, momentum: float | None = 0.9, activation: str = "gelu"):
    """A 5→4→3 MLP on random data, SGD (momentum) with a cosine schedule: (recipe, theta0)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, c, size=n).astype(np.int32)
    model = mlp((d, h, c), activation=activation)
    theta0, unravel = flat_params(model.init, seed)
    steps = epochs * (n // batch)
    opt = optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=momentum)
    recipe = make_recipe(model.apply, unravel, theta0.size, x, y, opt, batch_size=batch,
                         epochs=epochs, shuffle_seed=seed, config={"name": "tiny", "lr": lr})
    return recipe, theta0


@pytest.fixture
def tiny():
    return tiny_recipe()


@pytest.fixture(autouse=True, scope="session")
def _cpu_only():
    assert jax.default_backend() in ("cpu", "gpu", "tpu")
    yield
