"""Hand-derived tangent rules for MLP recipes: the Hessian-vector products of training as GEMMs.

For an MLP ``h_l = σ(h_{l-1} W_l + b_l)`` (last layer linear) the tangent of one training step
along K directions needs the batch loss's Hessian applied to K parameter tangents. Second-order
backpropagation (the R-operator) gives it layer by layer, every product a GEMM with K·B rows or
K·fan columns:

forward, for l = 1..L (dh_0 = 0)::

    dz_l = h_{l-1} dW_l + dh_{l-1} W_l + db_l          (K, B, d_l)
    dh_l = σ'(z_l) ⊙ dz_l

loss curvature: ``de_L = lin_loss(dz_L)`` (the linearised gradient of the loss w.r.t. the
outputs, from JAX), backward for l = L..1::

    dgW_l = h_{l-1}ᵀ de_l + dh_{l-1}ᵀ e_l              (K, d_{l-1}, d_l)
    dgb_l = Σ_b de_l
    dr    = de_l W_lᵀ + e_l dW_lᵀ
    de_{l-1} = σ'(z_{l-1}) ⊙ dr + (r_{l-1} ⊙ σ''(z_{l-1})) ⊙ dz_{l-1}

where e_l = ∂L/∂z_l and r_{l-1} = e_l W_lᵀ come from the primal pass. The optimizer's tangent is
its own JAX linearisation (any optax optimizer). Everything that depends only on the primal —
activations h_l, σ'(z_l), r_l ⊙ σ''(z_l), e_l, W_l, the loss's and the optimizer's linearisation
residuals — is computed once by a primal pass and stored per step (the batch's inputs h_0 as
indices into the training inputs), so the per-chunk pass is only the K-batched products above.
Recomputing h_l, σ'(z_l) and r_l ⊙ σ''(z_l) from z_l per chunk would store 2.7x less but ran 1.5x
slower on the reference MLP, so they are stored.

:func:`detect_mlp` decides, numerically, whether a recipe is such an MLP (the path is chosen
automatically by :func:`~trainmap.jacobian.exact.exact_jacobian`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from trainmap.recipe import Recipe, StateLayout, TrainState

Params = Any


def _activations() -> dict[str, Callable[[jax.Array], jax.Array]]:
    from trainmap.models.mlp import ACTIVATIONS

    return dict(ACTIVATIONS)


@dataclass(frozen=True)
class MLPSpec:
    """An MLP recognised in a recipe.

    Attributes:
        activation: name of the hidden activation (a key of ``trainmap.models.mlp.ACTIVATIONS``).
        sizes: layer widths (d_0, ..., d_L).
    """

    activation: str
    sizes: tuple[int, ...]


def _mlp_apply(act: Callable, params: Params, x: jax.Array) -> jax.Array:
    h = x.reshape(x.shape[0], -1)
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            h = act(h)
    return h


def _structure(params: Params) -> tuple[int, ...] | None:
    if not isinstance(params, (list, tuple)) or not params:
        return None
    sizes: list[int] = []
    for layer in params:
        if not isinstance(layer, dict) or set(layer) != {"w", "b"}:
            return None
        w, b = jnp.shape(layer["w"]), jnp.shape(layer["b"])
        if len(w) != 2 or b != (w[1],) or (sizes and sizes[-1] != w[0]):
            return None
        sizes = sizes or [w[0]]
        sizes.append(w[1])
    return tuple(int(s) for s in sizes)


def detect_mlp(recipe: Recipe, theta0: jax.Array, rtol: float = 1e-4) -> MLPSpec | None:
    """Recognise an MLP recipe (as built by ``trainmap.models.mlp`` with biases) numerically.

    The parameter pytree must be a list of ``{"w": (d_{l-1}, d_l), "b": (d_l,)}`` layers, and for
    one of the known activations (the recipe's ``config["activation"]`` is tried first) the
    hand-written MLP must reproduce ``recipe.apply`` on the first batch at θ₀ and at a random
    perturbation of θ₀, and the hand-derived Hessian-vector product of the first step's loss must
    match JAX's ``jvp(grad)`` along a random direction (relative tolerance ``rtol``).

    Returns:
        An :class:`MLPSpec`, or None when the recipe is not (recognisably) such an MLP.
    """
    try:
        params = recipe.unravel(theta0)
        sizes = _structure(params)
        if sizes is None:
            return None
        x, y = recipe.inputs(theta0.dtype)
        idx = jnp.asarray(recipe.batches)[0]
        xb, yb = x[idx], y[idx]
        if int(np.prod(xb.shape[1:])) != sizes[0]:
            return None
        acts = _activations()
        first = recipe.config.get("activation")
        names = ([first] if first in acts else []) + [n for n in acts if n != first]
        theta1 = theta0 + 0.1 * jax.random.normal(jax.random.key(1234), theta0.shape, theta0.dtype)
        key = (str(theta0.dtype), float(rtol))
        cache = _DETECTED.setdefault(recipe, {})
        if key not in cache:
            cache[key] = next((MLPSpec(name, sizes) for name in names
                               if bool(_check(recipe, acts[name], theta0, theta1, xb, yb, rtol))), None)
        return cache[key]
    except Exception:  # any surprise in an unknown recipe means: not this fast path
        return None


_DETECTED: "weakref.WeakKeyDictionary[Recipe, dict]" = weakref.WeakKeyDictionary()


def _check(recipe: Recipe, act: Callable, theta0: jax.Array, theta1: jax.Array, xb: jax.Array,
           yb: jax.Array, rtol: float) -> bool:
    @jax.jit
    def same_outputs(theta0: jax.Array, theta1: jax.Array) -> jax.Array:
        ok = jnp.asarray(True)
        for th in (theta0, theta1):
            p = recipe.unravel(th)
            a, b = recipe.apply(p, xb), _mlp_apply(act, p, xb)
            if a.shape != b.shape:
                return jnp.asarray(False)
            ok &= jnp.allclose(a, b, rtol=rtol, atol=rtol * 1e-2)
        return ok

    if not bool(same_outputs(theta0, theta1)):
        return False
    return bool(jax.jit(lambda th: _hvp_agrees(recipe, act, th, xb, yb, rtol))(theta1))


def _hvp_agrees(recipe: Recipe, act: Callable, theta: jax.Array, xb: jax.Array, yb: jax.Array,
                rtol: float) -> jax.Array:
    params = recipe.unravel(theta)
    v = recipe.unravel(jax.random.normal(jax.random.key(99), theta.shape, theta.dtype))

    def loss(p: Params) -> jax.Array:
        return recipe.loss(recipe.apply(p, xb), yb)

    ref = ravel_pytree(jax.jvp(jax.grad(loss), (params,), (v,))[1])[0]
    aux = _primal_layers(act, recipe.loss, params, xb, yb)[1]
    dv = jax.tree_util.tree_map(lambda a: a[None], v)
    mine = ravel_pytree(jax.tree_util.tree_map(lambda a: a[0], _hvp(aux, dv)))[0]
    return jnp.linalg.norm(mine - ref) <= rtol * (jnp.linalg.norm(ref) + 1e-30)


def _derivs(act: Callable, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    d1 = jax.grad(act)
    d2 = jax.grad(d1)
    return jnp.vectorize(d1)(z), jnp.vectorize(d2)(z)


def _primal_layers(act: Callable, loss: Callable, params: Params, xb: jax.Array,
                   yb: jax.Array) -> tuple[Params, dict]:
    """Gradient of the batch loss and the per-step residuals of its Hessian-vector product.

    Returns:
        (grads, aux) with aux: ``hs`` [(B, d_{l-1})] layer inputs, ``gs`` [(B, d_l)] σ'(z_l),
        ``ss`` [(B, d_l)] r_l ⊙ σ''(z_l), ``es`` [(B, d_l)] ∂L/∂z_l, ``ws`` [(d_{l-1}, d_l)]
        (``es[0]`` and ``ws[0]`` are None: the tangent rules do not use them),
        ``lin_loss`` the linearised output gradient of the loss.
    """
    L = len(params)
    h = xb.reshape(xb.shape[0], -1)
    hs, gs, cs = [h], [], []
    z = h
    for i, layer in enumerate(params):
        z = h @ layer["w"] + layer["b"]
        if i < L - 1:
            g, c = _derivs(act, z)
            gs.append(g)
            cs.append(c)
            h = act(z)
            hs.append(h)
    e, lin_loss = jax.linearize(jax.grad(lambda o: loss(o, yb)), z)
    es: list = [None] * L
    ss: list = [None] * (L - 1)
    es[L - 1] = e
    grads: list = [None] * L
    for i in range(L - 1, -1, -1):
        grads[i] = {"b": es[i].sum(0), "w": hs[i].T @ es[i]}
        if i > 0:
            r = es[i] @ params[i]["w"].T
            ss[i - 1] = r * cs[i - 1]
            es[i - 1] = r * gs[i - 1]
    # e_1 and W_1 are not needed by the tangent rules (dh_0 = 0): keep None, store nothing
    aux = dict(hs=hs, gs=gs, ss=ss, es=[None] + es[1:], ws=[None] + [p["w"] for p in params[1:]],
               lin_loss=lin_loss)
    return grads, aux


def _compact(aux: dict, idx: jax.Array) -> dict:
    """What a step stores: everything :func:`_hvp` reads except the batch's inputs h_0, which are
    gathered again from the training inputs by the stored batch indices (:func:`_expand`)."""
    return dict(idx=idx, hs=aux["hs"][1:], gs=aux["gs"], ss=aux["ss"], es=aux["es"], ws=aux["ws"],
                lin_loss=aux["lin_loss"])


def _expand(stored: dict, x: jax.Array) -> dict:
    """The residuals of :func:`_primal_layers` from a step's :func:`_compact` form.

    x: (N, ...) the training inputs, indexed by the stored batch indices."""
    h0 = x[stored["idx"]].reshape(stored["idx"].shape[0], -1)
    return dict(stored, hs=[h0, *stored["hs"]])


def _hvp(aux: dict, dparams: Params) -> Params:
    """K Hessian-vector products at once. dparams: layers with leading K; returns the same shapes."""
    hs, gs, ss, es, ws = aux["hs"], aux["gs"], aux["ss"], aux["es"], aux["ws"]
    L = len(ws)
    dzs, dhs = [], [None]
    dh = None
    for i in range(L):
        dz = jnp.einsum("bi,kio->kbo", hs[i], dparams[i]["w"]) + dparams[i]["b"][:, None, :]
        if dh is not None:
            dz = dz + jnp.einsum("kbi,io->kbo", dh, ws[i])
        dzs.append(dz)
        if i < L - 1:
            dh = gs[i] * dz
            dhs.append(dh)
    de = jax.vmap(aux["lin_loss"])(dzs[-1])
    out: list = [None] * L
    for i in range(L - 1, -1, -1):
        dgw = jnp.einsum("bi,kbo->kio", hs[i], de)
        if i > 0:
            dgw = dgw + jnp.einsum("kbi,bo->kio", dhs[i], es[i])
        out[i] = {"b": de.sum(1), "w": dgw}
        if i > 0:
            dr = jnp.einsum("kbo,io->kbi", de, ws[i]) + jnp.einsum("bo,kio->kbi", es[i], dparams[i]["w"])
            de = gs[i - 1] * dr + ss[i - 1] * dzs[i - 1]
    return out


@dataclass
class MLPPrimal:
    """Stored per-step residuals of the MLP fast path (all leaves (T, ...)).

    Attributes:
        residuals: list of arrays, leading axis T (see :func:`_compact`).
        treedef: structure turning one step's residual leaves into ``(stored, lin_update)``.
        layout: the optimizer state's layout.
        num_params: P.
        dtype: float dtype.
        unravel: flat (P,) -> params pytree.
        x: (N, ...) training inputs, indexed by the stored batch indices.
        activation: name of the hidden activation.
    """

    residuals: list
    treedef: Any
    layout: StateLayout
    num_params: int
    dtype: np.dtype
    unravel: Callable
    x: Any
    activation: str

    @property
    def args(self) -> list:
        """The chunk program's first argument: ``[x, *residuals]``."""
        return [self.x, *self.residuals]

    @property
    def nbytes(self) -> int:
        return int(sum(r.nbytes for r in self.args))


def mlp_rule(recipe: Recipe, spec: MLPSpec, dtype: Any) -> Callable:
    """The MLP tangent rule for :meth:`~trainmap.recipe.Recipe.linearized_steps`.

    Per step it computes the gradient with :func:`_primal_layers` (keeping the residuals of the
    Hessian-vector product) and linearises the recipe's own optimizer half of the step,
    :meth:`~trainmap.recipe.Recipe.update_params`, in (gradient, float state leaves,
    parameters). The step's linear map is ``(stored, lin_update)``.
    """
    act = _activations()[spec.activation]
    x, y = recipe.inputs(dtype)

    def rule(state: TrainState, idx: jax.Array) -> tuple[TrainState, tuple]:
        layout = StateLayout.of(state.opt_state)
        floats, others = layout.split(state.opt_state)
        params = recipe.unravel(state.theta)
        grads, aux = _primal_layers(act, recipe.loss, params, x[idx], y[idx])

        def update(g: Params, fl: list, p: Params) -> tuple:
            p2, s2 = recipe.update_params(p, layout.join(fl, others), g, state.anchor)
            f2, o2 = layout.split(s2)
            return (p2, f2), o2

        (params2, floats2), lin_update, others2 = jax.linearize(update, grads, floats, params,
                                                                has_aux=True)
        theta2 = ravel_pytree(params2)[0].astype(state.theta.dtype)
        return (TrainState(theta2, layout.join(floats2, others2), state.anchor),
                (_compact(aux, idx), lin_update))

    return rule


def residual_bytes(recipe: Recipe, spec: MLPSpec, theta0: jax.Array) -> int:
    """Bytes of the stored per-step residuals and the inputs (nothing is computed)."""
    shapes, _ = planned_primal(recipe, spec, theta0)
    return int(sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in shapes.args))


def planned_primal(recipe: Recipe, spec: MLPSpec,
                   theta0: jax.Array) -> tuple[MLPPrimal, Callable[[], Callable[[], MLPPrimal]]]:
    """The primal pass in stages, so that compiling and running never peak in memory together.

    Returns:
        (shapes, compile_primal): ``shapes`` is an :class:`MLPPrimal` whose residuals are
        ``jax.ShapeDtypeStruct`` (enough to build and compile :func:`forward_columns`);
        ``compile_primal()`` compiles the primal pass and returns ``run()``, which trains once
        and returns the :class:`MLPPrimal` with the stored residuals.
    """
    primal, layout = recipe.linearized_steps(theta0, mlp_rule(recipe, spec, theta0.dtype))
    shapes = jax.eval_shape(primal, theta0)
    x = recipe.inputs(theta0.dtype)[0]

    def make(res: Any) -> MLPPrimal:
        leaves, treedef = jax.tree_util.tree_flatten(res)
        return MLPPrimal(leaves, treedef, layout, recipe.num_params, np.dtype(theta0.dtype),
                         recipe.unravel, x, spec.activation)

    def compile_primal() -> Callable[[], MLPPrimal]:
        compiled = jax.jit(primal).lower(theta0).compile()
        return lambda: make(compiled(theta0))

    return make(shapes), compile_primal


def forward_columns(mp: MLPPrimal, k: int) -> Callable[[list, jax.Array], jax.Array]:
    """``f(mp.args, start) -> (k, P)``: row r is column ``start + r`` of J (zero past P)."""
    P, treedef = mp.num_params, mp.treedef

    def columns(args: list, start: jax.Array) -> jax.Array:
        x, res = args[0], args[1:]
        onehot = jax.nn.one_hot(start + jnp.arange(k), P, dtype=mp.dtype)
        dparams = jax.vmap(mp.unravel)(onehot)
        dfl = [jnp.zeros((k, *s), mp.dtype) for s in mp.layout.float_shapes]

        def body(carry: tuple, r: list) -> tuple[tuple, None]:
            dp, df = carry
            stored, lin_update = jax.tree_util.tree_unflatten(treedef, r)
            dg = _hvp(_expand(stored, x), dp)
            return jax.vmap(lin_update)(dg, df, dp), None

        (dparams, _), _ = jax.lax.scan(body, (dparams, dfl), res)
        return jax.vmap(lambda d: ravel_pytree(d)[0])(dparams)

    return columns
