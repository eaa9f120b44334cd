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

import hashlib
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

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


# ----------------------------------------------------------------------------- state
class TrainState(NamedTuple):
    """The state of a training run between two steps (a pytree).

    Attributes:
        theta: (P,) flat parameters.
        opt_state: the optax optimizer's state (on the model's parameter pytree).
        anchor: (P,) the initial parameters θ₀ when the recipe has a ``project`` map (which reads
            them), else None.
    """

    theta: jax.Array
    opt_state: Any
    anchor: jax.Array | None = None


def _dtype(leaf: Any) -> np.dtype:
    return leaf.dtype if hasattr(leaf, "dtype") else jnp.asarray(leaf).dtype


@dataclass(frozen=True)
class StateLayout:
    """How the optimizer state splits into float leaves (differentiated) and the rest (counters).

    Attributes:
        treedef: the optimizer state's pytree structure.
        is_float: one flag per leaf: True for inexact leaves, which carry tangents.
        float_shapes: shapes of the float leaves (each tangent adds a leading K).
    """

    treedef: Any
    is_float: tuple[bool, ...]
    float_shapes: tuple[tuple[int, ...], ...]

    @staticmethod
    def of(state: Any) -> "StateLayout":
        leaves, treedef = jax.tree_util.tree_flatten(state)
        is_float = tuple(bool(jnp.issubdtype(_dtype(leaf), jnp.inexact)) for leaf in leaves)
        shapes = tuple(tuple(jnp.shape(leaf)) for leaf, f in zip(leaves, is_float) if f)
        return StateLayout(treedef, is_float, shapes)

    def split(self, state: Any) -> tuple[list, list]:
        """(float leaves, other leaves) of ``state``."""
        leaves = jax.tree_util.tree_leaves(state)
        return ([x for x, f in zip(leaves, self.is_float) if f],
                [x for x, f in zip(leaves, self.is_float) if not f])

    def join(self, floats: Sequence, others: Sequence) -> Any:
        """The inverse of :meth:`split`."""
        fi, oi = iter(floats), iter(others)
        return self.treedef.unflatten([next(fi) if f else next(oi) for f in self.is_float])


class TrainRecord(NamedTuple):
    """What :meth:`Recipe.run` records.

    Attributes:
        theta_T: (P,) final parameters (runs first for :meth:`Recipe.run_many`).
        losses: (T,) training loss of each step's batch, before that step's update.
        steps: (R,) step indices at which the run was observed (0 = initial).
        params: (R, P) recorded flat parameters, or None.
        probe_outputs: (R, N_probe, C) model outputs on the probe inputs, or None.
        observed: (R, ...) pytree of ``observe(state)`` at the recorded steps, or None.
    """

    theta_T: jax.Array
    losses: jax.Array
    steps: np.ndarray
    params: jax.Array | None
    probe_outputs: jax.Array | None
    observed: Any = None


def record_steps(num_steps: int, record_every: int) -> np.ndarray:
    """Steps 0, k, 2k, ... and the last step T (``record_every`` = k; k <= 0: only 0 and T)."""
    k = num_steps if record_every <= 0 else int(record_every)
    steps = list(range(0, num_steps + 1, k))
    if steps[-1] != num_steps:
        steps.append(num_steps)
    return np.asarray(steps)


# ----------------------------------------------------------------------------- recipe
@dataclass(frozen=True, eq=False)
class Recipe:
    """One training run, minus its initial parameters: the JAX implementation of
    :class:`~trainmap.protocol.TrainingMap`.

    Like an optax transform, a recipe is a pair of pure functions, :meth:`init` and :meth:`step`;
    :meth:`train`, :meth:`run` and :meth:`run_many` scan them over the batch schedule, and every
    trainer in the package goes through them.

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
        project: optional ``project(params, params0) -> params`` applied after every update (a
            constraint such as a fixed weight norm); it reads the initial parameters.
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
    project: Callable[[Params, Params], Params] | None = None

    #: engines may trace this recipe's functions with JAX (see :class:`~trainmap.protocol.TrainingMap`)
    backend = "jax"

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
            self.unravel, self.num_params, {**self.config, **config}, self.project,
        )

    def inputs(self, dtype: Any) -> tuple[jax.Array, jax.Array]:
        """The training data as JAX arrays: (x (N, ...), y (N, ...)); float arrays cast to ``dtype``."""
        x = jnp.asarray(self.x)
        if jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(dtype)
        y = jnp.asarray(self.y)
        if jnp.issubdtype(y.dtype, jnp.floating):
            y = y.astype(dtype)
        return x, y

    def check_theta(self, theta0: Any) -> jax.Array:
        """``theta0`` as a JAX array, or a ValueError when it is not a (P,) vector."""
        theta0 = jnp.asarray(theta0)
        if theta0.shape != (self.num_params,):
            raise ValueError(
                f"theta0 must be a flat vector of shape ({self.num_params},), got {theta0.shape}; "
                "use jax.flatten_util.ravel_pytree(params)[0]"
            )
        if self not in _LABELS_CHECKED:
            self._check_labels(theta0)
            _LABELS_CHECKED.add(self)
        return theta0

    def _check_labels(self, theta0: jax.Array) -> None:
        """Integer class labels y: (N,) must lie in [0, C), C the model's output width."""
        y = np.asarray(self.y)
        if not (np.issubdtype(y.dtype, np.integer) and y.ndim == 1):
            return
        x1 = np.asarray(self.x)[:1]
        out = jax.eval_shape(lambda t: self.apply(self.unravel(t), x1),
                             jax.ShapeDtypeStruct(theta0.shape, theta0.dtype))
        if len(out.shape) != 2 or out.shape[1] < 2:
            return
        C = int(out.shape[1])
        bad = np.flatnonzero((y < 0) | (y >= C))
        if bad.size:
            raise ValueError(
                f"y holds class labels outside [0, {C}): y[{bad[0]}] = {y[bad[0]]} ({bad.size} of {y.size} "
                f"labels), but the model outputs {C} classes; fix the labels (integers 0..{C - 1}) "
                "or widen the model's output layer")

    def predict(self, theta: Any, x: Any) -> jax.Array:
        """Model outputs (N, C) at flat parameters ``theta`` (P,); float inputs cast to theta's dtype."""
        theta = jnp.asarray(theta)
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(theta.dtype)
        return self.apply(self.unravel(theta), x)

    # ------------------------------------------------------------------ the pure pair
    def init(self, theta0: jax.Array) -> TrainState:
        """The state before the first step. theta0: (P,) flat parameters (their dtype is kept)."""
        theta0 = self.check_theta(theta0)
        anchor = theta0 if self.project is not None else None
        return TrainState(theta0, self.optimizer.init(self.unravel(theta0)), anchor)

    def update_params(self, params: Params, opt_state: Any, grads: Params,
                      anchor: jax.Array | None = None) -> tuple[Params, Any]:
        """The optimizer's half of a step, on the parameter pytree: ``(params', opt_state')``.

        ``grads`` is the batch loss's gradient at ``params``; ``anchor`` is the state's θ₀ (read
        by ``project``). This is the only place where updates are applied.
        """
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if self.project is not None:
            params = self.project(params, self.unravel(anchor))
        return params, opt_state

    def step_with_loss(self, state: TrainState, batch_index: jax.Array) -> tuple[TrainState, jax.Array]:
        """One optimizer step on the batch ``batch_index`` ((B,) indices into x/y).

        Returns:
            (the next state, the batch's loss before the update).
        """
        theta = state.theta
        x, y = self.inputs(theta.dtype)
        params = self.unravel(theta)

        def tree_loss(p: Params) -> jax.Array:
            return self.loss(self.apply(p, x[batch_index]), y[batch_index])

        loss, grads = jax.value_and_grad(tree_loss)(params)
        params, opt_state = self.update_params(params, state.opt_state, grads, state.anchor)
        return TrainState(ravel_pytree(params)[0].astype(theta.dtype), opt_state, state.anchor), loss

    def step(self, state: TrainState, batch_index: jax.Array) -> TrainState:
        """One optimizer step: ``state -> state`` on the batch ``batch_index`` ((B,) indices)."""
        return self.step_with_loss(state, batch_index)[0]

    # ------------------------------------------------------------------ whole runs
    def train_with_losses(self, theta0: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Like :meth:`train` but also returns the (T,) per-step batch losses."""
        state, losses = jax.lax.scan(self.step_with_loss, self.init(theta0), jnp.asarray(self.batches))
        return state.theta, losses

    def train(self, theta0: jax.Array) -> jax.Array:
        """Run the whole training. Pure and differentiable.

        Args:
            theta0: (P,) initial flat parameters; their dtype sets the computation's dtype.

        Returns:
            (P,) final flat parameters theta_T.
        """
        return self.train_with_losses(theta0)[0]

    def train_checkpointed(self, theta0: jax.Array, segment: int | None = None) -> jax.Array:
        """:meth:`train` with its reverse pass rematerialised in segments of ``segment`` steps.

        The forward pass keeps only the state at segment boundaries; reverse mode recomputes one
        segment at a time, so its memory is O(√T · state) for the default ``segment`` = ⌈√T⌉
        instead of O(T · residuals). ``segment=0`` is the plain :meth:`train`. Values equal
        :meth:`train`'s.
        """
        T = self.num_steps
        if segment == 0:
            return self.train(theta0)
        s = default_segment(T) if segment is None else int(segment)
        if s < 1:
            raise ValueError(f"segment must be >= 0 (0: no checkpointing), got {segment}")
        s = min(s, T)
        n_seg, rem = divmod(T, s)
        batches = jnp.asarray(self.batches)

        @jax.checkpoint
        def run_segment(state: TrainState, idx: jax.Array) -> tuple[TrainState, None]:
            return jax.lax.scan(self.step_with_loss, state, idx)[0], None

        state, _ = jax.lax.scan(run_segment, self.init(theta0), batches[: n_seg * s].reshape(n_seg, s, -1))
        if rem:
            state, _ = run_segment(state, batches[n_seg * s:])
        return state.theta

    def jvp(self, theta0: jax.Array, V: jax.Array) -> jax.Array:
        """J V as rows: V (k, P) -> (k, P), row i = J v_i (vmapped forward mode; not jitted)."""
        return jax.vmap(lambda v: jax.jvp(self.train, (theta0,), (v,))[1])(V)

    def vjp(self, theta0: jax.Array, W: jax.Array, segment: int | None = None) -> jax.Array:
        """Jᵀ W as rows: W (k, P) -> (k, P), row i = Jᵀ w_i (reverse mode through
        :meth:`train_checkpointed` with ``segment``; not jitted)."""
        _, pullback = jax.vjp(lambda t: self.train_checkpointed(t, segment), theta0)
        return jax.vmap(lambda w: pullback(w)[0])(W)

    def linearized_steps(self, theta0: jax.Array,
                         rule: Callable[[TrainState, jax.Array], tuple[TrainState, Any]] | None = None,
                         ) -> tuple[Callable[[jax.Array], Any], StateLayout]:
        """Training once, keeping each step's linearisation (the exact engine's primal pass).

        Args:
            theta0: (P,) initial parameters (only their shape and dtype are read here).
            rule: ``rule(state, batch_index) -> (next state, linear map)``: a specialised tangent
                rule (e.g. the exact engine's MLP rules) returning any pytree; None: JAX's
                ``linearize`` of :meth:`step` in (θ, float leaves of the optimizer state), whose
                linear map is ``(dθ: (P,), ds: list of float leaves) -> (dθ', ds')``.

        Returns:
            ``(primal, layout)``: ``primal(theta0)`` is pure (jit it) and returns the pytree of
            the T steps' linear maps stacked over steps (every leaf (T, ...));
            ``jax.eval_shape(primal, theta0)`` sizes it without computing. ``layout`` splits
            the optimizer state into float and other leaves.
        """
        state_shape = jax.eval_shape(self.init, theta0)
        layout = StateLayout.of(state_shape.opt_state)

        def default_rule(state: TrainState, idx: jax.Array) -> tuple[TrainState, Any]:
            floats, others = layout.split(state.opt_state)

            def f(th: jax.Array, fl: list) -> tuple:
                nxt = self.step(TrainState(th, layout.join(fl, others), state.anchor), idx)
                f2, o2 = layout.split(nxt.opt_state)
                return (nxt.theta, f2), o2

            (theta2, floats2), lin, others2 = jax.linearize(f, state.theta, floats, has_aux=True)
            return TrainState(theta2, layout.join(floats2, others2), state.anchor), lin

        body = default_rule if rule is None else rule

        def primal(theta: jax.Array) -> Any:
            return jax.lax.scan(body, self.init(theta), jnp.asarray(self.batches))[1]

        return primal, layout

    def fingerprint(self) -> str:
        """A SHA-256 of everything that determines the run given θ₀: the program of one training
        step (its jaxpr, traced at float32, with every constant: data, learning rates, model),
        the batch order and the size P. Two recipes built differently (another optimizer,
        learning rate, model or loss) differ here even when their ``config`` is the same."""
        cached = _FINGERPRINTS.get(self)
        if cached is not None:
            return cached
        theta = jax.ShapeDtypeStruct((self.num_params,), jnp.float32)
        state = jax.eval_shape(self.init, theta)
        idx = jax.ShapeDtypeStruct(np.shape(self.batches)[1:], jnp.asarray(self.batches).dtype)
        closed = jax.make_jaxpr(self.step_with_loss)(state, idx)
        h = hashlib.sha256()
        h.update(str(closed.jaxpr).encode())
        for c in closed.consts:
            a = np.asarray(c)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(np.ascontiguousarray(np.asarray(self.batches)).tobytes())
        h.update(f"P={self.num_params}".encode())
        digest = h.hexdigest()
        _FINGERPRINTS[self] = digest
        return digest

    def advance(self, state: TrainState, start: Any, stop: Any,
                batches: jax.Array | None = None) -> TrainState:
        """Steps ``start .. stop - 1`` of the schedule (``batches``: another (T, B) schedule).

        ``start`` and ``stop`` may be traced (``lax.fori_loop``), so one compiled program serves
        every segment of a recorded run."""
        sched = jnp.asarray(self.batches if batches is None else batches)
        return jax.lax.fori_loop(start, stop, lambda i, s: self.step(s, sched[i]), state)

    def run(
        self,
        theta0: jax.Array,
        record_every: int = 0,
        probe: Any = None,
        record_params: bool = True,
        observe: Callable[[TrainState], Any] | None = None,
        batches: jax.Array | None = None,
    ) -> TrainRecord:
        """Train and record the trajectory every ``record_every`` steps.

        Args:
            theta0: (P,) initial flat parameters.
            record_every: k > 0 records at steps 0, k, 2k, ... and the last step T; 0 records
                only the initial and final points.
            probe: optional (N_probe, ...) inputs on which outputs are recorded.
            record_params: whether to keep the (R, P) parameter trajectory.
            observe: optional ``observe(state) -> pytree`` recorded at the same steps (e.g. one
                layer's weights, or metrics).
            batches: another (T, B) schedule of the same shape (may be traced: ``vmap`` over
                per-run data orders).

        Returns:
            A :class:`TrainRecord`. Pure: ``jax.jit`` and ``jax.vmap`` apply.
        """
        T = self.num_steps
        k = T if record_every <= 0 else int(record_every)
        probe_arr = None
        if probe is not None:
            probe_arr = jnp.asarray(probe)
            if jnp.issubdtype(probe_arr.dtype, jnp.floating):
                probe_arr = probe_arr.astype(jnp.asarray(theta0).dtype)

        def snapshot(state: TrainState) -> tuple:
            theta = state.theta
            p = theta if record_params else None
            o = self.apply(self.unravel(theta), probe_arr) if probe_arr is not None else None
            return p, o, None if observe is None else observe(state)

        n_blocks, rem = divmod(T, k)
        batches = jnp.asarray(self.batches if batches is None else batches)

        def block(state: TrainState, idx_block: jax.Array) -> tuple[TrainState, tuple]:
            state, losses = jax.lax.scan(self.step_with_loss, state, idx_block)
            return state, (losses, snapshot(state))

        state0 = self.init(theta0)
        state, (block_losses, snaps) = jax.lax.scan(
            block, state0, batches[: n_blocks * k].reshape(n_blocks, k, -1))
        losses = [block_losses.reshape(-1)]
        pieces = [jax.tree_util.tree_map(lambda a: a[None], snapshot(state0)), snaps]
        if rem:
            state, rem_losses = jax.lax.scan(self.step_with_loss, state, batches[n_blocks * k:])
            losses.append(rem_losses)
            pieces.append(jax.tree_util.tree_map(lambda a: a[None], snapshot(state)))
        stacked = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *pieces)
        return TrainRecord(state.theta, jnp.concatenate(losses), record_steps(T, k), *stacked)

    def run_many(
        self,
        thetas: Any,
        steps: Sequence[int],
        observe: Callable[[TrainState], Any],
        batches: Any = None,
        states: TrainState | None = None,
        progress: bool = False,
        label: str = "training runs",
    ) -> tuple[TrainState, Any]:
        """Train S runs at once (``vmap``) and observe them at chosen steps.

        Args:
            thetas: (S, P) initial parameters, one row per run.
            steps: (R,) increasing steps in [0, T] at which ``observe(state)`` is recorded.
            observe: ``observe(state) -> pytree`` of one run (vmapped over runs).
            batches: (S, T, B) per-run batch schedules; None: every run uses :attr:`batches`.
            states: initial states with a leading S axis (e.g. per-run hyper-parameters in the
                optimizer state); None: ``vmap(init)(thetas)``.
            progress: show progress over the recorded steps.
            label: the progress label.

        Returns:
            (final states with leading S, observations with leading (S, R) as NumPy).
        """
        from trainmap._progress import progress as _progress

        thetas = jnp.asarray(thetas)
        steps_arr = np.asarray(steps, dtype=np.int64)
        T = self.num_steps
        if steps_arr.size == 0 or steps_arr.min() < 0 or steps_arr.max() > T or np.any(np.diff(steps_arr) <= 0):
            raise ValueError(f"steps must be increasing integers in [0, {T}], got {steps_arr.tolist()}")
        sched = (jnp.broadcast_to(jnp.asarray(self.batches), (thetas.shape[0], *np.shape(self.batches)))
                 if batches is None else jnp.asarray(batches))
        state = jax.vmap(self.init)(thetas) if states is None else states
        advance = _compiled(self, "advance_many", lambda: jax.jit(
            jax.vmap(self.advance, in_axes=(0, None, None, 0))))
        look = jax.jit(jax.vmap(observe))
        rows, done = [], 0
        with _progress(progress, len(steps_arr), label) as tick:
            for s in steps_arr:
                if int(s) > done:
                    state = advance(state, done, int(s), sched)
                done = int(s)
                rows.append(jax.tree_util.tree_map(np.asarray, look(state)))
                tick()
        return state, jax.tree_util.tree_map(lambda *r: np.stack(r, axis=1), *rows)


def default_segment(num_steps: int) -> int:
    """s = ⌈√T⌉, the segment length that balances stored boundaries against one segment's residuals."""
    return max(1, math.isqrt(max(num_steps - 1, 0)) + 1) if num_steps > 1 else 1


_FINGERPRINTS: "weakref.WeakKeyDictionary[Recipe, str]" = weakref.WeakKeyDictionary()
_LABELS_CHECKED: "weakref.WeakSet[Recipe]" = weakref.WeakSet()
_COMPILED: "weakref.WeakKeyDictionary[Recipe, dict]" = weakref.WeakKeyDictionary()


def _compiled(recipe: Recipe, key: Any, build: Callable[[], Callable]) -> Callable:
    """A compiled function per recipe and key, built once (runs of the same recipe reuse XLA's
    compilation)."""
    per = _COMPILED.setdefault(recipe, {})
    if key not in per:
        per[key] = build()
    return per[key]


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
    project: Callable[[Params, Params], Params] | None = None,
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
        project: optional ``project(params, params0) -> params`` after every update
            (see :class:`Recipe`).
    """
    if isinstance(loss, str) and loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass a callable")
    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    batches = epoch_batches(np.shape(x)[0], batch_size, epochs, shuffle_seed)
    cfg = dict(batch_size=batch_size, epochs=epochs, shuffle_seed=shuffle_seed,
               loss=loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"))
    cfg.update(config or {})
    return Recipe(apply, loss_fn, optimizer, x, y, batches, unravel, int(num_params), cfg, project)


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
    return classification_metrics(apply(unravel(theta), jnp.asarray(x, dtype=theta.dtype)), y)


def classification_metrics(logits: Any, y: Any) -> dict[str, float]:
    """Cross-entropy loss and accuracy of outputs ``logits`` (N, C) against labels ``y`` (N,),
    for any backend's outputs (NumPy, JAX). Returns ``{"loss": float, "accuracy": float}``."""
    logits = jnp.asarray(np.asarray(logits))
    labels = jnp.asarray(np.asarray(y))
    return {
        "loss": float(cross_entropy(logits, labels)),
        "accuracy": float(jnp.mean(jnp.argmax(logits, -1) == labels)),
    }


def check_training(recipe: Any, theta0: Any) -> tuple[Any, np.ndarray]:
    """Run training once (any :class:`~trainmap.protocol.TrainingMap`) and stop with a clear error
    if it diverged.

    Returns:
        (theta_T (P,), per-step losses (T,) as NumPy).

    Raises:
        TrainingDivergedError: if any loss or final parameter is NaN/inf; the message names the
            first bad step and suggests a smaller learning rate.
    """
    if not bool(np.all(np.isfinite(np.asarray(theta0)))):
        raise ValueError("theta0 contains NaN/inf values; initialise the parameters again")
    from trainmap.protocol import jit_if_traceable

    theta_T, losses = jit_if_traceable(recipe, recipe.train_with_losses)(theta0)
    losses = np.asarray(losses)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size or not bool(np.all(np.isfinite(np.asarray(theta_T)))):
        first = int(bad[0]) if bad.size else recipe.num_steps
        raise TrainingDivergedError(
            f"training diverged: the loss became NaN/inf at step {first} of {recipe.num_steps}. "
            "Lower the learning rate (or check the data); the training Jacobian of a diverged "
            "run is meaningless."
        )
    return theta_T, losses
