"""The compute dtype of a model: `config.model.dtype` = 'float32' | 'bfloat16' | 'auto'.

Mixed precision here means: the convolutions (the encoder's, SelfCon's sub-network's, the batch-fusion
layer's) run in bfloat16, and everything a step keeps, sums or exponentiates stays float32: parameters,
gradients, optimizer state, BatchNorm statistics (computed and stored in float32 by
`ssl_jax.models.norm.BatchNorm`), conv biases and their gradients, the pooled encoder features, the MLP heads,
and every loss's logits and log-sum-exp. bfloat16 has float32's exponent range, so no loss scaling is needed;
float16 (which would need it) is not offered.
"""
from flax.nnx.nn import dtypes as nnx_dtypes
import jax
import jax.numpy as jnp


DTYPES = ('float32', 'bfloat16', 'auto')
# Backends with fast bfloat16 matrix units; on the CPU bfloat16 is emulated and slower than float32.
_BFLOAT16_BACKENDS = ('gpu', 'cuda', 'rocm', 'tpu')


def compute_dtype(name: str, backend: str | None = None) -> jnp.dtype:
  """The compute dtype `model.dtype` names.

  Args:
    name: 'float32', 'bfloat16', or 'auto' (bfloat16 on GPU and TPU, float32 on the CPU).
    backend: the platform 'auto' decides for; None: `jax.default_backend()`.

  Returns:
    jnp.float32 or jnp.bfloat16 as a numpy dtype.

  Raises:
    ValueError: for any other name (config_schema refuses it in a config).
  """
  if name not in DTYPES:
    raise ValueError(f'dtype {name!r} is not one of {", ".join(DTYPES)}')
  if name == 'auto':
    backend = backend or jax.default_backend()
    name = 'bfloat16' if backend in _BFLOAT16_BACKENDS else 'float32'
  return jnp.dtype(name)


def promote_keeping_bias_float32(args, /, *, dtype=None, inexact: bool = True):
  """A flax `promote_dtype` for nnx.Conv / nnx.Linear: input and kernel in `dtype`, the bias left float32.

  The bias is then added in float32 (the layer's output is float32) and its gradient, a sum of the output's
  cotangent over batch and space, is accumulated in float32. XLA sums a bfloat16 array in bfloat16: on the
  CPU 4096 bfloat16 ones sum to 512.

  Args:
    args: (inputs, kernel, bias); bias may be None.
    dtype: the compute dtype; None infers it from inputs and kernel.
    inexact: require a floating (or complex) result dtype.

  Returns:
    (inputs, kernel, bias) with inputs and kernel cast.
  """
  inputs, kernel, bias = args
  inputs, kernel = nnx_dtypes.promote_dtype((inputs, kernel), dtype=dtype, inexact=inexact)
  return inputs, kernel, bias
