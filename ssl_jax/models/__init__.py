"""The model zoo: ResNet encoders, MLP heads, a device-count-independent (ghost) BatchNorm, batch fusion,
the compute dtype."""
from ssl_jax.models.fusion import BatchFusion
from ssl_jax.models.heads import MLPHead
from ssl_jax.models.norm import BatchNorm
from ssl_jax.models.precision import compute_dtype
from ssl_jax.models.resnet import ResNet, create_encoder

__all__ = ['BatchFusion', 'BatchNorm', 'MLPHead', 'ResNet', 'compute_dtype', 'create_encoder']
