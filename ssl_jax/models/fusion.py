"""Batch fusion: a learnable embedding layer through which the samples of a batch exchange information.

OUR READING of Zhang, Shen & Liu, "From Pretext to Purpose: Batch-Adaptive Self-Supervised Learning" (BA-SSL,
arXiv 2311.09974). Neither the paper's full text nor any code was available to us; only its abstract and
module names are known (shared/reference/repmix_and_batch_fusion.md, "Paper 2"): the batch is "reduced in
dimension and reconstructed" through an "Embedding Layer" made of Patch Partition -> Conv Embedding -> Patch
Restore, so that "formerly isolated" samples communicate inside the batch, and the effect "adaptively
amplifies as the training progresses". Everything below beyond those names is a guess:

  1. Patch Partition: space-to-depth with patch size P, (B, H, W, C) -> (B, H/P, W/P, P·P·C).
  2. Groups: the batch is cut into groups of G consecutive samples; within a group the G patch tensors are
     stacked on the channel axis, (B/G, H/P, W/P, G·P·P·C). [guess: how the batch enters the conv]
  3. Conv Embedding: `num_layers` (L) layers of k×k conv to `width` (D) channels -> normalisation ->
     activation, then a linear 1×1 conv back to G·P·P·C channels, so every output sample sees the other
     samples of its group and the neighbouring patches. [guess: depth, width, kernel, the linear output
     projection; defaults k = 3, LayerNorm, GELU follow the Swin-style naming of the modules]
  4. Unstack and Patch Restore (depth-to-space) back to (B, H, W, C).
  5. Adaptive residual: out = x + α·fuse(x). α is a learned scalar initialised at 0 (gate='learned', the
     default) or a schedule rising with training progress (gate='schedule': α = gate_max·(1 - cos πp)/2 at
     progress p in [0, 1]). [guess: what "adaptively amplifies" means] At α = 0 the layer is exactly the
     identity, so training starts as the framework alone (and the embedding weights get their first
     gradient once α has moved, as in any zero-gated residual branch).
  L = 0 means no embedding layer: fuse(x) = 0 and the layer is the identity (the ablation's baseline row).

Normalisation: LayerNorm over the channels at each grid position of each group (or none). BatchNorm over the
group-stacked tensor would normalise every group with statistics of the whole batch, so information would
cross group boundaries and the output of a sample would depend on samples outside its group; LayerNorm uses
only the values of one position of one group, needs no running statistics, and acts the same in training
and inference and on any number of devices.

Cost per image: about H·W·C·D·(k² + 1) + (L - 1)·(H/P)·(W/P)·k²·D²/G multiply-adds (the first embedding
layer and the restore projection do not depend on P or G), e.g. 6 M at 32 px with D = 128 (ResNet-18 on
CIFAR: 0.56 G) and 98 M at 224 px with P = 16, D = 64 (ResNet-50: 4.1 G).
"""
import math

from flax import nnx
import jax
import jax.numpy as jnp

from ssl_jax.errors import UserError
from ssl_jax.models import precision

GATES = ('learned', 'schedule')
NORMS = ('layer', 'none')
ACTIVATIONS = {'gelu': nnx.gelu, 'relu': nnx.relu}


def patch_partition(x: jax.Array, patch_size: int) -> jax.Array:
  """Space-to-depth: (B, H, W, C) -> (B, H/P, W/P, P·P·C); channel index (row·P + col)·C + c."""
  b, h, w, c = x.shape
  p = patch_size
  if h % p or w % p:
    raise UserError(f'batch fusion patch_size={p} must divide the view size {h}x{w}; set '
                    '--config.fusion.patch_size to a divisor of data.image_size (and of config.stages)')
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def patch_restore(x: jax.Array, patch_size: int) -> jax.Array:
  """Depth-to-space, the inverse of `patch_partition`: (B, h, w, P·P·C) -> (B, h·P, w·P, C)."""
  b, h, w, k = x.shape
  p = patch_size
  c = k // (p * p)
  x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c)


def stack_groups(x: jax.Array, group_size: int) -> jax.Array:
  """(B, h, w, K) -> (B/G, h, w, G·K): G consecutive samples stacked on channels (sample-major)."""
  b, h, w, k = x.shape
  g = group_size
  if b % g:
    raise UserError(f'batch of {b} samples is not divisible by fusion.group_size={g}; use a batch_size that '
                    'is a multiple of the group size')
  return x.reshape(b // g, g, h, w, k).transpose(0, 2, 3, 1, 4).reshape(b // g, h, w, g * k)


def unstack_groups(x: jax.Array, group_size: int) -> jax.Array:
  """The inverse of `stack_groups`: (B/G, h, w, G·K) -> (B, h, w, K)."""
  n, h, w, gk = x.shape
  g = group_size
  return x.reshape(n, h, w, g, gk // g).transpose(0, 3, 1, 2, 4).reshape(n * g, h, w, gk // g)


def check_options(*, patch_size: int, group_size: int, num_layers: int, width: int, kernel_size: int,
                  norm: str, activation: str, gate: str) -> None:
  """Raises UserError for a setting `BatchFusion` cannot use."""
  for name, value in (('patch_size', patch_size), ('group_size', group_size), ('width', width),
                      ('kernel_size', kernel_size)):
    if value < 1:
      raise UserError(f'fusion.{name}={value} must be a positive integer')
  if num_layers < 0:
    raise UserError(f'fusion.num_layers={num_layers} must be >= 0 (0 = no embedding layer: fusion off)')
  for name, value, known in (('norm', norm, NORMS), ('activation', activation, tuple(ACTIVATIONS)),
                             ('gate', gate, GATES)):
    if value not in known:
      raise UserError(f'fusion.{name}={value!r} is unknown; use one of {", ".join(known)}')


class BatchFusion(nnx.Module):
  """x + α·fuse(x): the samples of a group of G exchange information through conv layers (our reading).

  See the module docstring for what is known from the paper and what is a guess.
  """

  def __init__(self, channels: int, *, patch_size: int = 4, group_size: int = 4, num_layers: int = 2,
               width: int = 128, kernel_size: int = 3, norm: str = 'layer', activation: str = 'gelu',
               gate: str = 'learned', gate_init: float = 0.0, gate_max: float = 1.0, dtype=jnp.float32,
               rngs: nnx.Rngs):
    """Builds the layer.

    Args:
      channels: C, the channels of the images it fuses.
      patch_size: P, the side of the patches the Patch Partition folds into channels.
      group_size: G, the samples that see each other (consecutive samples of the batch).
      num_layers: L, the conv embedding layers; 0 makes the layer the identity.
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
    check_options(patch_size=patch_size, group_size=group_size, num_layers=num_layers, width=width,
                  kernel_size=kernel_size, norm=norm, activation=activation, gate=gate)
    self.patch_size, self.group_size, self.num_layers = patch_size, group_size, num_layers
    self.gate, self.gate_max, self.activation = gate, float(gate_max), activation
    self.dtype = dtype
    self.alpha = nnx.Param(jnp.asarray(gate_init, jnp.float32)) if gate == 'learned' and num_layers else None
    stacked = group_size * patch_size * patch_size * channels
    conv = lambda i, o, k, bias: nnx.Conv(i, o, (k, k), padding='SAME', use_bias=bias, dtype=dtype,
                                          param_dtype=jnp.float32, rngs=rngs,
                                          promote_dtype=precision.promote_keeping_bias_float32)
    # A bias before LayerNorm is cancelled by its centring.
    self.convs = nnx.List([conv(stacked if i == 0 else width, width, kernel_size, norm == 'none')
                           for i in range(num_layers)])
    self.norms = nnx.List([nnx.LayerNorm(width, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
                           for _ in range(num_layers)] if norm == 'layer' else [])
    self.restore = conv(width, stacked, 1, True) if num_layers else None

  def alpha_at(self, progress=None) -> jax.Array:
    """α, float32 scalar: the learned gate, or the scheduled one at `progress` (step / total steps)."""
    if not self.num_layers:
      return jnp.zeros((), jnp.float32)
    if self.gate == 'learned':
      return self.alpha[...]
    p = jnp.clip(jnp.asarray(0.0 if progress is None else progress, jnp.float32), 0.0, 1.0)
    return self.gate_max * (1.0 - jnp.cos(math.pi * p)) / 2.0

  def fuse(self, x: jax.Array) -> jax.Array:
    """The fusion branch: (B, H, W, C) -> (B, H, W, C) float32; B % G == 0, H and W multiples of P."""
    if not self.num_layers:
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
      (B, H, W, C) x + α·fuse(x) in x's dtype; exactly x when α = 0 or num_layers = 0.
    """
    if not self.num_layers:
      return x
    alpha = self.alpha_at(progress)
    return (x.astype(jnp.float32) + alpha * self.fuse(x)).astype(x.dtype)
