"""BatchNorm over the global batch or over fixed-size ghost groups, independent of the device count.

Statistics are computed with plain array code over the global (sharded) batch, so XLA inserts whatever
collectives it needs; with `group_size > 0` each run of `group_size` consecutive examples is normalised with
its own statistics. Neither depends on how many devices hold the batch.
"""
from flax import nnx
import jax
import jax.numpy as jnp



class BatchNorm(nnx.Module):
  """Batch normalisation over every axis but the last, optionally in ghost groups.

  Running statistics follow `new = momentum * old + (1 - momentum) * batch_stat`, where `batch_stat` is the
  mean over ghost groups of each group's mean and of each group's *biased* variance (divided by the number of
  elements, as in Flax; PyTorch stores the unbiased one). Statistics are computed in float32 whatever the
  input dtype; the output has the input's dtype.
  """

  def __init__(self, num_features: int, *, momentum: float = 0.9, epsilon: float = 1e-5, group_size: int = 0,
               use_scale: bool = True, use_bias: bool = True, scale_init: float = 1.0,
               dtype=jnp.float32):
    """Creates the layer.

    Args:
      num_features: C, the size of the last (feature) axis.
      momentum: weight of the old running statistics in each update.
      epsilon: added to the variance before the square root.
      group_size: examples per ghost group; 0 normalises over the whole batch.
      use_scale: learn a per-feature scale (initialised to `scale_init`).
      use_bias: learn a per-feature bias (initialised to 0).
      scale_init: initial value of the scale; 0 makes a residual branch start as the identity.
      dtype: output dtype for non-floating inputs; floating inputs keep their own dtype.
    """
    self.num_features = num_features
    self.momentum = momentum
    self.epsilon = epsilon
    self.group_size = group_size
    self.dtype = dtype
    self.scale = nnx.Param(jnp.full((num_features,), scale_init, jnp.float32)) if use_scale else None
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32)) if use_bias else None
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Normalises `x`.

    Args:
      x: (B, ..., C) activations.
      train: True: normalise with batch (or ghost-group) statistics and update the running statistics.
        False: normalise with the running statistics.

    Returns:
      (B, ..., C) normalised activations, in x's dtype (or `dtype` if x is not floating).
    """
    out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else self.dtype
    xf = x.astype(jnp.float32)
    if train:
      xg = self._grouped(xf)
      axes = tuple(range(1, xg.ndim - 1))
      mean = xg.mean(axis=axes, keepdims=True)
      # Two-pass variance: E[x^2] - E[x]^2 loses precision when |mean| >> std.
      centred = xg - mean
      var = jnp.square(centred).mean(axis=axes, keepdims=True)
      y = (centred * jax.lax.rsqrt(var + self.epsilon)).reshape(xf.shape)
      # Mean over groups: with equal-size groups the running mean tracks the whole-batch mean.
      self.mean[...] = jax.lax.stop_gradient(
          self.momentum * self.mean[...] + (1 - self.momentum) * mean.reshape(-1, self.num_features).mean(0))
      self.var[...] = jax.lax.stop_gradient(
          self.momentum * self.var[...] + (1 - self.momentum) * var.reshape(-1, self.num_features).mean(0))
    else:
      y = (xf - self.mean[...]) * jax.lax.rsqrt(self.var[...] + self.epsilon)
    if self.scale is not None:
      y = y * self.scale[...]
    if self.bias is not None:
      y = y + self.bias[...]
    return y.astype(out_dtype)

  def _grouped(self, x: jax.Array) -> jax.Array:
    """(B, ..., C) -> (G, B // G, ..., C), consecutive examples in a group (G = 1 without ghost groups)."""
    b = x.shape[0]
    g = self.group_size or b
    if b % g:
      raise ValueError(f'a batch of {b} is not divisible into BatchNorm groups of {g}')
    return x.reshape(b // g, g, *x.shape[1:])
