"""Features of a frozen encoder in inference mode, as every evaluation sees them."""
from collections.abc import Callable, Iterable

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ssl_jax.data import augment
from ssl_jax.errors import UserError



def _to_host(x) -> np.ndarray:
  # A global array spanning several processes is gathered so that every process scores the whole split.
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def extract_features(apply_fn: Callable, batches: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
  """Runs `apply_fn` over every batch and keeps the features of the real (unmasked) examples.

  Args:
    apply_fn: images (B, H, W, C) -> features (B, D); jitted by the caller.
    batches: dicts with 'image' (B, H, W, C), 'label' (B,) and 'mask' (B,), where a false / zero mask marks
      padding rows that are dropped. Arrays may be numpy or (sharded) global jax arrays.

  Returns:
    features: (N, D) float32 numpy array.
    labels: (N,) numpy array, in the same order.
  """
  feats, labels = [], []
  for batch in batches:
    keep = _to_host(batch['mask']).astype(bool)
    feats.append(_to_host(apply_fn(batch['image'])).astype(np.float32)[keep])
    labels.append(_to_host(batch['label'])[keep])
  if not feats:
    raise UserError('feature extraction got no batches; check that the evaluation split is not empty')
  return np.concatenate(feats), np.concatenate(labels)


def inference_features(graphdef, params, batch_stats, images, resolution: int,
                       exits: bool = False) -> jax.Array:
  """Encoder features (N, D) in inference mode (BatchNorm running statistics), as every evaluation sees them.

  Args:
    graphdef, params, batch_stats: the split model (it has `features(images, *, train)`).
    images: uint8 (N, H, W, C), or float in [0, 1]; centre-cropped to a square and resized to `resolution`.
    resolution: the side the encoder was trained at.
    exits: return the features of every exit of a multi-exit model (`exit_features`, see
      `ssl_jax.evaluate.exits`), stacked to (N, E, D).
  """
  x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
  x = jax.vmap(lambda im: augment.center_crop_resize(im, resolution))(x)
  model = nnx.merge(graphdef, params, batch_stats)
  return jnp.stack(model.exit_features(x, train=False), axis=1) if exits else model.features(x, train=False)
