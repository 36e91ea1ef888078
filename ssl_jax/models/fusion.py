"""Batch fusion: the images of a group of the batch become the channels of one tensor that convolutions mix.

THE RELEASED MODULE (`variant='released'`, the default). Zhang, Shen & Liu, "From Pretext to Purpose:
Batch-Adaptive Self-Supervised Learning" (BA-SSL, arXiv 2311.09974) can be read only as its abstract, but its
first author released the same module (the same three module names Patch Partition -> Conv Embedding -> Patch
Restore; the journal version's headline result) as the "learnable augmentation head" of CDOA (repository
JsongZhang/US-MTD120K-Benchmarking-Test, folder CDOA_SSL_for_UMTD, `CDOA/builder.py`: `Basic_block`,
`Learnable_Aug.Learnable_Embed`). This file re-implements that code; it was checked once against it in
PyTorch on the same inputs and weights (forward and gradients agree to float32 rounding). Faithful:

  1. Patch Partition: each image (H, W, C) is cut into P×P patches, L = (H/P)·(W/P) of them, each flattened
     to P·P·C values (patch row, patch column; then pixel row, pixel column, channel), and a group of G
     images is stacked so that THE IMAGES ARE THE CHANNELS of one tensor whose spatial axes are (patch index,
     value inside the patch): NHWC (1, L, P·P·C, G) per group.
  2. Conv Embedding: `num_blocks` blocks, each on a tensor x with G channels:
       a = Mish(Norm(conv1×1 G→G (x)));  a = Mish(Norm(conv3×3 G→D (a)))  ("same" padding);
       a = Mish(Norm(conv1×1 D→D (a)));  a = a + conv1×1 G→D (x);  a = conv1×1 D→G (a);  out = ReLU(a + x)
     with D = `width` (256 in the code), biases on every conv (PyTorch's default initialisation: weights and
     biases uniform in ±1/sqrt(fan_in)). Norm is the code's BatchNorm2d on a batch of ONE tensor per group:
     in training it normalises each channel over its own (L, P·P·C) plane with a learned per-channel scale and
     shift, i.e. instance normalisation (what the code's figure draws); in the first block the channels are
     the images, so each image is normalised by its own statistics. eps 1e-5, biased variance.
  3. Patch Restore: the inverse of 1, back to (G, H, W, C).
  4. Outer residual: x + restored. No gate, scalar or schedule exists in the code ("adaptively amplifies as
     training progresses" is the module being learned end to end), and at initialisation the layer is NOT
     the identity: x + restore(ReLU(x + f(x))).

Device-count independence (a switch of form, not of content): the code's channel count is the per-GPU batch
(128); here groups are G = `group_size` consecutive examples of the GLOBAL batch, each group through the same
weights, so one device and eight give the same result. (The code's SyncBatchNorm conversion would make
channel i pool image i of every GPU, an artefact of the per-GPU form; per-group statistics are what one GPU
computes.)

Unknown (documented switches, not silent choices): the patch size for images other than 224 px (the code
fixes P = 16 and 3 channels; P must divide the side); whether the arXiv paper fuses one view (as the code) or
both (the add-on's `fusion.views`); the arXiv paper's number of blocks ("number of Embedding Layers").

Cost per block and group: L·P·P·C·(G² + 9·G·D + D² + 2·G·D) multiply-adds, two thirds of it in the 3×3
conv: 67 G per group of 128 at 224 px (P = 16, D = 256), 0.52 G per image (a ResNet-50 forward is 4.1 G, a
ViT-S/16 one 4.6 G); 10.6 M per image at 32 px with P = 4 (ResNet-18's CIFAR forward: 0.56 G). Memory: each
D-channel activation of a block holds L·P·P·C·D values per group (38.5 M at 224 px).

THE GATED READING (`variant='gated'`, `GatedBatchFusion`): our earlier reading of the abstract, made before
the code was found: groups stacked on the channels of a space-to-depth grid, LayerNorm + GELU conv layers, a
1×1 conv back and a zero-initialised gate α (x + α·fuse(x)). Every choice in it is a guess; it is kept as an
alternative because its measured digits results (configs/fusion.md) refer to it.
"""
import math

from flax import nnx
import jax
import jax.numpy as jnp

from ssl_jax.models import precision

VARIANTS = ('released', 'gated')
GATES = ('learned', 'schedule')
NORMS = ('layer', 'none')
ACTIVATIONS = {'gelu': nnx.gelu, 'relu': nnx.relu}
_NORM_EPS = 1e-5  # PyTorch BatchNorm2d's


def patch_partition(x: jax.Array, patch_size: int) -> jax.Array:
  """Space-to-depth: (B, H, W, C) -> (B, H/P, W/P, P·P·C); channel index (row·P + col)·C + c."""
  b, h, w, c = x.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f'patch_size={p} does not divide the image size {h}x{w}')
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def patch_restore(x: jax.Array, patch_size: int) -> jax.Array:
  """Depth-to-space, the inverse of `patch_partition`: (B, h, w, P·P·C) -> (B, h·P, w·P, C)."""
  b, h, w, k = x.shape
  p = patch_size
  c = k // (p * p)
  x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c)


def _check_groups(b: int, group_size: int) -> None:
  if b % group_size:
    raise ValueError(f'a batch of {b} is not divisible into groups of {group_size}')


def images_to_channels(x: jax.Array, patch_size: int, group_size: int) -> jax.Array:
  """Patch Partition of the released code: (B, H, W, C) -> (B/G, L, P·P·C, G), the G images as channels.

  L = (H/P)·(W/P) patches in row-major order, each flattened as (pixel row, pixel column, channel); group n
  holds images n·G .. n·G + G - 1 (consecutive examples).
  """
  b = x.shape[0]
  _check_groups(b, group_size)
  patches = patch_partition(x, patch_size)
  _, h, w, k = patches.shape
  return patches.reshape(b // group_size, group_size, h * w, k).transpose(0, 2, 3, 1)


def channels_to_images(y: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
  """Patch Restore, the inverse of `images_to_channels`: (B/G, L, P·P·C, G) -> (B, H, W, C)."""
  n, _, k, g = y.shape
  p = patch_size
  patches = y.transpose(0, 3, 1, 2).reshape(n * g, height // p, width // p, k)
  return patch_restore(patches, p)


def stack_groups(x: jax.Array, group_size: int) -> jax.Array:
  """Gated reading: (B, h, w, K) -> (B/G, h, w, G·K), G consecutive samples stacked on channels."""
  b, h, w, k = x.shape
  g = group_size
  _check_groups(b, g)
  return x.reshape(b // g, g, h, w, k).transpose(0, 2, 3, 1, 4).reshape(b // g, h, w, g * k)


def unstack_groups(x: jax.Array, group_size: int) -> jax.Array:
  """The inverse of `stack_groups`: (B/G, h, w, G·K) -> (B, h, w, K)."""
  n, h, w, gk = x.shape
  g = group_size
  return x.reshape(n, h, w, g, gk // g).transpose(0, 3, 1, 2, 4).reshape(n * g, h, w, gk // g)


def _torch_uniform(fan_in: int):
  """PyTorch's default conv initialisation of weights and biases: uniform in ±1/sqrt(fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class InstanceNorm(nnx.Module):
  """Each channel of each sample normalised over its spatial plane, then a learned per-channel affine.

  What the released code's BatchNorm2d computes in training on its batch of one tensor per group. Statistics
  in float32 (a step never sums in bfloat16); no running statistics (the module runs in training only).
  """

  def __init__(self, channels: int):
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, K) -> float32 (N, H, W, K)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + _NORM_EPS) * self.scale[...] + self.bias[...]


class FusionBlock(nnx.Module):
  """One block of the released Conv Embedding (`Basic_block`) on a (N, L, P·P·C, G) tensor."""

  def __init__(self, channels: int, width: int, *, dtype, rngs: nnx.Rngs):
    def conv(cin, cout, k):
      init = _torch_uniform(cin * k * k)
      return nnx.Conv(cin, cout, (k, k), padding='SAME', dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=init, bias_init=init, promote_dtype=precision.promote_keeping_bias_float32,
                      rngs=rngs)

    self.dtype = dtype
    self.conv1, self.norm1 = conv(channels, channels, 1), InstanceNorm(channels)
    self.conv2, self.norm2 = conv(channels, width, 3), InstanceNorm(width)
    self.conv3, self.norm3 = conv(width, width, 1), InstanceNorm(width)
    self.shortcut = conv(channels, width, 1)
    self.squeeze = conv(width, channels, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, L, K, G) float32 -> (N, L, K, G) float32; the convs run in the compute dtype."""
    xc = x.astype(self.dtype)
    a = x
    for conv, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2), (self.conv3, self.norm3)):
      a = jax.nn.mish(norm(conv(a.astype(self.dtype))))  # float32 (Mish's softplus sums exponentials)
    a = a + self.shortcut(xc).astype(jnp.float32)
    a = self.squeeze(a.astype(self.dtype)).astype(jnp.float32)
    return jax.nn.relu(a + x)


class BatchFusion(nnx.Module):
  """The released module (`variant='released'`): x + Patch Restore(blocks(Patch Partition(x))).

  See the module docstring for what is faithful to the released code and what is a switch or unknown.
  """

  def __init__(self, channels: int, *, patch_size: int = 16, group_size: int = 128, num_blocks: int = 1,
               width: int = 256, dtype=jnp.float32, rngs: nnx.Rngs):
    """Builds the layer.

    Args:
      channels: C, the channels of the images it fuses (the parameters do not depend on it).
      patch_size: P, the side of the patches (16 in the code, at 224 px).
      group_size: G, the consecutive examples that form one tensor's channels (the code's per-GPU batch).
      num_blocks: the blocks of the Conv Embedding (1 in the code); 0 makes the layer the identity.
      width: D, the blocks' hidden channels (256 in the code).
      dtype: the convolutions' compute dtype; parameters, normalisation and residuals are float32.
      rngs: initialisation keys.
    """
    del channels
    self.patch_size, self.group_size, self.num_blocks = patch_size, group_size, num_blocks
    self.blocks = nnx.List([FusionBlock(group_size, width, dtype=dtype, rngs=rngs) for _ in range(num_blocks)])

  def __call__(self, x: jax.Array, *, progress=None) -> jax.Array:
    """Fuses a batch of images.

    Args:
      x: (B, H, W, C) images (normalised, as in the code); B a multiple of `group_size`, H and W of
        `patch_size`.
      progress: unused (the released module has no schedule); accepted so both variants share one call.

    Returns:
      (B, H, W, C) float32; exactly x when num_blocks = 0.
    """
    del progress
    if not self.num_blocks:
      return x
    _, h, w, _ = x.shape
    y = images_to_channels(x.astype(jnp.float32), self.patch_size, self.group_size)
    for block in self.blocks:
      y = block(y)
    return x.astype(jnp.float32) + channels_to_images(y, self.patch_size, h, w)


class GatedBatchFusion(nnx.Module):
  """x + α·fuse(x) (`variant='gated'`): our earlier reading of the abstract, before the code was found.

  Groups of G samples stacked on the channels of a space-to-depth grid, `num_blocks` k×k conv layers with
  LayerNorm and GELU, a 1×1 conv back, a learned (from 0) or scheduled gate α. Every choice is a guess.
  """

  def __init__(self, channels: int, *, patch_size: int = 4, group_size: int = 4, num_blocks: int = 2,
               width: int = 128, kernel_size: int = 3, norm: str = 'layer', activation: str = 'gelu',
               gate: str = 'learned', gate_init: float = 0.0, gate_max: float = 1.0, dtype=jnp.float32,
               rngs: nnx.Rngs):
    """Builds the layer.

    Args:
      channels: C, the channels of the images it fuses.
      patch_size: P, the side of the patches the Patch Partition folds into channels.
      group_size: G, the samples that see each other (consecutive samples of the batch).
      num_blocks: L, the conv embedding layers (config `fusion.num_blocks`); 0 makes the layer the identity.
      width: D, the channels of every embedding layer.
      kernel_size: k of the k×k embedding convs (over the grid of patches).
      norm: 'layer' (LayerNorm over channels, per group and grid position) or 'none'.
      activation: 'gelu' or 'relu'.
      gate: 'learned' (α a parameter starting at `gate_init`) or 'schedule' (α rises from 0 to `gate_max`
        with the progress passed to `__call__`).
      gate_init: initial α of the learned gate; 0 makes the layer start as the identity.
      gate_max: α at the end of training with the scheduled gate.
      dtype: compute dtype; parameters are float32.
      rngs: initialisation keys.
    """
    self.patch_size, self.group_size, self.num_blocks = patch_size, group_size, num_blocks
    self.gate, self.gate_max, self.activation = gate, float(gate_max), activation
    self.dtype = dtype
    self.alpha = nnx.Param(jnp.asarray(gate_init, jnp.float32)) if gate == 'learned' and num_blocks else None
    stacked = group_size * patch_size * patch_size * channels
    conv = lambda i, o, k, bias: nnx.Conv(i, o, (k, k), padding='SAME', use_bias=bias, dtype=dtype,
                                          param_dtype=jnp.float32, rngs=rngs,
                                          promote_dtype=precision.promote_keeping_bias_float32)
    # A bias before LayerNorm is cancelled by its centring.
    self.convs = nnx.List([conv(stacked if i == 0 else width, width, kernel_size, norm == 'none')
                           for i in range(num_blocks)])
    self.norms = nnx.List([nnx.LayerNorm(width, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
                           for _ in range(num_blocks)] if norm == 'layer' else [])
    self.restore = conv(width, stacked, 1, True) if num_blocks else None

  def alpha_at(self, progress=None) -> jax.Array:
    """α, float32 scalar: the learned gate, or the scheduled one at `progress` (step / total steps)."""
    if not self.num_blocks:
      return jnp.zeros((), jnp.float32)
    if self.gate == 'learned':
      return self.alpha[...]
    p = jnp.clip(jnp.asarray(0.0 if progress is None else progress, jnp.float32), 0.0, 1.0)
    return self.gate_max * (1.0 - jnp.cos(math.pi * p)) / 2.0

  def fuse(self, x: jax.Array) -> jax.Array:
    """The fusion branch: (B, H, W, C) -> (B, H, W, C) float32; B % G == 0, H and W multiples of P."""
    if not self.num_blocks:
      return jnp.zeros(x.shape, jnp.float32)
    y = stack_groups(patch_partition(x.astype(self.dtype), self.patch_size), self.group_size)
    act = ACTIVATIONS[self.activation]
    for i, conv in enumerate(self.convs):
      y = conv(y)
      y = act(self.norms[i](y) if self.norms else y)
    y = self.restore(y)
    return patch_restore(unstack_groups(y, self.group_size), self.patch_size).astype(jnp.float32)

  def __call__(self, x: jax.Array, *, progress=None) -> jax.Array:
    """Fuses a batch of images.

    Args:
      x: (B, H, W, C) images (any float values); B a multiple of `group_size`, H and W of `patch_size`.
      progress: training progress in [0, 1] (step / total steps), read by the scheduled gate only.

    Returns:
      (B, H, W, C) x + α·fuse(x) in x's dtype; exactly x when α = 0 or num_blocks = 0.
    """
    if not self.num_blocks:
      return x
    alpha = self.alpha_at(progress)
    return (x.astype(jnp.float32) + alpha * self.fuse(x)).astype(x.dtype)
