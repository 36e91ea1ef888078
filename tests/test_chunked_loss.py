"""The chunked contrastive losses (`chunk_size` > 0): the plain loss's value and gradients, O(N·C) memory."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import common as config_common, repmix_cifar10, selfcon_cifar100, simclr_cifar10, supcon_cifar10
from ssl_jax import config_schema, losses
from ssl_jax.errors import UserError
from ssl_jax.methods import common, selfcon

_LOSSES = {
    'ntxent': losses.contrastive_loss,
    'supcon': losses.contrastive_loss,
    'selfcon_sub_anchors': functools.partial(losses.selfcon_loss, anchor_views=(0,), base_temperature=0.07),
    'log_of_mean': losses.nt_xent_log_of_mean,
}


def _features(seed, b, v, d=8):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, v, d)), jnp.float32)


@functools.cache
def _value_and_grad(name: str, chunk_size: int):
  """One jitted value-and-gradient per (loss, chunk size): the cases below reuse them."""
  fn = lambda x, labels: _LOSSES[name](x, labels, temperature=0.2, chunk_size=chunk_size)
  if name in ('ntxent', 'log_of_mean'):
    fn = lambda x, labels: _LOSSES[name](x, temperature=0.2, chunk_size=chunk_size)
  return jax.jit(jax.value_and_grad(fn))


# (loss, B, V, labels, chunk size): 14, 21, 13 and 7 anchors, so every chunk size but 7 on 14 anchors leaves a
# partial last chunk.
_CASES = [
    ('ntxent', 7, 2, None, 3),
    ('ntxent', 7, 2, None, 7),
    ('supcon', 7, 3, [0, 1, 0, 2, 1, 0, 2], 3),
    # Single view, labels 1, 3 and 4 seen once: those anchors have no positive and are left out.
    ('supcon', 13, 1, [0, 0, 1, 2, 2, 2, 3, 5, 5, 4, 6, 6, 6], 3),
    ('selfcon_sub_anchors', 7, 2, [0, 1, 0, 2, 1, 0, 3], 3),  # anchors: the 7 vectors of view 0
    ('log_of_mean', 7, 2, None, 3),
]


@pytest.mark.parametrize('name, b, v, labels, chunk_size', _CASES)
def test_chunked_value_and_gradients_equal_the_plain_loss(name, b, v, labels, chunk_size):
  x = _features(b * 10 + v, b, v)
  labels = None if labels is None else jnp.asarray(labels, jnp.int32)
  want, want_grad = _value_and_grad(name, 0)(x, labels)
  got, got_grad = _value_and_grad(name, chunk_size)(x, labels)
  assert np.isfinite(float(got)) and np.all(np.isfinite(got_grad))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(got_grad, want_grad, atol=1e-5)
  assert np.abs(want_grad).max() > 1e-3  # the gradients compared are not all zero


def test_chunks_of_anchors_without_positives_are_masked():
  # Every label distinct in one view: no anchor has a positive, in any chunk. Loss 0, gradient 0, no NaN.
  x = _features(0, 13, 1)
  loss, grad = _value_and_grad('supcon', 3)(x, jnp.arange(13, dtype=jnp.int32))
  assert float(loss) == 0.0
  np.testing.assert_array_equal(grad, 0.0)
  # Anchors 0, 1 (label 0) and 2, 12 (label 1) have a positive; chunks [3-5], [6-8], [9-11] have none.
  labels = jnp.asarray([0, 0, 1] + list(range(10, 19)) + [1], jnp.int32)
  got, got_grad = _value_and_grad('supcon', 3)(x, labels)
  want, want_grad = _value_and_grad('supcon', 0)(x, labels)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  np.testing.assert_allclose(got_grad, want_grad, atol=1e-5)
  assert float(got) > 0


def test_chunked_loss_on_a_sharded_batch_equals_unsharded():
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  x = _features(3, 16, 2)
  labels = jnp.asarray(np.arange(16) % 5, jnp.int32)
  sharded = NamedSharding(mesh, P('data'))
  got, got_grad = _value_and_grad('supcon', 7)(jax.device_put(x, sharded), jax.device_put(labels, sharded))
  want, want_grad = _value_and_grad('supcon', 0)(x, labels)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  np.testing.assert_allclose(got_grad, want_grad, atol=1e-5)


def _temp_bytes(batch: int, chunk_size: int) -> int:
  """XLA's temporary memory for value-and-gradient of NT-Xent on (batch, 2, 16) features (compiled only)."""
  fn = jax.jit(jax.grad(lambda x: losses.contrastive_loss(x, temperature=0.2, chunk_size=chunk_size)))
  x = jax.ShapeDtypeStruct((batch, 2, 16), jnp.float32)
  return fn.lower(x).compile().memory_analysis().temp_size_in_bytes


def test_chunked_memory_grows_linearly_in_the_batch():
  # 4x the batch: the plain loss holds the (2B)² logits (16x), chunks of 64 anchors hold 64 x 2B (4x).
  plain = _temp_bytes(1024, 0) / _temp_bytes(256, 0)
  chunked = _temp_bytes(1024, 64) / _temp_bytes(256, 64)
  assert plain > 12, plain
  assert chunked < 6, chunked
  assert _temp_bytes(1024, 64) < _temp_bytes(1024, 0) / 10


# ----------------------------------------------------------------------------------------------- config
def _scans(fn, *args) -> int:
  """How many loops (`scan`: the chunked path) the traced `fn(*args)` runs; tracing only, no compile."""
  return sum(e.primitive.name == 'scan' for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns)


def test_methods_read_loss_chunk_size():
  assert config_common.base_config().loss.chunk_size == 0
  z, labels = _features(5, 6, 2), jnp.asarray([0, 1, 0, 1, 2, 2], jnp.int32)
  for reduction, lab in (('mean_of_log', labels), ('log_of_mean', None)):
    for size in (0, 5):
      cfg = ml_collections.ConfigDict(dict(temperature=0.2, reduction=reduction, chunk_size=size,
                                           supcon_form='out', no_positive='exclude'))
      assert _scans(lambda z: common.contrastive_objective(z, lab, cfg), z) == (1 if size else 0)
  # SelfCon-S*: both of its terms (sub-network anchors, then the backbone's SupCon-S) are chunked.
  zs = _features(6, 6, 2).reshape(6, 1, 2, 8)  # (B, views, exits, P)
  objective = functools.partial(selfcon.objective, name='selfcon', alpha=0.5, temperature=0.1,
                                base_temperature=0.07, chunk_size=4)
  assert _scans(lambda z: objective(z, labels), zs) == 2


@pytest.mark.parametrize('module', [simclr_cifar10, supcon_cifar10, selfcon_cifar100, repmix_cifar10])
def test_bad_chunk_size_is_a_user_error_before_compute(module):
  c = module.get_config('runlocal,synthetic')
  c.loss.chunk_size = -1
  with pytest.raises(UserError, match='loss.chunk_size'):
    config_schema.validate(c)
