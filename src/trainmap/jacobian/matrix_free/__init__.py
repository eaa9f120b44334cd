"""Training-Jacobian spectra without forming J: the operator (J V, Jᵀ W; also a scipy
``LinearOperator``), block Lanczos, stochastic Lanczos quadrature, the device/process split of
the probe block and the resumable pipeline."""

from trainmap.jacobian.matrix_free.operator import TrainingOperator

__all__ = ["TrainingOperator"]
