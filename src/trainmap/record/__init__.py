"""Trajectory recorders and the on-disk store shared by the Koopman and hyper-ribbon lenses."""

from trainmap.record.recorders import (
    ArrayRecorder,
    from_arrays,
    pytree_layout,
    record_recipe,
    stack_trajectories,
)
from trainmap.record.store import PredictionTrajectory, Trajectory, open_store, save_store

__all__ = [
    "ArrayRecorder", "PredictionTrajectory", "Trajectory", "from_arrays", "open_store",
    "pytree_layout", "record_recipe", "save_store", "stack_trajectories",
]

from trainmap.record.predictions import (  # noqa: E402
    GaussianPredictionTrajectory,
    TorchPredictionRecorder,
    log_spaced_steps,
    predictions_from_arrays,
    record_recipe_predictions,
)

__all__ += [
    "GaussianPredictionTrajectory", "TorchPredictionRecorder", "log_spaced_steps",
    "predictions_from_arrays", "record_recipe_predictions",
]
