"""The online probe's update on its own: it learns separable features and ignores unlabelled examples."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssl_jax.evaluate import online_probe

CFG = ml_collections.ConfigDict(dict(lr=0.5, momentum=0.9, weight_decay=0.0))


def _blobs(n=256, d=16, c=4, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, n)
  centers = rng.normal(size=(c, d)) * 4
  return jnp.asarray(centers[labels] + rng.normal(size=(n, d)), jnp.float32), jnp.asarray(labels, jnp.int32)


def test_probe_learns_separable_features():
  tx = online_probe.optimizer(CFG, total_steps=100)
  state = online_probe.init(16, 4, tx)
  feats, labels = _blobs()
  step = jax.jit(lambda s, f, y: online_probe.update(s, tx, f, y))
  first = None
  for _ in range(30):
    state, metrics = step(state, feats, labels)
    first = float(metrics['probe_top1']) if first is None else first
  assert first < 0.5 and float(metrics['probe_top1']) > 0.95


def test_unlabelled_examples_are_ignored():
  tx = online_probe.optimizer(CFG, total_steps=100)
  state = online_probe.init(16, 4, tx)
  feats, labels = _blobs(n=8)
  half = labels.at[4:].set(-1)
  new_half, m_half = online_probe.update(state, tx, feats, half)
  new_first, m_first = online_probe.update(state, tx, feats[:4], labels[:4])
  np.testing.assert_allclose(m_half['probe_loss'], m_first['probe_loss'], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(new_half['params']), jax.tree.leaves(new_first['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-6)
