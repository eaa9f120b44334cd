"""Hand-derived tangent rules for MLP recipes: the Hessian-vector products of training as GEMMs.

For an MLP ``h_l = σ(h_{l-1} W_l + b_l)`` (last layer linear) the tangent of one training step
along K directions needs the batch loss's Hessian applied to K parameter tangents. Second-order
backpropagation (the R-operator) gives it layer by layer, every product a GEMM with K·B rows or
K·fan columns:

forward, for l = 1..L (dh_0 = 0)::

    dz_l = h_{l-1} dW_l + dh_{l-1} W_l + db_l          (d_l, K, B)
    dh_l = σ'(z_l) ⊙ dz_l

loss curvature: ``de_L = lin_loss(dz_L)`` (the linearised gradient of the loss w.r.t. the
outputs, from JAX), backward for l = L..1::

    dgW_l = h_{l-1}ᵀ de_l + dh_{l-1}ᵀ e_l              (d_{l-1}, K, d_l); (d_1, K, d_0) for l = 1
    dgb_l = Σ_b de_l
    dr    = de_l W_lᵀ + e_l dW_lᵀ
    de_{l-1} = σ'(z_{l-1}) ⊙ dr + (r_{l-1} ⊙ σ''(z_{l-1})) ⊙ dz_{l-1}

where e_l = ∂L/∂z_l and r_{l-1} = e_l W_lᵀ come from the primal pass. The optimizer's tangent is
its own JAX linearisation (any optax optimizer). Everything that depends only on the primal —
activations h_l, σ'(z_l), r_l ⊙ σ''(z_l), e_l, W_l, the loss's and the optimizer's linearisation
residuals — is computed once by a primal pass and stored per step (the batch's inputs h_0 as
indices into the training inputs), so the per-chunk pass is only the K-batched products above.
Recomputing h_l, σ'(z_l) and r_l ⊙ σ''(z_l) from z_l per chunk would store 2.7x less but ran 1.5x
slower on the reference MLP, so they are stored. The tangents are feature-major (K in the middle,
see :func:`_hvp`), so that the first layer's products, most of the work, are single GEMMs.

:func:`detect_mlp` decides, numerically, whether a recipe is such an MLP (the path is chosen
automatically by :func:`~trainmap.jacobian.exact.exact_jacobian`). The rules work on a canonical
list of ``{"w": (d_in, d_out), "b": (d_out,)}`` layers; a :class:`LayerView` maps other parameter
pytrees onto it without copying values: trainmap's own MLP, flax ``nn.Dense`` (``kernel``/``bias``,
linen and nnx) and equinox ``nn.Linear`` (``weight`` (d_out, d_in), transposed).
"""

from __future__ import annotations

import re
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


_WEIGHT_NAMES = {"w": False, "kernel": False, "weight": True}  # name -> stored as (d_out, d_in)
_BIAS_NAMES = {"b", "bias"}


def _key_name(entry: Any) -> str | int:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def _natural(prefix: tuple) -> tuple:
    """Sort key of a layer's path: numbers inside names compare as numbers (Dense_2 < Dense_10)."""
    out: list = []
    for name in prefix:
        parts = re.split(r"(\d+)", str(name))
        out.append(tuple(int(p) if p.isdigit() else p for p in parts if p))
    return tuple(out)


@dataclass(frozen=True)
class LayerView:
    """Where the dense layers of an MLP sit in a parameter pytree.

    Attributes:
        treedef: the pytree's structure.
        layers: per layer, in forward order, ``(weight leaf index, bias leaf index, transposed)``;
            ``transposed`` when the weight is stored (d_out, d_in) (equinox, PyTorch).
    """

    treedef: Any
    layers: tuple[tuple[int, int, bool], ...]

    def to_layers(self, params: Params) -> list[dict]:
        """params -> ``[{"w": (..., d_in, d_out), "b": (..., d_out)}]`` (leading batch axes kept)."""
        leaves = jax.tree_util.tree_leaves(params)
        return [{"w": jnp.swapaxes(leaves[w], -1, -2) if t else leaves[w], "b": leaves[b]}
                for w, b, t in self.layers]

    def from_layers(self, layers: list[dict]) -> Params:
        """The inverse of :meth:`to_layers`."""
        leaves: list = [None] * self.treedef.num_leaves
        for (w, b, t), layer in zip(self.layers, layers):
            leaves[w] = jnp.swapaxes(layer["w"], -1, -2) if t else layer["w"]
            leaves[b] = layer["b"]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def layer_view(params: Params) -> LayerView | None:
    """The :class:`LayerView` of an MLP's parameter pytree, or None when it is not one.

    Every leaf must belong to a layer of one weight (named ``w``, ``kernel`` or ``weight``) and
    one bias (``b`` or ``bias``). Layers are ordered by their path, numbers compared as numbers,
    when their widths chain in that order (d_out of one layer = d_in of the next), else by the
    one chain their widths allow; otherwise None. :func:`detect_mlp` then checks the order
    numerically.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    groups: dict[tuple, dict] = {}
    for i, (path, leaf) in enumerate(flat):
        names = [_key_name(e) for e in path]
        at = next((j for j in range(len(names) - 1, -1, -1)
                   if names[j] in _WEIGHT_NAMES or names[j] in _BIAS_NAMES), None)
        if at is None:
            return None
        role = "b" if names[at] in _BIAS_NAMES else "w"
        group = groups.setdefault(tuple(names[:at]), {})
        if role in group:
            return None
        group[role] = (i, names[at], jnp.shape(leaf))
    found: list[tuple[int, int, bool, int, int]] = []  # (weight, bias, transposed, d_in, d_out)
    for prefix in sorted(groups, key=_natural):
        g = groups[prefix]
        if set(g) != {"w", "b"}:
            return None
        (wi, wname, ws), (bi, _, bs) = g["w"], g["b"]
        if len(ws) != 2 or len(bs) != 1:
            return None
        transposed = _WEIGHT_NAMES[wname]
        d_in, d_out = (ws[1], ws[0]) if transposed else ws
        if bs[0] != d_out:
            return None
        found.append((wi, bi, transposed, int(d_in), int(d_out)))
    order = _chain(found)
    return LayerView(treedef, tuple(found[i][:3] for i in order)) if order else None


def _chain(found: list[tuple[int, int, bool, int, int]]) -> list[int] | None:
    """The forward order of the layers: by name when their widths chain that way, else the one
    chain the widths allow (flax names layers in construction order, not call order)."""
    def chains(order: list[int]) -> bool:
        return all(found[a][4] == found[b][3] for a, b in zip(order, order[1:]))

    named = list(range(len(found)))
    if not found or chains(named):
        return named if found else None
    starts = [i for i in named if not any(found[j][4] == found[i][3] for j in named if j != i)]
    if len(starts) != 1:
        return None
    order = starts
    while len(order) < len(found):
        nxt = [j for j in named if j not in order and found[j][3] == found[order[-1]][4]]
        if len(nxt) != 1:
            return None
        order.append(nxt[0])
    return order


@dataclass(frozen=True)
class MLPSpec:
    """An MLP recognised in a recipe.

    Attributes:
        activation: name of the hidden activation (a key of ``trainmap.models.mlp.ACTIVATIONS``).
        sizes: layer widths (d_0, ..., d_L).
        view: where the layers sit in the recipe's parameter pytree.
    """

    activation: str
    sizes: tuple[int, ...]
    view: LayerView | None = None


def _mlp_apply(act: Callable, params: list, x: jax.Array) -> jax.Array:
    h = x.reshape(x.shape[0], -1)
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            h = act(h)
    return h


def _structure(layers: list) -> tuple[int, ...]:
    sizes = [int(jnp.shape(layers[0]["w"])[0])]
    sizes += [int(jnp.shape(layer["w"])[1]) for layer in layers]
    return tuple(sizes)


def detect_mlp(recipe: Recipe, theta0: jax.Array, rtol: float = 1e-4) -> MLPSpec | None:
    """Recognise an MLP recipe numerically.

    The parameter pytree must hold dense layers only (:func:`layer_view`: trainmap's ``mlp``, flax
    ``Dense``/``nnx.Linear``, equinox ``Linear``), and for one of the registered activations the
    hand-written MLP must reproduce ``recipe.apply`` on the first batch at θ₀ and at a random
    perturbation of θ₀, and the hand-derived Hessian-vector product of the first step's loss must
    match JAX's ``jvp(grad)`` along a random direction (relative tolerance ``rtol``). The recipe's
    ``config["activation"]`` is tried first; without it (a flax or equinox module) every
    registered activation is tried and the closest match is kept.

    Returns:
        An :class:`MLPSpec`, or None when the recipe is not (recognisably) such an MLP.
    """
    try:
        params = recipe.unravel(theta0)
        view = layer_view(params)
        if view is None:
            return None
        sizes = _structure(view.to_layers(params))
        x, y = recipe.inputs(theta0.dtype)
        idx = jnp.asarray(recipe.batches)[0]
        xb, yb = x[idx], y[idx]
        if int(np.prod(xb.shape[1:])) != sizes[0]:
            return None
        key = (str(theta0.dtype), float(rtol))
        cache = _DETECTED.setdefault(recipe, {})
        if key not in cache:
            cache[key] = _match(recipe, view, sizes, theta0, xb, yb, rtol)
        return cache[key]
    except Exception:  # any surprise in an unknown recipe means: not this fast path
        return None


_DETECTED: "weakref.WeakKeyDictionary[Recipe, dict]" = weakref.WeakKeyDictionary()


def _match(recipe: Recipe, view: LayerView, sizes: tuple[int, ...], theta0: jax.Array, xb: jax.Array,
           yb: jax.Array, rtol: float) -> MLPSpec | None:
    acts = _activations()
    theta1 = theta0 + 0.1 * jax.random.normal(jax.random.key(1234), theta0.shape, theta0.dtype)
    first = recipe.config.get("activation")
    if first in acts and _mismatch(recipe, view, acts[first], theta0, theta1, xb, yb) <= rtol:
        return MLPSpec(first, sizes, view)
    errors = {name: _mismatch(recipe, view, fn, theta0, theta1, xb, yb)
              for name, fn in acts.items() if name != first}
    best = min(errors, key=errors.get, default=None)
    return MLPSpec(best, sizes, view) if best is not None and errors[best] <= rtol else None


def _mismatch(recipe: Recipe, view: LayerView, act: Callable, theta0: jax.Array, theta1: jax.Array,
              xb: jax.Array, yb: jax.Array) -> float:
    """The larger relative difference, hand-written MLP against the recipe, of the outputs (at θ₀
    and θ₁) and of one Hessian-vector product (at θ₁); inf when the output shapes differ."""
    @jax.jit
    def outputs(theta0: jax.Array, theta1: jax.Array) -> jax.Array:
        err = jnp.asarray(0.0, theta0.dtype)
        for th in (theta0, theta1):
            p = recipe.unravel(th)
            a, b = recipe.apply(p, xb), _mlp_apply(act, view.to_layers(p), xb)
            if a.shape != b.shape:
                return jnp.asarray(jnp.inf, theta0.dtype)
            err = jnp.maximum(err, jnp.max(jnp.abs(a - b) / (jnp.abs(a) + 1e-2)))
        return err

    err = float(outputs(theta0, theta1))
    if not err <= 1.0:
        return err
    return max(err, float(jax.jit(lambda th: _hvp_error(recipe, view, act, th, xb, yb))(theta1)))


def _hvp_error(recipe: Recipe, view: LayerView, act: Callable, theta: jax.Array, xb: jax.Array,
               yb: jax.Array) -> jax.Array:
    params = recipe.unravel(theta)
    v = recipe.unravel(jax.random.normal(jax.random.key(99), theta.shape, theta.dtype))

    def loss(p: Params) -> jax.Array:
        return recipe.loss(recipe.apply(p, xb), yb)

    ref = ravel_pytree(jax.jvp(jax.grad(loss), (params,), (v,))[1])[0]
    aux = _primal_layers(act, recipe.loss, view.to_layers(params), xb, yb)[1]
    dv = _to_feature_major(jax.tree_util.tree_map(lambda a: a[None], view.to_layers(v)))
    mine = view.from_layers(jax.tree_util.tree_map(lambda a: a[0], _from_feature_major(_hvp(aux, dv))))
    return jnp.linalg.norm(ravel_pytree(mine)[0] - ref) / (jnp.linalg.norm(ref) + 1e-30)


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


def _hvp(aux: dict, dlayers: list[dict]) -> list[dict]:
    """K Hessian-vector products at once, in the feature-major layout.

    Args:
        aux: the step's residuals (:func:`_primal_layers`).
        dlayers: per layer ``{"w", "b"}`` tangents with K in axis 1: ``w`` is (d_1, K, d_0) for
            the first layer and (d_{l-1}, K, d_l) for the others, ``b`` is (d_l, K).

    Returns:
        The Hessian applied to each tangent, in the same layout.

    Activation tangents are (d_l, K, B), so that every product with a weight tangent or a
    weight is one GEMM over K·d_l rows (the first layer's two products, most of the work, need
    no transpose at all). On the reference MLP a chunk of 128 columns took 0.75-0.76 s against
    0.89 s with K-major tangents (K, B, d_l), where the first layer's products were K separate
    small GEMMs; keeping the output layer K-major (for the loss's linearisation) took 1.05 s.
    """
    hs, gs, ss, es, ws = aux["hs"], aux["gs"], aux["ss"], aux["es"], aux["ws"]
    L = len(ws)
    dzs, dhs = [], [None]
    dh = None
    for i in range(L):
        w, b = dlayers[i]["w"], dlayers[i]["b"]
        if i == 0:
            dz = jnp.einsum("oki,bi->okb", w, hs[0])
        else:
            dz = jnp.einsum("iko,bi->okb", w, hs[i]) + jnp.einsum("io,ikb->okb", ws[i], dh)
        dz = dz + b[:, :, None]
        dzs.append(dz)
        if i < L - 1:
            dh = gs[i].T[:, None, :] * dz
            dhs.append(dh)
    lin_loss = aux["lin_loss"]
    de = jax.vmap(lambda a: lin_loss(a.T).T, in_axes=1, out_axes=1)(dzs[-1])
    out: list = [None] * L
    for i in range(L - 1, -1, -1):
        if i == 0:
            dgw = jnp.einsum("okb,bi->oki", de, hs[0])
        else:
            dgw = jnp.einsum("bi,okb->iko", hs[i], de) + jnp.einsum("ikb,bo->iko", dhs[i], es[i])
        out[i] = {"b": de.sum(2), "w": dgw}
        if i > 0:
            dr = jnp.einsum("okb,io->ikb", de, ws[i]) + jnp.einsum("iko,bo->ikb", dlayers[i]["w"], es[i])
            de = gs[i - 1].T[:, None, :] * dr + ss[i - 1].T[:, None, :] * dzs[i - 1]
    return out


def _to_feature_major(layers: list[dict]) -> list[dict]:
    """Canonical layers with leading K, ``w`` (K, d_in, d_out), ``b`` (K, d_out) -> :func:`_hvp`'s layout."""
    return [{"w": _Leaf(2, i == 0).to_chunk(layer["w"]), "b": _Leaf(1).to_chunk(layer["b"])}
            for i, layer in enumerate(layers)]


def _from_feature_major(layers: list[dict]) -> list[dict]:
    """The inverse of :func:`_to_feature_major`."""
    return [{"w": _Leaf(2, i == 0).from_chunk(layer["w"]), "b": _Leaf(1).from_chunk(layer["b"])}
            for i, layer in enumerate(layers)]


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
        view: where the dense layers sit in the parameter pytree.
    """

    residuals: list
    treedef: Any
    layout: StateLayout
    num_params: int
    dtype: np.dtype
    unravel: Callable
    x: Any
    activation: str
    view: LayerView

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
    view = spec.view or layer_view(recipe.unravel(jnp.zeros(recipe.num_params, dtype)))
    x, y = recipe.inputs(dtype)

    def rule(state: TrainState, idx: jax.Array) -> tuple[TrainState, tuple]:
        layout = StateLayout.of(state.opt_state)
        floats, others = layout.split(state.opt_state)
        params = recipe.unravel(state.theta)
        grads, aux = _primal_layers(act, recipe.loss, view.to_layers(params), x[idx], y[idx])
        grads = view.from_layers(grads)

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


def dead_input_columns(recipe: Recipe, spec: MLPSpec, theta0: jax.Array) -> np.ndarray:
    """Flat indices of the first layer's weights from inputs that are 0 in every training example.

    Such a weight never enters a forward pass and its gradient is exactly 0 at every step, so the
    network's tangent along it is exactly 0: unless the optimizer itself rescales or couples
    parameters (weight decay, trust ratios), its column of J is the unit vector e_j. The driver
    certifies that with one probe direction before skipping these columns
    (:func:`~trainmap.jacobian.exact.driver.exact_jacobian`).

    Returns:
        (n,) int64 indices into θ, ascending (empty when every input feature is used).
    """
    x = np.asarray(recipe.inputs(theta0.dtype)[0])
    dead = ~np.any(x.reshape(x.shape[0], -1) != 0, axis=0)  # (d_0,)
    if not dead.any():
        return np.zeros(0, np.int64)
    view = spec.view or layer_view(recipe.unravel(theta0))
    w, _, transposed = view.layers[0]
    leaves = [np.zeros(np.shape(a), np.float32) for a in jax.tree_util.tree_leaves(recipe.unravel(theta0))]
    leaves[w][...] = dead[None, :] if transposed else dead[:, None]
    flat = np.asarray(ravel_pytree(jax.tree_util.tree_unflatten(view.treedef, leaves))[0])
    return np.flatnonzero(flat).astype(np.int64)


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
                         recipe.unravel, x, spec.activation,
                         spec.view or layer_view(recipe.unravel(theta0)))

    def compile_primal() -> Callable[[], MLPPrimal]:
        compiled = jax.jit(primal).lower(theta0).compile()
        return lambda: make(compiled(theta0))

    return make(shapes), compile_primal


@dataclass(frozen=True)
class _Leaf:
    """Where a tangent leaf keeps its K directions in the chunk program (:func:`_hvp`'s layout).

    A leaf of per-direction shape ``(a,)`` is stored (a, K); ``(a, b)`` is stored (a, K, b), or
    (b, K, a) when ``flip``; other ranks keep K in front. ``flip`` marks the weights whose
    feature-major form is the transpose of their stored orientation (the first layer's, stored
    (d_in, d_out); later layers' stored (d_out, d_in)).
    """

    ndim: int
    flip: bool = False

    @property
    def perm(self) -> tuple[int, ...]:
        """Axis order of the chunk layout, from (K, *shape)."""
        if self.ndim == 1:
            return (1, 0)
        if self.ndim == 2:
            return (2, 0, 1) if self.flip else (1, 0, 2)
        return tuple(range(self.ndim + 1))

    @property
    def k_axis(self) -> int:
        return self.perm.index(0)

    def to_chunk(self, a: jax.Array) -> jax.Array:
        """(K, *shape) -> the chunk layout."""
        return jnp.transpose(a, self.perm)

    def from_chunk(self, a: jax.Array) -> jax.Array:
        """The inverse of :meth:`to_chunk`."""
        return jnp.transpose(a, tuple(int(i) for i in np.argsort(self.perm)))

    def slice_to_stored(self, a: jax.Array) -> jax.Array:
        """One direction's slice (K axis removed) -> its stored orientation (its own inverse)."""
        return a.T if self.flip else a


def _leaf_layouts(mp: MLPPrimal) -> tuple[list[_Leaf], list[_Leaf]]:
    """The chunk layouts of the parameter leaves and of the optimizer's float state leaves.

    State leaves that run in the same sequence of shapes as the parameters (optax's traces and
    moments are parameter-shaped pytrees) take the parameters' layouts, so that the optimizer's
    elementwise updates read every operand in the same order; the others keep a plain layout.
    Any consistent choice is exact; this one only decides memory order.
    """
    shapes = [tuple(jnp.shape(a)) for a in
              jax.tree_util.tree_leaves(mp.unravel(jnp.zeros(mp.num_params, mp.dtype)))]
    params = [_Leaf(len(sh)) for sh in shapes]
    for layer, (w, _, stored_transposed) in enumerate(mp.view.layers):
        params[w] = _Leaf(2, (layer == 0) != stored_transposed)
    state: list[_Leaf] = []
    fs, n, i = list(mp.layout.float_shapes), len(shapes), 0
    while i < len(fs):
        if [tuple(f) for f in fs[i:i + n]] == shapes:
            state += params
            i += n
        else:
            state.append(_Leaf(len(fs[i])))
            i += 1
    return params, state


def forward_columns(mp: MLPPrimal, k: int) -> Callable[[list, jax.Array], jax.Array]:
    """``f(mp.args, V) -> (k, P)``: row r is J V[r] for the (k, P) tangents V (e_j: column j of J).

    The tangents run in :func:`_hvp`'s feature-major layout from the first step to the last
    (:func:`_leaf_layouts`); the optimizer's linearisation is applied per direction through
    ``vmap`` over each leaf's K axis.
    """
    treedef, ptree = mp.treedef, mp.view.treedef
    pl, sl = _leaf_layouts(mp)
    p_axes, s_axes = [s.k_axis for s in pl], [s.k_axis for s in sl]
    wb = [(w, b) for w, b, _ in mp.view.layers]

    def stored_form(layouts: list[_Leaf], leaves: list) -> list:
        return [s.slice_to_stored(a) for s, a in zip(layouts, leaves)]

    def columns(args: list, V: jax.Array) -> jax.Array:
        x, res = args[0], args[1:]
        dp0 = [s.to_chunk(a) for s, a in zip(pl, jax.tree_util.tree_leaves(jax.vmap(mp.unravel)(V)))]
        df0 = [s.to_chunk(jnp.zeros((k, *sh), mp.dtype)) for s, sh in zip(sl, mp.layout.float_shapes)]

        def body(carry: tuple, r: list) -> tuple[tuple, None]:
            dp, df = carry
            stored, lin_update = jax.tree_util.tree_unflatten(treedef, r)
            dgl = _hvp(_expand(stored, x), [{"w": dp[w], "b": dp[b]} for w, b in wb])
            dg: list = [None] * len(dp)
            for (w, b), g in zip(wb, dgl):
                dg[w], dg[b] = g["w"], g["b"]

            def one(g: list, f: list, p: list) -> tuple[list, list]:
                p2, f2 = lin_update(ptree.unflatten(stored_form(pl, g)), stored_form(sl, f),
                                    ptree.unflatten(stored_form(pl, p)))
                return stored_form(pl, jax.tree_util.tree_leaves(p2)), stored_form(sl, list(f2))

            out = jax.vmap(one, in_axes=(p_axes, s_axes, p_axes), out_axes=(p_axes, s_axes))(dg, df, dp)
            return out, None

        (dp, _), _ = jax.lax.scan(body, (dp0, df0), res)
        native = ptree.unflatten([s.from_chunk(a) for s, a in zip(pl, dp)])
        return jax.vmap(lambda d: ravel_pytree(d)[0])(native)

    return columns
