"""Weighted k-nearest-neighbour classification of frozen features.

The protocol of Wu et al., 2018 ("Unsupervised Feature Learning via Non-Parametric Instance Discrimination"),
used by most SSL papers and by solo-learn: cosine similarity to a bank of labelled training features; the k
most similar bank entries vote for their class with weight exp(similarity / temperature).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.errors import UserError


def _normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


@functools.partial(jax.jit, static_argnames=('num_classes', 'k', 'chunk_size'))
def _knn_scores(bank, bank_labels, queries, *, num_classes, k, temperature, chunk_size):
  bank = _normalize(bank)
  m = queries.shape[0]
  num_chunks = -(-m // chunk_size)
  padded = jnp.pad(queries, ((0, num_chunks * chunk_size - m), (0, 0)))

  def chunk_scores(chunk):
    # Only a (chunk_size, N) similarity block is ever live, whatever the number of queries.
    sim = jnp.matmul(_normalize(chunk), bank.T, precision=jax.lax.Precision.HIGHEST)
    top_sim, top_idx = jax.lax.top_k(sim, k)
    top_labels = bank_labels[top_idx]
    # Out-of-range labels must not wrap around (negative indices would) onto a real class.
    valid = (top_labels >= 0) & (top_labels < num_classes)
    # exp(sim / T) normalised over the k neighbours: the same argmax, but no overflow at small T.
    weights = jax.nn.softmax(top_sim / temperature, axis=-1)
    weights = jnp.where(valid, weights, 0.0)
    # Scatter-add rather than a one-hot gather: O(chunk · (k + C)) memory, not O(chunk · k · C).
    vote = lambda w, labels: jnp.zeros(num_classes, jnp.float32).at[labels].add(w, mode='drop')
    return jax.vmap(vote)(weights, top_labels)

  scores = jax.lax.map(chunk_scores, padded.reshape(num_chunks, chunk_size, -1))
  return scores.reshape(num_chunks * chunk_size, num_classes)[:m]


def knn_predict(bank_feats, bank_labels, query_feats, *, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk_size: int = 1024) -> jax.Array:
  """Class scores of each query from a temperature-weighted vote of its k nearest bank features.

  Features are L2-normalised here, so similarity is cosine similarity. Bank entries whose label is outside
  [0, num_classes) (e.g. -1 for unlabelled) take a neighbour slot but vote for no class; drop them beforehand
  if that matters.

  Args:
    bank_feats: (N, D) features of the labelled bank (usually the train split).
    bank_labels: (N,) integer labels of the bank.
    query_feats: (M, D) features to classify.
    num_classes: number of classes C.
    k: number of neighbours; clamped to N when the bank is smaller.
    temperature: vote weight is exp(similarity / temperature).
    chunk_size: queries scored at once; memory is O(chunk_size · N).

  Returns:
    (M, C) float32 vote shares: each neighbour's weight exp(similarity / T), divided by the sum over the k
    neighbours, added to its class. Rows sum to 1 (less where neighbours had invalid labels); the predicted
    class is the argmax.
  """
  bank_feats, query_feats = jnp.asarray(bank_feats), jnp.asarray(query_feats)
  n, m = bank_feats.shape[0], query_feats.shape[0]
  if n == 0 or k < 1 or chunk_size < 1:
    raise UserError(f'kNN needs a non-empty bank, k >= 1 and chunk_size >= 1 (got N={n}, k={k}, '
                    f'chunk_size={chunk_size}); check the bank split and the eval config')
  if m == 0:
    return jnp.zeros((0, num_classes), jnp.float32)
  return _knn_scores(bank_feats, jnp.asarray(bank_labels), query_feats, num_classes=num_classes,
                     k=min(k, n), temperature=temperature, chunk_size=min(chunk_size, m))


def knn_accuracy(bank_feats, bank_labels, query_feats, query_labels, *, num_classes: int, k: int = 200,
                 temperature: float = 0.1, chunk_size: int = 1024, query_mask=None) -> float:
  """Top-1 accuracy of `knn_predict` on labelled queries.

  Args:
    bank_feats: (N, D) bank features.
    bank_labels: (N,) bank labels.
    query_feats: (M, D) query features.
    query_labels: (M,) true labels of the queries.
    num_classes: number of classes C.
    k: number of neighbours (clamped to N).
    temperature: vote temperature.
    chunk_size: queries scored at once.
    query_mask: optional (M,) boolean; only queries where it is true are scored.

  Returns:
    Accuracy in [0, 1] over the scored queries.
  """
  scores = knn_predict(bank_feats, bank_labels, query_feats, num_classes=num_classes, k=k,
                       temperature=temperature, chunk_size=chunk_size)
  correct = np.asarray(jnp.argmax(scores, axis=1)) == np.asarray(query_labels)
  mask = np.ones_like(correct) if query_mask is None else np.asarray(query_mask, bool)
  if not mask.any():
    raise UserError('kNN accuracy has no query to score (empty query set or all-false query_mask); '
                    'check the eval split')
  return float(correct[mask].mean())
