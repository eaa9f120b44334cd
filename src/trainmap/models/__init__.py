"""Small reference models as ``(init, apply)`` pairs over plain pytrees of arrays."""

from trainmap.models.cnn import lenet
from trainmap.models.mlp import ACTIVATIONS, Model, mlp, register_activation
from trainmap.models.transformer import transformer

__all__ = ["ACTIVATIONS", "Model", "lenet", "mlp", "register_activation", "transformer"]
