"""Vision Transformers (Dosovitskiy et al., ICLR 2021) for images, NHWC: ViT-Tiny, ViT-Small, ViT-Base.

The architecture is timm's `VisionTransformer` as MoCo v3 (Chen, Xie, He, ICCV 2021) trains it
(facebookresearch/moco-v3 `vits.py`): a patch embedding (a p x p stride-p convolution), a class token,
pre-norm blocks (x + attention(LN(x)), then x + MLP(LN(x)); MLP ratio 4, exact GELU, qkv with bias,
LayerNorm epsilon 1e-6), a final LayerNorm, and the class token as the feature. Without the classifier
head the parameter counts are timm's `vit_{tiny,small,base}_patch16_224` ones (tests/test_vit.py).

MoCo v3's choices, kept as the defaults, with the switches beside them:
  * `pos_embed='sincos'`: MoCo v3's fixed 2-D sine-cosine position embedding, computed for the token grid of
    the input, so any multiple of the patch size runs; 'learned': timm's learned one (a parameter sized for
    `image_size`, bicubically resized for other grids, as timm does when fine-tuning at a new size).
  * `freeze_patch_embed`: MoCo v3's `--stop-grad-conv1`, a random patch projection that is never trained.
    Its weights are `Frozen` variables, which the state split puts beside the batch statistics, so no
    optimizer sees them: no gradient, no weight decay (as PyTorch skips a parameter with requires_grad off).
  * `pool='token'`: the class token after the final LayerNorm; 'avg': the mean of the patch tokens after it.
  * MoCo v3's ViT-S has 12 heads (its `vits.py`), timm's and DeiT's 6: `num_heads` picks (0 = the named
    model's). The parameter count does not depend on it.
  * The initialisation is MoCo v3's: xavier-uniform Linears (q, k and v each as its own square matrix),
    zero biases, a xavier-uniform patch projection, the class token from N(0, 1e-6^2).

`width` scales the width of every head (ViT-S at width 0.125: 12 heads of 4, 48 channels) and `num_blocks`
keeps the first blocks only: the tiny networks of the tests and the CPU recipes.

Compute dtype `dtype` (ssl_jax/models/precision.py): the matmuls run in it; LayerNorm statistics, the
attention logits and softmax, the biases and the residual stream stay float32.
"""
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.errors import UserError
from ssl_jax.models import precision

# name -> (width, blocks, heads).
ARCHS = {'vit_tiny': (192, 12, 3), 'vit_small': (384, 12, 12), 'vit_base': (768, 12, 12)}
POS_EMBEDS = ('sincos', 'learned')
POOLS = ('token', 'avg')
_MLP_RATIO = 4
_LN_EPSILON = 1e-6


class Frozen(nnx.BatchStat):
  """A weight no optimizer trains (MoCo v3's frozen random patch projection).

  A kind of `nnx.BatchStat`, so `nnx.split(model, nnx.Param, nnx.BatchStat)` puts it with the batch
  statistics: state that is checkpointed, copied into a momentum target and restored, but not differentiated.
  """


def _uniform(limit: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -limit, limit)


def _qkv_init(key, shape, dtype=jnp.float32):
  """xavier-uniform of each of q, k and v as its own (in, out / 3) matrix (MoCo v3's `vits.py`)."""
  return _uniform(math.sqrt(6.0 / (shape[0] + shape[1] // 3)))(key, shape, dtype)


def _linear(in_dim: int, out_dim: int, *, dtype, rngs: nnx.Rngs, kernel_init=None) -> nnx.Linear:
  """A Linear computing in `dtype` whose bias is added in float32 (precision.promote_keeping_bias_float32)."""
  return nnx.Linear(in_dim, out_dim, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=kernel_init or jax.nn.initializers.xavier_uniform(),
                    promote_dtype=precision.promote_keeping_bias_float32, rngs=rngs)


def _layer_norm(dim: int, *, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance, statistics in float32 (flax computes them in at least float32).
  return nnx.LayerNorm(dim, epsilon=_LN_EPSILON, dtype=dtype, use_fast_variance=False, rngs=rngs)


def sincos_position_embedding(grid_h: int, grid_w: int, dim: int) -> np.ndarray:
  """MoCo v3's fixed 2-D sine-cosine position embedding (grid_h·grid_w, dim), float32, row-major tokens.

  `dim` must be divisible by 4 (`check_config`).

  Channels [0, dim/4) and [dim/4, dim/2) are sin and cos of the token's row index times the frequencies
  10000^(-i / (dim/4)), channels [dim/2, dim) the same of its column index (the order `vits.py` produces).
  """
  quarter = dim // 4
  omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float32) / quarter)
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float32), np.arange(grid_w, dtype=np.float32),
                           indexing='ij')
  out_r, out_c = np.outer(rows.ravel(), omega), np.outer(cols.ravel(), omega)
  return np.concatenate([np.sin(out_r), np.cos(out_r), np.sin(out_c), np.cos(out_c)], axis=1)


class Attention(nnx.Module):
  """Multi-head self-attention: one qkv Linear (q, k, v, then heads, in timm's order) and an output Linear."""

  def __init__(self, dim: int, heads: int, *, dtype, rngs: nnx.Rngs):
    self.heads, self.dtype = heads, dtype
    self.qkv = _linear(dim, 3 * dim, dtype=dtype, rngs=rngs, kernel_init=_qkv_init)
    self.proj = _linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).astype(self.dtype)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * (d // self.heads) ** -0.5, axis=-1)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(self.dtype), v, preferred_element_type=jnp.float32)
    return self.proj(out.reshape(b, n, d))


class Block(nnx.Module):
  """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x)) with a 4x GELU hidden layer."""

  def __init__(self, dim: int, heads: int, *, dtype, rngs: nnx.Rngs):
    self.norm1 = _layer_norm(dim, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, heads, dtype=dtype, rngs=rngs)
    self.norm2 = _layer_norm(dim, dtype=dtype, rngs=rngs)
    self.fc1 = _linear(dim, _MLP_RATIO * dim, dtype=dtype, rngs=rngs)
    self.fc2 = _linear(_MLP_RATIO * dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))


class ViT(nnx.Module):
  """A ViT encoder: patch embedding, class token, position embedding, pre-norm blocks, final LayerNorm."""

  def __init__(self, *, dim: int, depth: int, heads: int, patch_size: int = 16, in_channels: int = 3,
               pos_embed: str = 'sincos', freeze_patch_embed: bool = False, pool: str = 'token',
               image_size: int = 224, dtype=jnp.float32, rngs: nnx.Rngs):
    """Builds the network.

    Args:
      dim: token width (divisible by `heads`).
      depth: number of transformer blocks.
      heads: attention heads per block.
      patch_size: side p of the square patches; inputs must be multiples of it.
      in_channels: channels of the input images.
      pos_embed: 'sincos' (fixed, MoCo v3) or 'learned' (timm; sized for `image_size`).
      freeze_patch_embed: keep the random patch projection fixed (MoCo v3's stop-grad-conv1).
      pool: 'token' (the class token) or 'avg' (the mean patch token), after the final LayerNorm.
      image_size: the input side the learned position embedding is made for.
      dtype: compute dtype of the matmuls; parameters and features stay float32.
      rngs: initialisation keys; not kept by the model.
    """
    if pos_embed not in POS_EMBEDS or pool not in POOLS:  # any other name would silently pick the other
      raise ValueError(f'pos_embed={pos_embed!r} (one of {POS_EMBEDS}), pool={pool!r} (one of {POOLS})')
    patch_dim = patch_size * patch_size * in_channels
    variable = Frozen if freeze_patch_embed else nnx.Param
    limit = math.sqrt(6.0 / (patch_dim + dim))  # xavier-uniform of the flattened projection
    self.patch_kernel = variable(_uniform(limit)(rngs.params(), (patch_size, patch_size, in_channels, dim)))
    self.patch_bias = variable(jnp.zeros((dim,), jnp.float32))
    self.cls_token = nnx.Param(1e-6 * jax.random.normal(rngs.params(), (1, 1, dim), jnp.float32))
    grid = image_size // patch_size
    self.pos_grid = grid
    self.pos_embed = (nnx.Param(0.02 * jax.random.truncated_normal(rngs.params(), -2.0, 2.0,
                                                                   (1, 1 + grid * grid, dim), jnp.float32))
                      if pos_embed == 'learned' else None)
    self.blocks = nnx.List([Block(dim, heads, dtype=dtype, rngs=rngs) for _ in range(depth)])
    self.norm = _layer_norm(dim, dtype=dtype, rngs=rngs)
    self.patch_size, self.pool, self.dtype = patch_size, pool, dtype
    self.frozen_patch_embed = freeze_patch_embed
    self.out_dim = self.stem_dim = dim
    self.in_channels = in_channels
    self.stem_stride = self.min_input_size = patch_size

  def embed_patches(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H/p, W/p, dim): the patch projection (a p x p stride-p convolution)."""
    b, h, w, c = x.shape
    p = self.patch_size
    patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    kernel, bias = self.patch_kernel[...], self.patch_bias[...]
    if self.frozen_patch_embed:  # not differentiated anyway (a Frozen variable); kept for callers that would
      kernel, bias = jax.lax.stop_gradient(kernel), jax.lax.stop_gradient(bias)
    out = jnp.einsum('bhwpqc,pqcd->bhwd', patches.astype(self.dtype), kernel.astype(self.dtype),
                     preferred_element_type=jnp.float32)
    return out + bias

  def position_embedding(self, grid_h: int, grid_w: int) -> jax.Array:
    """(1, 1 + grid_h·grid_w, dim): the class token's position (zeros for sin-cos) and the patches'."""
    dim = self.out_dim
    if self.pos_embed is None:
      patches = sincos_position_embedding(grid_h, grid_w, dim)
      return jnp.asarray(np.concatenate([np.zeros((1, dim), np.float32), patches])[None])
    table = self.pos_embed[...]
    if (grid_h, grid_w) == (self.pos_grid, self.pos_grid):
      return table
    patches = table[0, 1:].reshape(self.pos_grid, self.pos_grid, dim)
    patches = jax.image.resize(patches, (grid_h, grid_w, dim), method='bicubic')
    return jnp.concatenate([table[:, :1], patches.reshape(1, grid_h * grid_w, dim)], axis=1)

  def __call__(self, x: jax.Array, *, train: bool, after_stem=None) -> jax.Array:
    """Encodes images.

    Args:
      x: (B, H, W, in_channels) float images, H and W multiples of the patch size.
      train: unused (no dropout, no BatchNorm); part of the encoder interface.
      after_stem: optional function applied to the patch embeddings (B, H/p, W/p, dim) before the position
        embedding and the class token are added.

    Returns:
      (B, out_dim) float32 features: the class token, or the mean patch token, after the final LayerNorm.
    """
    del train
    tokens = self.embed_patches(x)
    if after_stem is not None:
      tokens = after_stem(tokens)
    b, gh, gw, d = tokens.shape
    cls = jnp.broadcast_to(self.cls_token[...], (b, 1, d))
    x = jnp.concatenate([cls, tokens.reshape(b, gh * gw, d)], axis=1) + self.position_embedding(gh, gw)
    for block in self.blocks:
      x = block(x)
    x = self.norm(x).astype(jnp.float32)
    return x[:, 0] if self.pool == 'token' else jnp.mean(x[:, 1:], axis=1)


def check_config(config, image_sizes) -> None:
  """Raises UserError for a ViT `config.model` (single fields already checked by config_schema) that does not
  fit together or does not tile the run's `image_sizes` (and data.image_size, the learned embedding's grid)."""
  m = config.model
  dim, depth, heads = ARCHS[m.name]
  if dim % (m.num_heads or heads):
    raise UserError(f'model.num_heads={m.num_heads} does not divide the {m.name} width {dim}; use a divisor')
  if m.num_stages > depth:
    raise UserError(f'model.num_stages={m.num_stages} (blocks kept) is out of range for {m.name}; use '
                    f'1..{depth} (0 = all)')
  width = token_width(m.name, m.width, m.num_heads)
  if m.pos_embed == 'sincos' and width % 4:
    raise UserError(f'the sin-cos position embedding needs a ViT width divisible by 4, got {width}; change '
                    "model.width or use model.pos_embed='learned'")
  bad = [s for s in (*image_sizes, config.data.image_size) if s % m.patch_size]
  if bad:
    raise UserError(f'image size {bad[0]} is not a multiple of model.patch_size={m.patch_size}; use image '
                    'sizes that are multiples of the patch size (data.image_size, stages)')


def token_width(name: str, width: float, num_heads: int) -> int:
  """The token width of ViT `name` at head-width multiplier `width` with `num_heads` heads (0 = its own)."""
  dim, _, heads = ARCHS[name]
  heads = num_heads or heads
  return heads * max(1, round(dim // heads * width))


def create_vit(name: str, *, width: float = 1.0, num_blocks: int | None = None, num_heads: int = 0,
               patch_size: int = 16, in_channels: int = 3, pos_embed: str = 'sincos',
               freeze_patch_embed: bool = False, pool: str = 'token', image_size: int = 224,
               dtype=jnp.float32, rngs: nnx.Rngs) -> ViT:
  """Builds a ViT by name ('vit_tiny', 'vit_small', 'vit_base'), optionally narrowed and shortened.

  Args:
    name: the architecture (ARCHS).
    width: multiplier of every head's width (the token width is heads x round(head width x width)).
    num_blocks: keep the first `num_blocks` blocks (None = all 12).
    num_heads: attention heads (0 = the architecture's: 3 for ViT-T, 12 for ViT-S as in MoCo v3, 12 for
      ViT-B).
    patch_size .. dtype: see `ViT`.
    rngs: initialisation keys.

  Returns:
    The ViT; `out_dim` is the feature size, `min_input_size` the patch size.
  """
  dim, depth, heads = ARCHS[name]
  heads = num_heads or heads
  kept = num_blocks or depth
  if kept > depth:  # would silently build a deeper network than `name`
    raise ValueError(f'num_blocks={num_blocks} is more than the {depth} blocks of {name}')
  return ViT(dim=token_width(name, width, num_heads), depth=kept, heads=heads, patch_size=patch_size,
             in_channels=in_channels, pos_embed=pos_embed, freeze_patch_embed=freeze_patch_embed, pool=pool,
             image_size=image_size, dtype=dtype, rngs=rngs)
