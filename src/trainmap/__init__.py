"""trainmap: the geometry of neural-network training.

A training run is a map θ₀ ↦ θ_T (:class:`Recipe`, a :class:`TrainingMap`). Three lenses read it:
``trainmap.jacobian`` (the training Jacobian), ``trainmap.koopman`` (DMD spectra and conjugacy)
and ``trainmap.ribbon`` (InPCA hyper-ribbons); ``trainmap.record`` stores trajectories and
``trainmap.results`` writes results folders.
"""

from __future__ import annotations

from trainmap._lazy import lazy_exports

__version__ = "0.1.0"

#: public name -> module; imported on first use, so that ``import trainmap`` (and the CLI) stays fast
_EXPORTS = {
    "Recipe": "trainmap.recipe",
    "TrainState": "trainmap.recipe",
    "make_recipe": "trainmap.recipe",
    "flat_params": "trainmap.recipe",
    "TrainingMap": "trainmap.protocol",
    "open_results": "trainmap.results",
    "recipe_from_flax": "trainmap.adapters",
    "recipe_from_equinox": "trainmap.adapters",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
