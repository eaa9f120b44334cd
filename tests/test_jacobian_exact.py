"""Exact training Jacobian: finite differences, closed form, resumption, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_recipe
from trainmap.jacobian.exact import CheckpointError, exact_jacobian
from trainmap.recipe import Recipe, TrainingDivergedError


def test_jacobian_matches_central_finite_differences_float64():
    recipe, theta0 = tiny_recipe(epochs=2)
    J = exact_jacobian(recipe, theta0, dtype=np.float64, chunk_size=16, progress=False)
    assert J.dtype == np.float64 and J.shape == (recipe.num_params,) * 2
    h = 1e-6
    with jax.enable_x64(True):
        th0 = jnp.asarray(theta0, jnp.float64)
        eye = jnp.eye(recipe.num_params, dtype=jnp.float64)
        train = jax.jit(jax.vmap(recipe.train))
        fd = (train(th0 + h * eye) - train(th0 - h * eye)) / (2 * h)  # rows: columns of J
    fd = np.asarray(fd).T
    rel = np.linalg.norm(J - fd) / np.linalg.norm(fd)
    assert rel < 1e-5, rel
    # and column by column, for the columns with non-negligible norm
    col_rel = np.linalg.norm(J - fd, axis=0) / np.maximum(np.linalg.norm(fd, axis=0), 1e-3)
    assert col_rel.max() < 1e-4


def _quadratic_recipe(A: np.ndarray, lrs: optax.Schedule, steps: int) -> Recipe:
    P = A.shape[0]
    A64 = jnp.asarray(A)
    return Recipe(
        apply=lambda p, x: p,  # the "model output" is the parameter vector itself
        loss=lambda out, y: 0.5 * out @ A64 @ out,
        optimizer=optax.sgd(lrs),
        x=np.zeros((1, 1), np.float64), y=np.zeros((1,), np.float64),
        batches=np.zeros((steps, 1), np.int32),
        unravel=lambda v: v, num_params=P,
    )


def test_full_batch_gd_on_quadratic_equals_closed_form():
    rng = np.random.default_rng(3)
    P, T = 12, 40
    Q = rng.normal(size=(P, P))
    A = Q @ Q.T / P + 0.1 * np.eye(P)
    sched = optax.cosine_decay_schedule(0.3, T)
    with jax.enable_x64(True):
        recipe = _quadratic_recipe(A, sched, T)
        theta0 = rng.normal(size=P)
        J = exact_jacobian(recipe, theta0, dtype=np.float64, chunk_size=5, progress=False)
        expected = np.eye(P)
        for t in range(T):
            expected = (np.eye(P) - float(sched(t)) * A) @ expected
    np.testing.assert_allclose(J, expected, rtol=0, atol=1e-10)


def test_chunk_size_does_not_change_the_matrix(tiny):
    recipe, theta0 = tiny
    J1 = exact_jacobian(recipe, theta0, chunk_size=7, progress=False)
    J2 = exact_jacobian(recipe, theta0, chunk_size=39, progress=False)
    Jref = np.asarray(jax.jit(jax.jacfwd(recipe.train))(theta0))
    np.testing.assert_allclose(J1, J2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(J1, Jref, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # opt-in (resumption is also checked by the SIGKILL test in tests/test_guarantees.py and in tests/test_torch_backend.py)
def test_interrupted_run_resumes_bit_for_bit(tmp_path, tiny):
    recipe, theta0 = tiny
    full = exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=tmp_path / "a", progress=False)
    ck = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, progress=False, stop_after=3)
    assert len(list(ck.glob("chunk_*.npy"))) == 3
    with pytest.raises(CheckpointError, match="resume"):  # refuses to silently restart
        exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, progress=False)
    with pytest.raises(KeyboardInterrupt):  # a second interruption, resumed again
        exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, resume=True,
                       progress=False, stop_after=2)
    resumed = exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, resume=True, progress=False)
    assert resumed.tobytes() == full.tobytes()
    assert not ck.exists()  # chunk files are removed once the matrix is complete


def test_corrupt_chunk_stops_with_message_and_keeps_other_chunks(tmp_path, tiny):
    recipe, theta0 = tiny
    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, progress=False, stop_after=3)
    bad = ck / "chunk_00001.npy"
    bad.write_bytes(b"garbage, not an array")
    before = {p.name: p.read_bytes() for p in ck.glob("chunk_*.npy") if p != bad}
    with pytest.raises(CheckpointError, match="chunk_00001.npy.*delete"):
        exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, resume=True, progress=False)
    after = {p.name: p.read_bytes() for p in ck.glob("chunk_*.npy") if p != bad}
    assert before == after
    # a flipped value (valid .npy, wrong content) fails the checksum
    good = np.load(ck / "chunk_00000.npy")
    good[0, 0] += 1.0
    np.save(ck / "chunk_00000.npy", good)
    with pytest.raises(CheckpointError, match="checksum"):
        exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, resume=True, progress=False)


def test_checkpoint_of_another_run_is_refused(tmp_path, tiny):
    recipe, theta0 = tiny
    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, progress=False, stop_after=1)
    with pytest.raises(CheckpointError, match="different run"):
        exact_jacobian(recipe, np.asarray(theta0) + 1.0, chunk_size=6, checkpoint_dir=ck,
                       resume=True, progress=False)


def test_diverging_learning_rate_stops_and_keeps_chunks(tmp_path):
    recipe, theta0 = tiny_recipe(lr=1e30, momentum=None)
    with pytest.raises(TrainingDivergedError, match="NaN/inf"):
        exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=tmp_path / "ck", progress=False)
    assert (tmp_path / "ck" / "chunks.json").exists()


def test_wrong_theta_shape_and_dtype(tiny):
    recipe, theta0 = tiny
    with pytest.raises(ValueError, match="flat vector"):
        exact_jacobian(recipe, np.zeros(3), progress=False)
    with pytest.raises(ValueError, match="float32 or float64"):
        exact_jacobian(recipe, theta0, dtype=np.int32, progress=False)


def test_memory_budget_chooses_a_chunk(tiny):
    from trainmap.jacobian.exact import choose_chunk_size

    recipe, theta0 = tiny
    k = choose_chunk_size(recipe.train, jnp.asarray(theta0), 64 * 2**20)
    assert 1 <= k <= recipe.num_params
    with pytest.raises(MemoryError, match="budget"):
        choose_chunk_size(recipe.train, jnp.asarray(theta0), 10)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_streaming_to_a_file_gives_the_in_memory_matrix(tmp_path, tiny, mode):
    recipe, theta0 = tiny
    ref = exact_jacobian(recipe, theta0, chunk_size=6, progress=False, mode=mode)
    out = tmp_path / "J.npy"
    J = exact_jacobian(recipe, theta0, chunk_size=6, progress=False, mode=mode, out=out)
    assert isinstance(J, np.memmap) and J.shape == ref.shape and J.dtype == ref.dtype
    assert J.flags.f_contiguous == (mode == "forward")  # each chunk was one contiguous write
    np.testing.assert_array_equal(np.asarray(J), ref)
    np.testing.assert_array_equal(np.load(out), ref)  # an ordinary .npy file
    assert [p.name for p in tmp_path.iterdir()] == ["J.npy"]  # no temporary file left behind


@pytest.mark.slow  # opt-in: `pytest -m slow` (keeps the default suite under its budget)
def test_interrupted_streaming_leaves_no_file_and_resumes_from_chunks(tmp_path, tiny):
    recipe, theta0 = tiny
    ref = exact_jacobian(recipe, theta0, chunk_size=6, progress=False)
    out, ck = tmp_path / "J.npy", tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, progress=False,
                       stop_after=2, out=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no half-written J.npy
    J = exact_jacobian(recipe, theta0, chunk_size=6, checkpoint_dir=ck, resume=True,
                       progress=False, out=out)
    assert J.tobytes(order="F") == ref.tobytes(order="F")
