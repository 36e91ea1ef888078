"""Pure loss functions over whole (global) batches.

Every function here takes global-batch arrays and is plain array code: under `jax.jit` with the batch sharded
on the mesh's `data` axis, XLA inserts the collectives, so there is no gather or rank arithmetic anywhere.
Logits and log-sum-exp are computed in float32 whatever the input dtype.
"""
import jax
import jax.numpy as jnp

# Excludes an anchor from its own softmax. Finite, so that no inf ever meets a zero in the backward pass.
_SELF_LOGIT = -1e9


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """Scales `x` to unit L2 norm along `axis` (in float32); zero vectors stay zero."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def contrastive_loss(features: jax.Array, labels: jax.Array | None = None, *, temperature: float) -> jax.Array:
  """NT-Xent (SimCLR) without labels, SupCon's L_out with labels, over every view of every example.

  All B·V vectors are anchors. For an anchor, the softmax runs over every *other* vector of the batch; its
  positives are the other views of the same example (no labels), or every other vector whose example has the
  same label (labels). The anchor's loss is the mean over its positives of -log softmax; the result is the mean
  over anchors that have at least one positive. An anchor without positives (a single view and a label seen
  once in the batch) is left out instead of producing NaN; if no anchor has a positive the loss is 0.

  With V = 2 and no labels this is SimCLR's NT-Xent (Chen et al., 2020); with labels it is L_out of Khosla et
  al., 2020 ("Supervised Contrastive Learning", eq. 2).

  Args:
    features: (B, V, D) projections; L2-normalised here, so raw projector outputs are fine.
    labels: optional (B,) integer class labels.
    temperature: softmax temperature τ.

  Returns:
    Scalar float32 loss.

  Example:
    >>> z = jax.random.normal(jax.random.key(0), (4, 2, 8))
    >>> contrastive_loss(z, temperature=0.5).shape
    ()
  """
  b, v, d = features.shape
  # View-major rows: row i·B + n is view i of example n. Any fixed order gives the same mean.
  z = l2_normalize(jnp.swapaxes(features, 0, 1).reshape(v * b, d))
  ids = jnp.arange(b) if labels is None else labels
  ids = jnp.tile(ids, v)

  logits = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST) / temperature
  is_self = jnp.eye(v * b, dtype=bool)
  logits = jnp.where(is_self, _SELF_LOGIT, logits)
  log_prob = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)

  positive = (ids[:, None] == ids[None, :]) & ~is_self
  num_pos = positive.sum(axis=1)
  mean_log_prob_pos = jnp.where(positive, log_prob, 0.0).sum(axis=1) / jnp.maximum(num_pos, 1)
  has_pos = num_pos > 0
  return -jnp.where(has_pos, mean_log_prob_pos, 0.0).sum() / jnp.maximum(has_pos.sum(), 1)


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
  """Mean over the batch of -cos(p, z), with a stop-gradient on `z` (SimSiam's D, Chen & He, 2021).

  Args:
    p: (B, D) predictions (gradients flow into these).
    z: (B, D) targets; wrapped in `jax.lax.stop_gradient` here, so callers need not.

  Returns:
    Scalar float32 in [-1, 1].
  """
  cos = jnp.sum(l2_normalize(p) * l2_normalize(jax.lax.stop_gradient(z)), axis=-1)
  return -jnp.mean(cos)


def regression_loss(p: jax.Array, z: jax.Array) -> jax.Array:
  """BYOL's normalised regression loss, mean over the batch of 2 - 2·cos(p, z) (Grill et al., 2020, eq. 2).

  Args:
    p: (B, D) online predictions.
    z: (B, D) target projections; stop-gradient'ed here.

  Returns:
    Scalar float32 in [0, 4].
  """
  return 2.0 + 2.0 * negative_cosine(p, z)


def moco_logits(q: jax.Array, k: jax.Array, queue: jax.Array, *, temperature: float) -> jax.Array:
  """MoCo's logits: the positive q·k first, then q against every queued key, over τ (He et al., 2020, Alg. 1).

  Args:
    q: (B, D) queries; L2-normalised here.
    k: (B, D) keys of the same images (other view), stop-gradient'ed and L2-normalised here.
    queue: (K, D) L2-normalised negative keys (no gradient flows into it).
    temperature: τ.

  Returns:
    (B, 1 + K) float32 logits; the positive is column 0.
  """
  q = l2_normalize(q)
  k = l2_normalize(jax.lax.stop_gradient(k))
  pos = jnp.sum(q * k, axis=-1, keepdims=True)
  neg = jnp.matmul(q, jax.lax.stop_gradient(queue).astype(jnp.float32).T, precision=jax.lax.Precision.HIGHEST)
  return jnp.concatenate([pos, neg], axis=1) / temperature


def moco_infonce(q: jax.Array, k: jax.Array, queue: jax.Array, *, temperature: float) -> jax.Array:
  """InfoNCE over `moco_logits`: mean over the batch of -log softmax of the positive (column 0).

  Args:
    q: (B, D) queries.
    k: (B, D) positive keys (no gradient).
    queue: (K, D) L2-normalised negative keys.
    temperature: τ.

  Returns:
    Scalar float32 loss.
  """
  logits = moco_logits(q, k, queue, temperature=temperature)
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])
