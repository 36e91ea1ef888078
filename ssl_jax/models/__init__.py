"""The model zoo: ResNet and ViT encoders, MLP heads, a device-count-independent (ghost) BatchNorm, batch
fusion, the compute dtype, and the models the frameworks train (composite.py; SelfCon's multi_exit.py)."""
from ssl_jax.models.composite import EncoderProjector, TwoBranchModel
from ssl_jax.models.fusion import BatchFusion
from ssl_jax.models.heads import MLPHead
from ssl_jax.models.norm import BatchNorm
from ssl_jax.models.precision import compute_dtype
from ssl_jax.models.resnet import ResNet, create_encoder
from ssl_jax.models import vit
from ssl_jax.models.vit import ViT

__all__ = ['BatchFusion', 'BatchNorm', 'EncoderProjector', 'MLPHead', 'ResNet', 'TwoBranchModel', 'ViT',
           'compute_dtype', 'create_encoder', 'family']


def family(name: str) -> str:
  """The encoder family of `config.model.name`: 'vit' for the ViTs, 'resnet' for the rest."""
  return 'vit' if name in vit.ARCHS else 'resnet'

