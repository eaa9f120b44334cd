"""The exact training Jacobian: a plan, checkpointed chunks, the shared-primal engine and
hand-derived MLP tangent rules, all on the :class:`~trainmap.protocol.TrainingMap` protocol."""

from trainmap.jacobian.exact.checkpoint import CheckpointError, ChunkStore, fingerprint
from trainmap.jacobian.exact.driver import exact_jacobian
from trainmap.jacobian.exact.plan import EnginePlan, choose_chunk_size, plan_engine

__all__ = ["CheckpointError", "ChunkStore", "EnginePlan", "choose_chunk_size", "exact_jacobian",
           "fingerprint", "plan_engine"]
