"""Matrix-free products with the training Jacobian J = ∂θ_T/∂θ₀ (P, P), never forming J.

* ``J V``: forward mode — a ``vmap`` of ``jvp`` through the scanned training run; the primal
  trajectory is computed once per block and shared by its k tangents. Memory O(state · k).
* ``Jᵀ W``: reverse mode through the training run with rematerialisation
  (:meth:`~trainmap.recipe.Recipe.train_checkpointed`). The T optimizer steps are cut into
  ⌈T / s⌉ segments of s ≈ √T steps; each segment is a ``jax.checkpoint``-ed inner ``lax.scan``. The forward pass keeps only the training state at segment boundaries; the
  backward pass recomputes one segment at a time. Peak memory of the reverse pass is about

      (⌈T/s⌉ + 1) · |state|  +  s · |residuals of one step|  +  2k · P floats,

  i.e. O(√T · state) instead of O(T · residuals) for the plain reverse pass (``segment=0``).
  |state| is θ plus the optimizer state (2P floats for SGD with momentum, 3P for Adam); the
  residuals of one step are a few P floats plus the activations of one batch.
* ``JᵀJ V``: both in one compiled program (returns J V too, for left singular vectors).

The programs with a reverse pass are compiled without XLA's while-loop invariant code motion
(:data:`REVERSE_PASS_OPTIONS`): with it, JAX 0.10.2's CPU backend returns wrong rows from the
batched reverse pass through a scanned transformer training run (``bench/gram_check.py``).

All products act on blocks of row vectors ``V: (k, P)`` and can be sharded over every JAX device
along k (:mod:`trainmap.jacobian.matrix_free.distributed`).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from trainmap.jacobian.matrix_free.distributed import shard_rows, vector_mesh
from trainmap.jacobian.precision import check_dtype, precision_context
from trainmap.protocol import TrainingMap, is_traceable

#: XLA options of the compiled Jᵀ W and JᵀJ V programs. XLA's ``while-loop-invariant-code-motion``
#: pass miscompiles the vmapped reverse pass through ``lax.scan`` of a transformer's training steps on
#: the CPU (JAX/jaxlib 0.10.2): rows 5 and up of a block of 16 come back up to 680% off while each row
#: alone, float64 and the op-by-op (``jax.disable_jit``) run are right; disabling that one pass, or
#: ``algsimp`` or ``cse`` before it, makes them right. MLPs and CNNs are not affected.
REVERSE_PASS_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}

# compiled kernels per recipe, so that operators built again for the same recipe (a resumed run,
# tests) reuse XLA's compilation instead of tracing new closures
_KERNELS: "weakref.WeakKeyDictionary[TrainingMap, dict]" = weakref.WeakKeyDictionary()


def _kernels(recipe: TrainingMap, segment: int | None, mesh: Any) -> tuple[Callable, Callable, Callable]:
    key = (segment, tuple(int(d.id) for d in mesh.devices.flat))
    per_recipe = _KERNELS.setdefault(recipe, {})
    if key not in per_recipe:
        def jvp_f(theta0: jax.Array, V: jax.Array) -> jax.Array:
            return recipe.jvp(theta0, V)

        def vjp_f(theta0: jax.Array, W: jax.Array) -> jax.Array:
            return recipe.vjp(theta0, W, segment)

        def gram_f(theta0: jax.Array, V: jax.Array) -> tuple[jax.Array, jax.Array]:
            JV = jvp_f(theta0, V)
            return vjp_f(theta0, JV), JV

        if is_traceable(recipe):
            per_recipe[key] = (shard_rows(jvp_f, mesh), shard_rows(vjp_f, mesh, REVERSE_PASS_OPTIONS),
                               shard_rows(gram_f, mesh, REVERSE_PASS_OPTIONS))
        else:  # another backend (torch): its own products on NumPy blocks, on its own device
            per_recipe[key] = (jvp_f, vjp_f, gram_f)
    return per_recipe[key]


def gram_consistent(V: np.ndarray, AV: np.ndarray, JV: np.ndarray, rtol: float = 1e-2,
                    atol: float = 1e-3) -> np.ndarray:
    """(k,) bool: rows where the products satisfy vᵀ(JᵀJ v) = ‖J v‖² and are finite.

    Reverse mode is the transpose of forward mode, so the two sides differ by rounding only; a
    row fails when ``|vᵀ(JᵀJ v) − ‖J v‖²| > rtol·‖J v‖² + atol·‖v‖²`` (or is not finite), which
    catches a reverse pass that broke down without becoming NaN. The absolute part keeps
    directions with ‖J v‖ ≈ 0 (the stable end), whose relative rounding is large, from failing.

    Args:
        V, AV, JV: (k, P) probes, JᵀJ V and J V.
    """
    ok = np.zeros(len(V), dtype=bool)
    with np.errstate(all="ignore"):
        for i, (v, av, jv) in enumerate(zip(V, AV, JV)):  # BLAS dots in the rows' dtype: no copies
            v, av, jv = (np.asarray(a) for a in (v, av, jv))
            n2 = float(jv @ jv)
            ok[i] = bool(abs(float(v @ av) - n2) <= rtol * n2 + atol * float(v @ v)) \
                and bool(np.isfinite(av).all() and np.isfinite(jv).all())
    return ok


class TrainingOperator:
    """J = ∂θ_T/∂θ₀ of a recipe as a matrix-free operator on blocks of row vectors.

    Args:
        recipe: the training run.
        theta0: (P,) initial flat parameters.
        dtype: float32 (default) or float64 (enables JAX's x64 mode around each call).
        segment: steps per rematerialised segment of the reverse pass (None: ⌈√T⌉; 0: none).
        devices: devices to shard the vector axis over; None: all of ``jax.devices()``;
            pass ``jax.devices()[:1]`` to stay on one device.

    Example:
        >>> op = TrainingOperator(recipe, theta0)
        >>> JV = op.matvec(V)          # V: (k, P) -> (k, P), row i is J V[i]
        >>> JtW = op.rmatvec(W)        # W: (k, P) -> (k, P), row i is Jᵀ W[i]
        >>> JtJV, JV = op.gram(V)      # both, in one compiled program
    """

    def __init__(self, recipe: TrainingMap, theta0: Any, *, dtype: Any = np.float32,
                 segment: int | None = None, devices: Any = None) -> None:
        self.recipe = recipe
        self.dtype = check_dtype(dtype)
        self.num_params = int(recipe.num_params)
        self.segment = segment
        with precision_context(self.dtype):
            self.theta0 = np.asarray(recipe.check_theta(jnp.asarray(theta0, dtype=self.dtype)))
        self.mesh = vector_mesh(devices)
        self._jvp, self._vjp, self._gram = _kernels(recipe, segment, self.mesh)
        self._may_retry = is_traceable(recipe) and jax.process_count() == 1
        #: blocks of :meth:`gram` recomputed in float64 (their float32 rows failed the check)
        self.float64_retries = 0

    @property
    def shape(self) -> tuple[int, int]:
        """(P, P)."""
        return (self.num_params, self.num_params)

    @property
    def num_devices(self) -> int:
        """Devices the vector axis is sharded over."""
        return int(self.mesh.size)

    def _block(self, V: Any, name: str) -> np.ndarray:
        V = np.asarray(V, dtype=self.dtype)
        if V.ndim == 1:
            V = V[None]
        if V.ndim != 2 or V.shape[1] != self.num_params:
            raise ValueError(f"{name} must be a (k, {self.num_params}) block of row vectors, got "
                             f"shape {np.shape(V)}")
        return V

    def matvec(self, V: Any) -> np.ndarray:
        """J V. V: (k, P) rows (or one (P,) vector) -> (k, P) rows J v_i."""
        V = self._block(V, "V")
        with precision_context(self.dtype):
            return self._jvp(self.theta0, V)

    def rmatvec(self, W: Any) -> np.ndarray:
        """Jᵀ W. W: (k, P) rows (or one (P,) vector) -> (k, P) rows Jᵀ w_i."""
        W = self._block(W, "W")
        with precision_context(self.dtype):
            return self._vjp(self.theta0, W)

    def gram(self, V: Any) -> tuple[np.ndarray, np.ndarray]:
        """(JᵀJ V, J V), each (k, P), from one compiled forward + reverse program.

        In float32 every row is checked against vᵀ(JᵀJ v) = ‖J v‖² (:func:`gram_consistent`; both
        sides are at hand, so the check is free): a guard behind :data:`REVERSE_PASS_OPTIONS`, which
        removes the one known cause (``bench/gram_check.py``, ``bench/transformer_adam_products.py``);
        a block with a row that fails is then recomputed in float64 and returned in float32
        (``float64_retries`` counts them). Not in a job of several processes, whose products are
        collectives: there the row stays as computed (and the Lanczos step stops on a NaN).
        """
        V = self._block(V, "V")
        with precision_context(self.dtype):
            AV, JV = self._gram(self.theta0, V)
        if self.dtype == np.float32 and self._may_retry and not gram_consistent(V, AV, JV).all():
            self.float64_retries += 1
            with precision_context(np.float64):
                AV, JV = self._gram(self.theta0.astype(np.float64), V.astype(np.float64))
            AV, JV = np.asarray(AV, np.float32), np.asarray(JV, np.float32)
        return AV, JV

    def to_scipy(self) -> Any:
        """J as a ``scipy.sparse.linalg.LinearOperator`` of shape (P, P), dtype ``self.dtype``.

        ``A @ v`` is J v, ``A.T @ w`` (or ``A.rmatvec``) is Jᵀ w, and ``A @ V`` for V: (P, k)
        runs the k products as one block. It composes with scipy's solvers and with curvature
        operators (e.g. curvlinops) like any other LinearOperator::

            sigma = scipy.sparse.linalg.svds(op.to_scipy(), k=5, return_singular_vectors=False)
        """
        from scipy.sparse.linalg import LinearOperator

        def matmat(X: np.ndarray) -> np.ndarray:
            return np.asarray(self.matvec(np.asarray(X).T)).T

        def rmatmat(X: np.ndarray) -> np.ndarray:
            return np.asarray(self.rmatvec(np.asarray(X).T)).T

        return LinearOperator(self.shape, dtype=self.dtype,
                              matvec=lambda v: matmat(np.reshape(v, (-1, 1)))[:, 0],
                              rmatvec=lambda w: rmatmat(np.reshape(w, (-1, 1)))[:, 0],
                              matmat=matmat, rmatmat=rmatmat)

    def block_operator(self) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """``X (b, P) -> (JᵀJ X, J X)`` as NumPy arrays, for :mod:`trainmap.jacobian.matrix_free.lanczos`."""
        return self.gram
