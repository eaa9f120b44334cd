"""``--recipe path.py:function`` (or ``package.module:function``): the user's own training run on
the command line.

The function returns ``(recipe, theta0)`` (any :class:`~trainmap.protocol.TrainingMap` and its
flat θ₀) or an object with ``.recipe`` and ``.theta0`` (a :class:`trainmap.presets.Setup`, whose
``.data`` then gives the train/test sets the report evaluates on). ``--recipe-arg name=value``
passes keyword arguments (values are read as JSON, else kept as text). What was loaded is recorded in
config.json under ``"recipe_source"``: the spec, the file's SHA-256 and the arguments.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass
class LoadedRecipe:
    """A user's recipe with what is needed to rerun it.

    Attributes:
        recipe: the training run (a TrainingMap).
        theta0: (P,) initial flat parameters.
        eval_sets: ``{"train": (x, y), "test": (x, y)}`` when the function returned a Setup with data.
        source: JSON-able record for config.json (spec, file, sha256, function, args).
    """

    recipe: Any
    theta0: Any
    eval_sets: dict | None
    source: dict


def parse_args(items: Sequence[str]) -> dict[str, Any]:
    """``["hidden=32", "name=mlp"]`` -> ``{"hidden": 32, "name": "mlp"}`` (JSON values, else text)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ValueError(f"--recipe-arg takes name=value, got {item!r}")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


def _function(spec: str) -> tuple[Any, dict]:
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ValueError(f"--recipe takes path/to/file.py:function or package.module:function, got {spec!r}")
    if where.endswith(".py") or "/" in where or Path(where).exists():
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"--recipe: no such file {where!r}")
        data = path.read_bytes()
        mod_name = f"trainmap_user_recipe_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
        record = {"file": str(path), "sha256": hashlib.sha256(data).hexdigest()}
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ValueError(f"--recipe: cannot import module {where!r} ({exc})") from exc
        file = getattr(module, "__file__", None)
        record = {"module": where,
                  "sha256": hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else None}
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--recipe: {where!r} has no function {name!r}")
    return fn, {"spec": spec, "function": name, **record}


def load_recipe(spec: str, args: Sequence[str] = ()) -> LoadedRecipe:
    """Import the function named by ``spec``, call it with ``--recipe-arg`` values, check what it
    returned.

    Raises:
        ValueError: one line naming what is wrong and what to do.
    """
    kwargs = parse_args(args)
    fn, source = _function(spec)
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        raise ValueError(f"--recipe-arg does not fit {source['function']}{inspect.signature(fn)}: {exc}") from exc
    result = fn(**kwargs)
    data = None
    if hasattr(result, "recipe") and hasattr(result, "theta0"):
        recipe, theta0, data = result.recipe, result.theta0, getattr(result, "data", None)
    elif isinstance(result, tuple) and len(result) == 2:
        recipe, theta0 = result
    else:
        raise ValueError(f"--recipe: {spec} must return (recipe, theta0) or an object with .recipe and .theta0, "
                         f"got {type(result).__name__}")
    missing = [a for a in ("num_params", "num_steps", "train", "jvp", "vjp", "check_theta") if not hasattr(recipe, a)]
    if missing:
        raise ValueError(f"--recipe: {spec} returned a {type(recipe).__name__}, which is not a training map "
                         f"(no {', '.join(missing)}); return a trainmap Recipe (make_recipe, recipe_from_flax, ...)")
    recipe.check_theta(theta0)
    eval_sets = None
    if data is not None and all(hasattr(data, a) for a in ("x_train", "y_train", "x_test", "y_test")):
        eval_sets = {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test)}
    return LoadedRecipe(recipe, theta0, eval_sets, {**source, "args": kwargs})


def builtin_run(setup_kwargs: dict | None = None) -> LoadedRecipe:
    """The built-in digits MLP (``trainmap.presets.digits_mlp(**setup_kwargs)``; no arguments: the
    published setup) as a run to analyse, evaluated on its train and test splits."""
    from trainmap.presets import digits_mlp

    s = digits_mlp(**(setup_kwargs or {}))
    d = s.data
    return LoadedRecipe(s.recipe, s.theta0, {"train": (d.x_train, d.y_train), "test": (d.x_test, d.y_test)}, {})


def _label(loaded: LoadedRecipe) -> str:
    return loaded.source.get("function", "run") if loaded.source else "run"


def record_weights(loaded: LoadedRecipe, every: int | None) -> Any:
    """Train a loaded run (JAX or PyTorch) once, recording θ_t every k steps (None: T // 50) for
    the Koopman lens: a (1, R, P) :class:`~trainmap.record.store.Trajectory` whose parameter table
    is under ``meta["layers"]``."""
    import numpy as np

    from trainmap.protocol import is_traceable
    from trainmap.record import from_arrays
    from trainmap.record.recorders import default_every, pytree_layout, recorded_run

    recipe, theta0 = loaded.recipe, loaded.theta0
    k = default_every(recipe.num_steps, every)
    rec = recorded_run(recipe, theta0, k)
    # the parameter table: the JAX recipe's pytree, the torch recipe's named parameters
    table = ({n: v["shape"] for n, v in pytree_layout(recipe.unravel(np.asarray(theta0))).items()}
             if is_traceable(recipe) else dict(zip(recipe.names, recipe.shapes)))
    return from_arrays(np.asarray(rec.params)[None], np.asarray(rec.steps), [_label(loaded)],
                       {"every": k, "source": "recipe"}, layers=table)


def record_predictions(loaded: LoadedRecipe, every: int | None, probe_size: int = 256) -> Any:
    """Train a loaded run once, recording the softmax outputs on its first ``probe_size`` training
    inputs every k steps (None: T // 50) for the ribbon lens: a (1, R, N, C)
    :class:`~trainmap.record.store.PredictionTrajectory`."""
    import numpy as np

    from trainmap.record import PredictionTrajectory
    from trainmap.record.predictions import probe_fingerprint, softmax
    from trainmap.record.recorders import default_every, recorded_run

    recipe, theta0 = loaded.recipe, loaded.theta0
    k = default_every(recipe.num_steps, every)
    x, y = np.asarray(recipe.x)[:probe_size], np.asarray(recipe.y)[:probe_size]
    rec = recorded_run(recipe, theta0, k, x, record_params=False)
    targets = y if np.issubdtype(y.dtype, np.integer) and y.ndim == 1 else None
    return PredictionTrajectory(softmax(rec.probe_outputs)[None], np.asarray(rec.steps), [_label(loaded)], targets,
                                {"probe": probe_fingerprint(x), "every": k, "source": "recipe"})


def keep_store(out: Any, name: str, traj: Any) -> None:
    """Save ``traj`` as ``out/name`` (a zarr store), recorded in the results folder's manifest."""
    from trainmap.results import reopen

    traj.save(reopen(out).dir(name, create=False))
