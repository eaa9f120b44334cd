"""``Recipe``: one training run as a pure, differentiable function ``theta0 -> thetaT``.

A recipe fixes everything about a run except the initial parameters: the model's ``apply``, the
loss, an optax optimizer (schedules included), the training data and a deterministic batch
schedule. ``recipe.train(theta0)`` is built on ``lax.scan`` and can be jitted, vmapped and
differentiated (forward or reverse mode) like any JAX function; the training Jacobian is
``jax.jacfwd(recipe.train)(theta0)``.

Parameters cross the boundary as flat vectors of length P (``jax.flatten_util.ravel_pytree``);
inside, the optimizer sees the model's own pytree, so structure-aware optax transforms (masks,
``multi_transform``) work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

Params = Any


class TrainingDivergedError(RuntimeError):
    """Raised when the training loss or the parameters become NaN or infinite."""


# ----------------------------------------------------------------------------- losses
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy. logits: (B, C); labels: (B,) integer classes. Returns a scalar."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))


def mean_squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over the batch of ½‖f(x) − y‖². outputs, targets: (B, K) or (B,). Returns a scalar."""
    diff = (outputs - targets).reshape(outputs.shape[0], -1)
    return 0.5 * jnp.mean(jnp.sum(diff**2, axis=-1))


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "cross_entropy": cross_entropy,
    "mse": mean_squared_error,
}


# ----------------------------------------------------------------------------- schedules
def epoch_batches(
    num_samples: int, batch_size: int, epochs: int, shuffle_seed: int | None = 0
) -> np.ndarray:
    """A deterministic batch schedule: ``epochs`` passes over ``num_samples`` samples.

    Each epoch is a permutation drawn from ``numpy.random.default_rng(shuffle_seed)`` (or the
    natural order when ``shuffle_seed`` is None), cut into ``num_samples // batch_size`` full
    batches; a last partial batch is dropped so every step has the same shape.

    Returns:
        (T, batch_size) int32 sample indices, T = epochs * (num_samples // batch_size).
    """
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {batch_size} and {epochs}")
    if batch_size > num_samples:
        raise ValueError(f"batch_size {batch_size} exceeds the number of samples {num_samples}")
    per_epoch = num_samples // batch_size
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    rows = []
    for _ in range(epochs):
        order = rng.permutation(num_samples) if rng is not None else np.arange(num_samples)
        rows.append(order[: per_epoch * batch_size].reshape(per_epoch, batch_size))
    return np.concatenate(rows).astype(np.int32)


# ----------------------------------------------------------------------------- recipe
class TrainRecord(NamedTuple):
    """What :meth:`Recipe.run` records.

    Attributes:
        theta_T: (P,) final parameters.
        losses: (T,) training loss of each step's batch, before that step's update.
        steps: (R,) step indices at which parameters were recorded (0 = initial).
        params: (R, P) recorded flat parameters, or None.
        probe_outputs: (R, N_probe, C) model outputs on the probe inputs, or None.
    """

    theta_T: jax.Array
    losses: jax.Array
    steps: np.ndarray
    params: jax.Array | None
    probe_outputs: jax.Array | None


@dataclass(frozen=True, eq=False)
class Recipe:
    """One training run, minus its initial parameters.

    Attributes:
        apply: ``apply(params, x) -> outputs``; x: (B, ...), outputs: (B, C).
        loss: ``loss(outputs, targets) -> scalar`` (mean over the batch).
        optimizer: any ``optax.GradientTransformation`` (schedules included).
        x: (N, ...) training inputs (NumPy or JAX array).
        y: (N, ...) training targets.
        batches: (T, B) integer indices into x/y, one row per step: the fixed data order.
        unravel: maps a flat (P,) vector to the model's parameter pytree.
        num_params: P.
        config: JSON-able description of how the recipe was built (written to config.json).
    """

    apply: Callable[[Params, jax.Array], jax.Array]
    loss: Callable[[jax.Array, jax.Array], jax.Array]
    optimizer: optax.GradientTransformation
    x: Any
    y: Any
    batches: np.ndarray
    unravel: Callable[[jax.Array], Params]
    num_params: int
    config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        batches = np.asarray(self.batches)
        n = np.shape(self.x)[0]
        if np.shape(self.y)[0] != n:
            raise ValueError(
                f"x and y disagree on the number of samples: x has {n}, y has {np.shape(self.y)[0]}"
            )
        if batches.ndim != 2 or batches.shape[0] < 1:
            raise ValueError(f"batches must be a (T, B) index array, got shape {batches.shape}")
        if batches.min() < 0 or batches.max() >= n:
            raise ValueError(f"batch indices must lie in [0, {n}), got [{batches.min()}, {batches.max()}]")
        x = np.asarray(self.x)
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            bad = int(np.sum(~np.isfinite(x)))
            raise ValueError(f"x contains {bad} NaN/inf values; clean or impute the inputs first")
        y = np.asarray(self.y)
        if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
            raise ValueError("y contains NaN/inf values; clean the targets first")

    # ------------------------------------------------------------------ properties
    @property
    def num_steps(self) -> int:
        """T, the number of optimizer steps."""
        return int(np.shape(self.batches)[0])

    def with_data(self, x: Any = None, y: Any = None, batches: Any = None, **config: Any) -> "Recipe":
        """A copy with other training data or batch order (same model, loss and optimizer)."""
        return Recipe(
            self.apply, self.loss, self.optimizer,
            self.x if x is None else x, self.y if y is None else y,
            self.batches if batches is None else np.asarray(batches),
            self.unravel, self.num_params, {**self.config, **config},
        )

    # ------------------------------------------------------------------ core
    def _data(self, dtype: Any) -> tuple[jax.Array, jax.Array]:
        x = jnp.asarray(self.x)
        if jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(dtype)
        y = jnp.asarray(self.y)
        if jnp.issubdtype(y.dtype, jnp.floating):
            y = y.astype(dtype)
        return x, y

    def _check_theta(self, theta0: jax.Array) -> jax.Array:
        theta0 = jnp.asarray(theta0)
        if theta0.shape != (self.num_params,):
            raise ValueError(
                f"theta0 must be a flat vector of shape ({self.num_params},), got {theta0.shape}; "
                "use jax.flatten_util.ravel_pytree(params)[0]"
            )
        return theta0

    def _step_fn(self, x: jax.Array, y: jax.Array, dtype: Any) -> Callable:
        """One optimizer step on the flat parameters: (theta, opt_state), idx -> ..., loss."""

        def step(carry: tuple, idx: jax.Array) -> tuple[tuple, jax.Array]:
            theta, opt_state = carry
            params = self.unravel(theta)

            def tree_loss(p: Params) -> jax.Array:
                return self.loss(self.apply(p, x[idx]), y[idx])

            loss, grads = jax.value_and_grad(tree_loss)(params)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            new_theta = ravel_pytree(params)[0].astype(dtype)
            return (new_theta, opt_state), loss

        return step

    def _init_state(self, theta0: jax.Array) -> Any:
        return self.optimizer.init(self.unravel(theta0))

    def train(self, theta0: jax.Array) -> jax.Array:
        """Run the whole training. Pure and differentiable.

        Args:
            theta0: (P,) initial flat parameters; their dtype sets the computation's dtype.

        Returns:
            (P,) final flat parameters theta_T.
        """
        theta0 = self._check_theta(theta0)
        x, y = self._data(theta0.dtype)
        step = self._step_fn(x, y, theta0.dtype)
        (theta, _), _ = jax.lax.scan(step, (theta0, self._init_state(theta0)), jnp.asarray(self.batches))
        return theta

    def train_with_losses(self, theta0: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Like :meth:`train` but also returns the (T,) per-step batch losses."""
        theta0 = self._check_theta(theta0)
        x, y = self._data(theta0.dtype)
        step = self._step_fn(x, y, theta0.dtype)
        (theta, _), losses = jax.lax.scan(
            step, (theta0, self._init_state(theta0)), jnp.asarray(self.batches)
        )
        return theta, losses

    def run(
        self,
        theta0: jax.Array,
        record_every: int = 0,
        probe: Any = None,
        record_params: bool = True,
    ) -> TrainRecord:
        """Train and record the trajectory every ``record_every`` steps.

        Args:
            theta0: (P,) initial flat parameters.
            record_every: k > 0 records at steps 0, k, 2k, ... and the last step T; 0 records
                only the initial and final points.
            probe: optional (N_probe, ...) inputs on which outputs are recorded.
            record_params: whether to keep the (R, P) parameter trajectory.

        Returns:
            A :class:`TrainRecord`.
        """
        theta0 = self._check_theta(theta0)
        T = self.num_steps
        k = T if record_every <= 0 else int(record_every)
        x, y = self._data(theta0.dtype)
        step = self._step_fn(x, y, theta0.dtype)
        batches = jnp.asarray(self.batches)
        probe_arr = None
        if probe is not None:
            probe_arr = jnp.asarray(probe)
            if jnp.issubdtype(probe_arr.dtype, jnp.floating):
                probe_arr = probe_arr.astype(theta0.dtype)

        def snapshot(theta: jax.Array) -> tuple:
            p = theta if record_params else None
            o = self.apply(self.unravel(theta), probe_arr) if probe_arr is not None else None
            return p, o

        n_blocks, rem = divmod(T, k)

        def block(carry: tuple, idx_block: jax.Array) -> tuple[tuple, tuple]:
            carry, losses = jax.lax.scan(step, carry, idx_block)
            return carry, (losses, snapshot(carry[0]))

        carry = (theta0, self._init_state(theta0))
        carry, (block_losses, snaps) = jax.lax.scan(
            block, carry, batches[: n_blocks * k].reshape(n_blocks, k, -1)
        )
        losses = [block_losses.reshape(-1)]
        steps = list(range(0, T + 1 - rem, k))
        first = snapshot(theta0)
        parts = [(first[0], first[1])]
        if rem:
            carry, rem_losses = jax.lax.scan(step, carry, batches[n_blocks * k:])
            losses.append(rem_losses)
            last = snapshot(carry[0])
            steps.append(T)

        def stack(i: int) -> jax.Array | None:
            if parts[0][i] is None:
                return None
            pieces = [parts[0][i][None], snaps[i]]
            if rem:
                pieces.append(last[i][None])
            return jnp.concatenate(pieces)

        return TrainRecord(carry[0], jnp.concatenate(losses), np.asarray(steps), stack(0), stack(1))


# ----------------------------------------------------------------------------- builders
def flat_params(model_init: Callable[[jax.Array], Params], seed: int) -> tuple[jax.Array, Callable]:
    """Initialise a model with ``jax.random.key(seed)`` and flatten it.

    Returns:
        (theta0 of shape (P,), unravel function).
    """
    params = model_init(jax.random.key(seed))
    theta0, unravel = ravel_pytree(params)
    return theta0, unravel


def make_recipe(
    apply: Callable[[Params, jax.Array], jax.Array],
    unravel: Callable[[jax.Array], Params],
    num_params: int,
    x: Any,
    y: Any,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    epochs: int,
    shuffle_seed: int | None = 0,
    loss: str | Callable[[jax.Array, jax.Array], jax.Array] = "cross_entropy",
    config: dict | None = None,
) -> Recipe:
    """Build a :class:`Recipe` with an epoch-based, seeded batch schedule.

    Args:
        apply, unravel, num_params: the model (see :func:`flat_params`).
        x: (N, ...) inputs; y: (N,) labels or (N, K) regression targets.
        optimizer: an optax optimizer.
        batch_size, epochs: schedule size; T = epochs * (N // batch_size) steps.
        shuffle_seed: seed of the per-epoch permutations (None: no shuffling).
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``loss(outputs, targets) -> scalar``.
        config: JSON-able description stored with results.
    """
    if isinstance(loss, str) and loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass a callable")
    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    batches = epoch_batches(np.shape(x)[0], batch_size, epochs, shuffle_seed)
    cfg = dict(batch_size=batch_size, epochs=epochs, shuffle_seed=shuffle_seed,
               loss=loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"))
    cfg.update(config or {})
    return Recipe(apply, loss_fn, optimizer, x, y, batches, unravel, int(num_params), cfg)


def evaluate(
    apply: Callable[[Params, jax.Array], jax.Array],
    unravel: Callable[[jax.Array], Params],
    theta: jax.Array,
    x: Any,
    y: Any,
) -> dict[str, float]:
    """Cross-entropy loss and accuracy of flat parameters ``theta`` on (x, y).

    Returns:
        ``{"loss": float, "accuracy": float}``; accuracy in [0, 1].
    """
    theta = jnp.asarray(theta)
    logits = apply(unravel(theta), jnp.asarray(x, dtype=theta.dtype))
    labels = jnp.asarray(y)
    return {
        "loss": float(cross_entropy(logits, labels)),
        "accuracy": float(jnp.mean(jnp.argmax(logits, -1) == labels)),
    }


def check_training(recipe: Recipe, theta0: jax.Array) -> tuple[jax.Array, np.ndarray]:
    """Run training once and stop with a clear error if it diverged.

    Returns:
        (theta_T (P,), per-step losses (T,) as NumPy).

    Raises:
        TrainingDivergedError: if any loss or final parameter is NaN/inf; the message names the
            first bad step and suggests a smaller learning rate.
    """
    if not bool(jnp.all(jnp.isfinite(jnp.asarray(theta0)))):
        raise ValueError("theta0 contains NaN/inf values; initialise the parameters again")
    theta_T, losses = jax.jit(recipe.train_with_losses)(theta0)
    losses = np.asarray(losses)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size or not bool(jnp.all(jnp.isfinite(theta_T))):
        first = int(bad[0]) if bad.size else recipe.num_steps
        raise TrainingDivergedError(
            f"training diverged: the loss became NaN/inf at step {first} of {recipe.num_steps}. "
            "Lower the learning rate (or check the data); the training Jacobian of a diverged "
            "run is meaningless."
        )
    return theta_T, losses
