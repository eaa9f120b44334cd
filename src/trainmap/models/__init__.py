"""Small reference models as ``(init, apply)`` pairs over plain pytrees of arrays."""

from trainmap.models.cnn import lenet
from trainmap.models.mlp import ACTIVATIONS, Model, mlp, register_activation
from trainmap.models.resnet1d import resnet1d
from trainmap.models.transformer import decoder, transformer

__all__ = ["ACTIVATIONS", "Model", "decoder", "lenet", "mlp", "register_activation", "resnet1d", "transformer"]
