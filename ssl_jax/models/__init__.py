"""The model zoo: ResNet encoders, MLP heads and a device-count-independent (ghost) BatchNorm."""
from ssl_jax.models.heads import MLPHead
from ssl_jax.models.norm import BatchNorm
from ssl_jax.models.resnet import ResNet, create_encoder

__all__ = ['BatchNorm', 'MLPHead', 'ResNet', 'create_encoder']
