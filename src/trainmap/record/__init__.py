"""Trajectory recorders and the on-disk store shared by the Koopman and hyper-ribbon lenses."""

from trainmap.record.store import PredictionTrajectory, Trajectory, open_store, save_store

__all__ = ["PredictionTrajectory", "Trajectory", "open_store", "save_store"]
