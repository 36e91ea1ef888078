"""MLP heads: projectors and predictors of the contrastive and distillation methods."""
from flax import nnx
import jax

from ssl_jax.models.norm import BatchNorm

# leaky_relu: negative slope 0.01, PyTorch's default and JAX's (the RepMix projector).
_ACTIVATIONS = {'relu': jax.nn.relu, 'gelu': jax.nn.gelu, 'silu': jax.nn.silu,
                'leaky_relu': jax.nn.leaky_relu}


class MLPHead(nnx.Module):
  """`num_layers - 1` x (Linear -> BN -> activation), then Linear(out_dim), optionally a final affine-free BN.

  The final BN (`last_bn`) is the SimCLR v2 / MoCo v3 projector ending; the last Linear has no bias then, as
  a BN without bias would remove it anyway. Hidden Linears have no bias when followed by BN, for the same
  reason.

  The head computes in float32 even when the encoder runs in bfloat16 (`model.dtype`): its input, the pooled
  encoder features, and its parameters are float32. What the losses normalise therefore carries no bfloat16
  rounding, for about 0.1-0.2% of the FLOPs of the recipes' ResNets.
  """

  def __init__(self, in_dim: int, *, hidden_dim: int, out_dim: int, num_layers: int = 2, use_bn: bool = True,
               last_bn: bool = False, activation: str = 'relu', bn_group_size: int = 0,
               bn_momentum: float = 0.9, out_bias: bool = True, rngs: nnx.Rngs):
    """Builds the head.

    Args:
      in_dim: input feature size.
      hidden_dim: width of the hidden layers.
      out_dim: output size.
      num_layers: number of Linear layers; 1 is a single Linear(in_dim, out_dim).
      use_bn: BatchNorm after every hidden Linear.
      last_bn: a BatchNorm without scale and bias after the last Linear.
      activation: 'relu', 'gelu', 'silu' or 'leaky_relu' (slope 0.01).
      bn_group_size: ghost-BatchNorm group size (0 = whole batch).
      bn_momentum: BatchNorm running-statistics momentum.
      out_bias: a bias on the last Linear when no final BN follows it (MoCo v3's heads have none).
      rngs: initialisation keys; not kept by the head.
    """
    if num_layers < 1:  # would silently build one Linear
      raise ValueError(f'num_layers={num_layers} must be at least 1')
    self.activation = activation
    linears, norms = [], []
    dim = in_dim
    for _ in range(num_layers - 1):
      linears.append(nnx.Linear(dim, hidden_dim, use_bias=not use_bn, rngs=rngs))
      norms.append(BatchNorm(hidden_dim, group_size=bn_group_size, momentum=bn_momentum) if use_bn else None)
      dim = hidden_dim
    self.hidden = nnx.List(linears)
    self.hidden_bn = nnx.List(norms)
    self.out = nnx.Linear(dim, out_dim, use_bias=out_bias and not last_bn, rngs=rngs)
    self.out_bn = (BatchNorm(out_dim, group_size=bn_group_size, momentum=bn_momentum, use_scale=False,
                             use_bias=False) if last_bn else None)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Applies the head.

    Args:
      x: (B, in_dim) features.
      train: BatchNorm mode.

    Returns:
      (B, out_dim) outputs.
    """
    act = _ACTIVATIONS[self.activation]
    for linear, bn in zip(self.hidden, self.hidden_bn):
      x = linear(x)
      if bn is not None:
        x = bn(x, train=train)
      x = act(x)
    x = self.out(x)
    return self.out_bn(x, train=train) if self.out_bn is not None else x
