"""ResNets for images, NHWC: ImageNet ResNet-18/34/50 (torchvision v1.5) and the CIFAR ResNet-20/32.

Every variant takes a `width` multiplier, an ImageNet (7x7/2 conv + max-pool) or CIFAR (3x3/1 conv) stem,
and can keep only its first `num_stages` stages (S3L's small architectures; SelfCon's exits read the stage
outputs).
Parameters are float32; `dtype` is the compute dtype, so bfloat16 gives mixed precision.
"""
import functools

from flax import nnx
import jax
import jax.numpy as jnp

from ssl_jax.errors import UserError
from ssl_jax.models import vit
from ssl_jax.models.norm import BatchNorm

# depth -> (block kind, blocks per stage, base width per stage).
_ARCHS = {
    18: ('basic', (2, 2, 2, 2), (64, 128, 256, 512)),
    34: ('basic', (3, 4, 6, 3), (64, 128, 256, 512)),
    50: ('bottleneck', (3, 4, 6, 3), (64, 128, 256, 512)),
    # He et al. 2016, section 4.2: 6n + 2 layers, n = 3 and 5.
    20: ('basic', (3, 3, 3), (16, 32, 64)),
    32: ('basic', (5, 5, 5), (16, 32, 64)),
}
_CIFAR_ONLY_DEPTHS = (20, 32)
STEMS = ('imagenet', 'cifar')
ENCODERS = {f'resnet{depth}': depth for depth in _ARCHS}

# torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu'): plain normal, std sqrt(2 / fan_out).
_CONV_INIT = jax.nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _conv(in_dim: int, out_dim: int, kernel: int, stride: int, *, dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """A bias-free conv with torchvision's symmetric padding k // 2: the output side is ceil(input / stride)."""
  pad = kernel // 2
  return nnx.Conv(in_dim, out_dim, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                  use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=_CONV_INIT, rngs=rngs)


class _Shortcut(nnx.Module):
  """Identity, or a 1x1 conv + BN projection when the block changes the shape."""

  def __init__(self, in_dim: int, out_dim: int, stride: int, *, norm, dtype, rngs: nnx.Rngs):
    self.project = stride != 1 or in_dim != out_dim
    self.conv = _conv(in_dim, out_dim, 1, stride, dtype=dtype, rngs=rngs) if self.project else None
    self.bn = norm(out_dim) if self.project else None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.bn(self.conv(x), train=train) if self.project else x


class BasicBlock(nnx.Module):
  """3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus the shortcut, then ReLU."""

  def __init__(self, in_dim: int, planes: int, stride: int, *, norm, zero_init_residual: bool, dtype,
               rngs: nnx.Rngs):
    self.out_dim = planes
    self.conv1 = _conv(in_dim, planes, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = norm(planes)
    self.conv2 = _conv(planes, planes, 3, 1, dtype=dtype, rngs=rngs)
    self.bn2 = norm(planes, scale_init=0.0 if zero_init_residual else 1.0)
    self.shortcut = _Shortcut(in_dim, planes, stride, norm=norm, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x), train=train))
    y = self.bn2(self.conv2(y), train=train)
    return nnx.relu(y + self.shortcut(x, train=train))


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (with the stride, torchvision v1.5) -> 1x1 to 4x channels, plus the shortcut, then ReLU."""

  def __init__(self, in_dim: int, planes: int, stride: int, *, norm, zero_init_residual: bool, dtype,
               rngs: nnx.Rngs):
    self.out_dim = planes * 4
    self.conv1 = _conv(in_dim, planes, 1, 1, dtype=dtype, rngs=rngs)
    self.bn1 = norm(planes)
    self.conv2 = _conv(planes, planes, 3, stride, dtype=dtype, rngs=rngs)
    self.bn2 = norm(planes)
    self.conv3 = _conv(planes, self.out_dim, 1, 1, dtype=dtype, rngs=rngs)
    self.bn3 = norm(self.out_dim, scale_init=0.0 if zero_init_residual else 1.0)
    self.shortcut = _Shortcut(in_dim, self.out_dim, stride, norm=norm, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x), train=train))
    y = nnx.relu(self.bn2(self.conv2(y), train=train))
    y = self.bn3(self.conv3(y), train=train)
    return nnx.relu(y + self.shortcut(x, train=train))


def make_stage(kind: str, in_dim: int, planes: int, num_blocks: int, stride: int, *, norm,
               zero_init_residual: bool = False, dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.List:
  """One ResNet stage: `num_blocks` blocks of `kind`, the first one carrying the stride.

  Args:
    kind: 'basic' (BasicBlock) or 'bottleneck' (Bottleneck, output 4 x planes).
    in_dim: channels of the stage's input.
    planes: the blocks' base width.
    num_blocks: blocks in the stage (at least 1).
    stride: stride of the first block (1 or 2).
    norm: BatchNorm factory, features -> layer (keyword `scale_init` accepted).
    zero_init_residual: start every block's last BN scale at 0.
    dtype: compute dtype.
    rngs: initialisation keys.

  Returns:
    nnx.List of blocks; the stage's output channels are `stage[-1].out_dim`.
  """
  block_cls = BasicBlock if kind == 'basic' else Bottleneck
  blocks = []
  for j in range(num_blocks):
    blocks.append(block_cls(in_dim, planes, stride if j == 0 else 1, norm=norm,
                            zero_init_residual=zero_init_residual, dtype=dtype, rngs=rngs))
    in_dim = blocks[-1].out_dim
  return nnx.List(blocks)


def check_config(config, image_sizes) -> None:
  """Raises UserError for a ResNet `config.model` (single fields already checked by config_schema) that does
  not fit together, or whose last stage would be below one pixel at the run's `image_sizes`."""
  m = config.model
  depth = ENCODERS[m.name]
  if depth in _CIFAR_ONLY_DEPTHS and m.stem != 'cifar':
    raise UserError(f"model.name={m.name!r} is a CIFAR network; set --config.model.stem=cifar")
  total = len(_ARCHS[depth][1])
  if m.num_stages > total:
    raise UserError(f'model.num_stages={m.num_stages} is out of range for {m.name}; use 1..{total} (0 = all)')
  smallest = min_input_size(m.stem, stages_kept(config))
  if min(image_sizes) < smallest:
    raise UserError(f'image size {min(image_sizes)} is too small for {m.name} with {m.stem!r} stem; use at '
                    f'least {smallest} (data.image_size, stages) or fewer model.num_stages')


def stages_kept(config) -> int:
  """The stages the ResNet of `config.model` keeps (model.num_stages, 0 = all of them)."""
  return config.model.num_stages or len(_ARCHS[ENCODERS[config.model.name]][1])


def min_input_size(stem: str, num_stages: int) -> int:
  """The input side at which the last of `num_stages` stages is 1x1 (the product of the strides)."""
  return (4 if stem == 'imagenet' else 1) * 2 ** (num_stages - 1)


class ResNet(nnx.Module):
  """A ResNet encoder: stem, the first `num_stages` stages, global average pool.

  ResNet-18/34/50 follow torchvision (v1.5: the bottleneck's stride sits on its 3x3 conv). ResNet-20/32 are
  the CIFAR networks of He et al. (2016), except that shape-changing shortcuts are 1x1 conv + BN projections
  (the paper's option B) rather than zero-padded identities (option A), as in every other depth here.
  """

  def __init__(self, *, depth: int, stem: str = 'imagenet', width: float = 1.0, num_stages: int | None = None,
               in_channels: int = 3, bn_group_size: int = 0, bn_momentum: float = 0.9,
               zero_init_residual: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    """Builds the network.

    Args:
      depth: 18, 34, 50 (ImageNet family) or 20, 32 (CIFAR family, 'cifar' stem only).
      stem: 'imagenet' (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool) or 'cifar' (3x3 stride-1 conv,
        BN, ReLU).
      width: multiplier of every channel count (rounded, at least 1).
      num_stages: keep only the first `num_stages` stages; None keeps all.
      in_channels: channels of the input images.
      bn_group_size: ghost-BatchNorm group size of every BN layer (0 = whole batch).
      bn_momentum: running-statistics momentum of every BN layer.
      zero_init_residual: start the last BN scale of every block at 0, so every residual branch starts at 0.
      dtype: compute dtype (e.g. jnp.bfloat16); parameters and pooled features stay float32.
      rngs: initialisation keys; not kept by the model.
    """
    kind, blocks, base_widths = _ARCHS[depth]
    kept = num_stages or len(blocks)
    if stem not in STEMS:  # any other name would silently build the CIFAR stem
      raise ValueError(f'stem={stem!r} is not one of {STEMS}')
    widths = [max(1, round(w * width)) for w in base_widths]
    norm = functools.partial(BatchNorm, group_size=bn_group_size, momentum=bn_momentum, dtype=dtype)

    self.max_pool = stem == 'imagenet'
    self.stem_stride, self.stem_dim = (4 if self.max_pool else 1), widths[0]
    self.in_channels = in_channels
    self.stem_conv = _conv(in_channels, widths[0], 7 if self.max_pool else 3, 2 if self.max_pool else 1,
                           dtype=dtype, rngs=rngs)
    self.stem_bn = norm(widths[0])
    in_dim, stages, dims = widths[0], [], []
    for i in range(kept):
      stages.append(make_stage(kind, in_dim, widths[i], blocks[i], 2 if i > 0 else 1, norm=norm,
                               zero_init_residual=zero_init_residual, dtype=dtype, rngs=rngs))
      in_dim = stages[-1][-1].out_dim
      dims.append(in_dim)
    self.stages = nnx.List(stages)
    # Tuples, not lists: static attributes must be hashable so the graphdef can be a static jit argument.
    self.stage_dims = tuple(dims)
    # What a copy of later stages needs (SelfCon's sub-network): block kind, blocks and base width per stage.
    self.block_kind, self.stage_blocks, self.stage_widths = kind, tuple(blocks[:kept]), tuple(widths[:kept])
    self.out_dim = dims[-1]
    # Every stride-s op maps side n to ceil(n / s), so any input runs; below the product of the strides the
    # last stage's single pixel sees mostly padding. At exactly this size the last stage is 1x1.
    self.min_input_size = min_input_size(stem, kept)

  def __call__(self, x: jax.Array, *, train: bool, return_stages: bool = False, after_stem=None):
    """Encodes images.

    Args:
      x: (B, H, W, in_channels) float images.
      train: BatchNorm mode (batch statistics and running-statistics update when True).
      return_stages: also return every kept stage's output.
      after_stem: optional function applied to the stem's output (B, H/s, W/s, C) before the first stage
        (s = `stem_stride`), e.g. batch fusion placed after the stem.

    Returns:
      (B, out_dim) float32 globally average-pooled features; with `return_stages`, the tuple
      (features, [stage_1, ..., stage_k]) where stage_i is (B, H_i, W_i, stage_dims[i - 1]) in the compute
      dtype.
    """
    x = nnx.relu(self.stem_bn(self.stem_conv(x), train=train))
    if self.max_pool:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    if after_stem is not None:
      x = after_stem(x)
    outputs = []
    for stage in self.stages:
      for block in stage:
        x = block(x, train=train)
      outputs.append(x)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return (features, outputs) if return_stages else features


def default_stem(name: str) -> str:
  """The stem a network uses when the config names none: 'cifar' for ResNet-20/32, else 'imagenet'."""
  return 'cifar' if ENCODERS.get(name) in _CIFAR_ONLY_DEPTHS else 'imagenet'


def create_encoder(name: str, *, stem: str | None = None, width: float = 1.0, num_stages: int | None = None,
                   in_channels: int = 3, bn_group_size: int = 0, bn_momentum: float = 0.9, dtype=jnp.float32,
                   rngs: nnx.Rngs, **vit_options):
  """Builds an encoder by name: a ResNet here, a ViT by `ssl_jax.models.vit.create_vit`.

  Args:
    name: one of 'resnet18', 'resnet34', 'resnet50', 'resnet20', 'resnet32', or a ViT ('vit_small', ...).
    stem: 'imagenet' or 'cifar'; None picks the network's own ('cifar' for ResNet-20/32, else 'imagenet').
    width: channel multiplier.
    num_stages: stages kept (None = all); a ViT's blocks kept.
    in_channels: input image channels.
    bn_group_size: ghost-BatchNorm group size (0 = whole batch).
    bn_momentum: BatchNorm running-statistics momentum.
    dtype: compute dtype.
    rngs: initialisation keys.
    **vit_options: a ViT's own options (patch_size, num_heads, pos_embed, freeze_patch_embed, pool,
      image_size), which a ResNet ignores, as a ViT (no stem, no BatchNorm) ignores those arguments.

  Returns:
    The encoder; its `out_dim` is the feature size, `min_input_size` the smallest sensible input side.
  """
  if name in vit.ARCHS:
    return vit.create_vit(name, width=width, num_blocks=num_stages, in_channels=in_channels, dtype=dtype,
                          rngs=rngs, **vit_options)
  depth = ENCODERS[name]
  return ResNet(depth=depth, stem=stem or default_stem(name), width=width, num_stages=num_stages,
                in_channels=in_channels, bn_group_size=bn_group_size, bn_momentum=bn_momentum, dtype=dtype,
                rngs=rngs)
