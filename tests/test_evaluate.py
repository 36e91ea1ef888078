"""Feature-based evaluators: kNN against a numpy reference, the linear probe on blobs, feature extraction."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax.evaluate import features, knn, linear_probe
from ssl_jax.errors import UserError


def _knn_reference(bank, bank_labels, queries, num_classes, k, temperature):
  """InstDisc weighted kNN, query by query in float64; votes divided by the k neighbours' total weight."""
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  k = min(k, len(bank))
  scores = np.zeros((len(queries), num_classes))
  for q, query in enumerate(queries.astype(np.float64)):
    sim = bank.astype(np.float64) @ query
    neighbours = np.argsort(-sim)[:k]
    weights = np.exp(sim[neighbours] / temperature)
    for n, w in zip(neighbours, weights / weights.sum()):
      scores[q, bank_labels[n]] += w
  return scores


def _random_problem(seed, n, m, d, num_classes):
  rng = np.random.default_rng(seed)
  bank = rng.normal(size=(n, d)).astype(np.float32)
  queries = rng.normal(size=(m, d)).astype(np.float32)
  return bank, rng.integers(0, num_classes, n), queries


@pytest.mark.parametrize('n,m,k,temperature', [(40, 13, 5, 0.1), (30, 7, 1, 0.5), (6, 9, 50, 0.07)])
def test_knn_matches_numpy(n, m, k, temperature):
  bank, bank_labels, queries = _random_problem(n, n, m, 8, 4)
  got = knn.knn_predict(bank, bank_labels, queries, num_classes=4, k=k, temperature=temperature)
  expected = _knn_reference(bank, bank_labels, queries, 4, k, temperature)
  assert got.shape == (m, 4)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.argmax(got, axis=1), np.argmax(expected, axis=1))


def test_knn_k_larger_than_bank_uses_the_whole_bank():
  bank, bank_labels, queries = _random_problem(1, 6, 5, 8, 3)
  clamped = knn.knn_predict(bank, bank_labels, queries, num_classes=3, k=1000)
  whole = knn.knn_predict(bank, bank_labels, queries, num_classes=3, k=6)
  np.testing.assert_allclose(np.asarray(clamped), np.asarray(whole), rtol=1e-6)
  # Every bank entry voted: the class totals are all positive where the class occurs in the bank.
  assert np.all(np.asarray(clamped)[:, np.unique(bank_labels)] > 0)


def test_knn_chunking_does_not_change_scores():
  bank, bank_labels, queries = _random_problem(2, 50, 23, 8, 5)
  one_chunk = knn.knn_predict(bank, bank_labels, queries, num_classes=5, k=7, chunk_size=1024)
  for chunk_size in (1, 5, 23):
    chunked = knn.knn_predict(bank, bank_labels, queries, num_classes=5, k=7, chunk_size=chunk_size)
    # Different matmul shapes round differently in the last bit; the neighbours and votes are the same.
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(one_chunk), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.argmax(chunked, axis=1), np.argmax(one_chunk, axis=1))


def test_knn_unlabelled_bank_entries_vote_for_no_class():
  bank = np.array([[1.0, 0.0], [0.8, 0.6]], np.float32)
  scores = np.asarray(knn.knn_predict(bank, np.array([-1, 1]), bank[:1], num_classes=3, k=2))
  # Label -1 must not wrap around onto class 2; only the labelled neighbour's share is counted.
  assert scores[0, 2] == 0.0 and scores[0, 0] == 0.0
  np.testing.assert_allclose(scores[0, 1], 1 / (1 + np.exp((1.0 - 0.8) / 0.1)), rtol=1e-5)


def _blobs(seed, n, d, num_classes, spread):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, d)) * spread
  labels = rng.integers(0, num_classes, n)
  return (centres[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def test_knn_accuracy_perfect_on_separated_clusters():
  feats, labels = _blobs(0, 300, 16, 5, spread=10.0)
  acc = knn.knn_accuracy(feats[:200], labels[:200], feats[200:], labels[200:], num_classes=5, k=20)
  assert acc == 1.0


def test_knn_accuracy_near_chance_on_random_labels():
  bank, bank_labels, queries = _random_problem(3, 400, 400, 16, 4)
  query_labels = np.random.default_rng(4).integers(0, 4, 400)
  acc = knn.knn_accuracy(bank, bank_labels, queries, query_labels, num_classes=4, k=20)
  assert 0.15 < acc < 0.35  # chance is 0.25; one standard deviation is about 0.02


def test_knn_accuracy_scores_only_masked_queries():
  feats, labels = _blobs(1, 300, 16, 5, spread=10.0)
  query_labels = labels[200:].copy()
  wrong = np.arange(100) % 2 == 1
  query_labels[wrong] = (query_labels[wrong] + 1) % 5
  accuracy = lambda mask: knn.knn_accuracy(feats[:200], labels[:200], feats[200:], query_labels,
                                                 num_classes=5, k=20, query_mask=mask)
  assert accuracy(None) == 0.5
  assert accuracy(~wrong) == 1.0
  with pytest.raises(UserError, match='no query'):
    accuracy(np.zeros(100, bool))


@pytest.mark.parametrize('optimizer,lr', [('adamw', 1e-2), ('sgd', 0.3)])
def test_linear_probe_fits_separable_blobs(optimizer, lr):
  feats, labels = _blobs(2, 900, 20, 6, spread=2.0)
  result = linear_probe.linear_probe_accuracy(feats[:600], labels[:600], feats[600:], labels[600:], num_classes=6,
                                          epochs=30, optimizer=optimizer, lr=lr)
  assert result['top1'] > 0.95
  assert result['top5'] >= result['top1']


def test_linear_probe_near_chance_on_random_labels():
  rng = np.random.default_rng(5)
  feats = rng.normal(size=(1000, 20)).astype(np.float32)
  labels = rng.integers(0, 4, 1000)
  result = linear_probe.linear_probe_accuracy(feats[:600], labels[:600], feats[600:], labels[600:], num_classes=4,
                                          epochs=30)
  assert 0.15 < result['top1'] < 0.35  # chance is 0.25
  assert 'top5' not in result  # fewer than 5 classes


def test_linear_probe_standardizes_with_train_statistics():
  feats, labels = _blobs(3, 200, 6, 3, spread=2.0)
  feats = feats * np.array([1e3, 1e-3, 1.0, 5.0, 1.0, 1.0], np.float32) + 7.0
  feats[:, 5] = 4.0  # a constant feature must not be divided by zero
  params = linear_probe.train_linear_probe(feats, labels, num_classes=3, epochs=5)
  np.testing.assert_allclose(params['mean'], feats.mean(axis=0), rtol=1e-5)
  np.testing.assert_allclose(params['std'][:5], feats[:, :5].std(axis=0), rtol=1e-4)
  assert params['std'][5] == 1.0
  logits = np.asarray(linear_probe.linear_predict(params, feats))
  expected = (feats - params['mean']) / params['std'] @ np.asarray(params['w']) + np.asarray(params['b'])
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
  assert np.all(np.isfinite(logits))
  raw = linear_probe.train_linear_probe(feats, labels, num_classes=3, epochs=5, standardize=False)
  np.testing.assert_array_equal(raw['mean'], 0.0)
  np.testing.assert_array_equal(raw['std'], 1.0)


def test_linear_probe_rejects_bad_input():
  feats, labels = _blobs(4, 20, 4, 3, spread=1.0)
  with pytest.raises(UserError, match='optimizer'):
    linear_probe.train_linear_probe(feats, labels, num_classes=3, optimizer='lbfgs')
  with pytest.raises(UserError, match='labels'):
    linear_probe.train_linear_probe(feats, labels - 1, num_classes=3)


_features_fn = jax.jit(lambda images: 2.0 * images.reshape(images.shape[0], -1)[:, :3])


def test_extract_features_drops_masked_rows():
  images = np.arange(16 * 2 * 2 * 1, dtype=np.float32).reshape(16, 2, 2, 1)
  labels = np.arange(16)
  mask = np.arange(16) % 3 != 0
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  on_mesh = lambda x: jax.device_put(x, NamedSharding(mesh, P('data')))
  batches = [
      {'image': images[:8], 'label': labels[:8], 'mask': mask[:8]},  # numpy, boolean mask
      {'image': on_mesh(images[8:]), 'label': on_mesh(labels[8:]),
       'mask': on_mesh(mask[8:].astype(np.int32))},  # sharded global arrays, integer mask
  ]
  feats, got_labels = features.extract_features(_features_fn, batches)
  assert isinstance(feats, np.ndarray) and isinstance(got_labels, np.ndarray)
  assert feats.dtype == np.float32
  np.testing.assert_array_equal(got_labels, labels[mask])
  np.testing.assert_array_equal(feats, 2.0 * images.reshape(16, -1)[mask, :3])
