"""Small reference models as ``(init, apply)`` pairs over plain pytrees of arrays."""

from trainmap.models.cnn import lenet
from trainmap.models.mlp import Model, mlp
from trainmap.models.transformer import transformer

__all__ = ["Model", "lenet", "mlp", "transformer"]
