"""The model zoo: ResNet encoders, MLP heads, a device-count-independent (ghost) BatchNorm, batch fusion."""
from ssl_jax.models.fusion import BatchFusion
from ssl_jax.models.heads import MLPHead
from ssl_jax.models.norm import BatchNorm
from ssl_jax.models.resnet import ResNet, create_encoder

__all__ = ['BatchFusion', 'BatchNorm', 'MLPHead', 'ResNet', 'create_encoder']
