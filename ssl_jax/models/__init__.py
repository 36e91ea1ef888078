"""The model zoo: ResNet and ViT encoders, MLP heads, a device-count-independent (ghost) BatchNorm, batch
fusion, the compute dtype, and the models the frameworks train (composite.py; SelfCon's multi_exit.py)."""
from typing import Callable

from flax import nnx
import jax

from ssl_jax.errors import UserError
from ssl_jax.models.composite import EncoderProjector, SwAVModel, TwoBranchModel
from ssl_jax.models.fusion import BatchFusion
from ssl_jax.models.heads import MLPHead
from ssl_jax.models.norm import BatchNorm
from ssl_jax.models.precision import compute_dtype
from ssl_jax.models.resnet import ResNet, create_encoder
from ssl_jax.models import resnet, vit
from ssl_jax.models.vit import ViT

__all__ = ['BatchFusion', 'BatchNorm', 'EncoderProjector', 'MLPHead', 'ResNet', 'SwAVModel', 'TwoBranchModel',
           'ViT', 'build_compiled', 'check_config', 'compute_dtype', 'create_encoder', 'family']


def family(name: str) -> str:
  """The encoder family of `config.model.name`: 'vit' for the ViTs, 'resnet' for the rest."""
  return 'vit' if name in vit.ARCHS else 'resnet'


def build_compiled(build: Callable[[], nnx.Module], out_shardings=None) -> nnx.Module:
  """`build()`, its parameters initialised by one compiled program (placed by `out_shardings`).

  Built eagerly, every initializer call of a new shape compiles an XLA program of its own: about two hundred
  on a ResNet's first build in a process, minutes of compiling on a CPU. The random bits are the same; the
  values equal the eager ones up to float rounding.
  """
  graphdef, _ = nnx.split(nnx.eval_shape(build))
  return nnx.merge(graphdef, jax.jit(lambda: nnx.state(build()), out_shardings=out_shardings)())


def check_config(config, image_sizes) -> None:
  """The encoder's cross-field rules (train.check_run calls it): `config.model` against itself, the
  batch and the run's view sizes `image_sizes`. Raises UserError, one line."""
  group = config.model.bn_group_size
  if group and config.batch_size % group:
    raise UserError(f'batch_size={config.batch_size} is not divisible by model.bn_group_size={group}; '
                    'pick a group size that divides the batch (0 = BatchNorm over the whole batch)')
  if family(config.model.name) == 'vit':
    vit.check_config(config, image_sizes)
  else:
    resnet.check_config(config, image_sizes)
