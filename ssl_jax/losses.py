"""Pure loss functions over whole (global) batches.

Every function here takes global-batch arrays and is plain array code: under `jax.jit` with the batch sharded
on the mesh's `data` axis, XLA inserts the collectives, so there is no gather or rank arithmetic anywhere.
Logits and log-sum-exp are computed in float32 whatever the input dtype.

The SupCon-family losses (`contrastive_loss`, `selfcon_loss`, `nt_xent_log_of_mean`) take `chunk_size`: 0
builds the whole (anchors x vectors) logit matrix at once; C > 0 runs the anchors C at a time in a
`jax.lax.map` whose body is rematerialised (`jax.checkpoint`), so neither the forward nor the backward pass
ever holds more than C rows of logits: O(N·C) memory instead of O(N²) for N vectors, the same value and
gradients (up to float32 summation order), and the forward matmuls done twice.
"""
import jax
import jax.numpy as jnp

# Excludes an anchor from its own softmax. Finite, so that no inf ever meets a zero in the backward pass.
_SELF_LOGIT = -1e9

# SupCon's two ways to combine an anchor's positives (Khosla et al., 2020, eq. 2 and 3): 'out' averages the
# log-probabilities of the positives (L_out: SupContrast, SelfCon); 'in' takes the log of their summed
# probability (L_in: solo-learn's supervised loss, `simclr_loss_func` with labels as indexes).
SUPCON_FORMS = ('out', 'in')
# What the mean over anchors does with an anchor that has no positive: 'exclude' leaves it out (SelfCon's
# `supcon_s` filter); 'zero' counts it with a loss of 0 (SupContrast at HEAD, commit 72fd989).
NO_POSITIVE_RULES = ('exclude', 'zero')


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """Scales `x` to unit L2 norm along `axis` (in float32); zero vectors stay zero."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def _anchor_log_probs(anchors: jax.Array, anchor_rows: jax.Array, anchor_ids: jax.Array, keys: jax.Array,
                      key_ids: jax.Array, *, temperature: float, chunk_size: int = 0, form: str = 'out'):
  """For each anchor: its positives' log softmax over every other vector, combined by `form`; if it has any.

  Anchor a is the vector `keys[anchor_rows[a]]`, left out of its own softmax; its positives are the other
  vectors whose id equals `anchor_ids[a]`.

  Args:
    anchors: (A, D) float32 anchor vectors (L2-normalised by the caller).
    anchor_rows: (A,) int32 row of each anchor among `keys`.
    anchor_ids: (A,) ids of the anchors (example index or label).
    keys: (N, D) float32 vectors of the softmax (L2-normalised).
    key_ids: (N,) their ids.
    temperature: softmax temperature τ.
    chunk_size: anchors per chunk, each chunk's logits rebuilt in the backward pass; 0 (or >= A): all at once.
    form: 'out': the mean over the positives of their log-probabilities; 'in': the log of the sum of their
      probabilities (SUPCON_FORMS).

  Returns:
    (log_prob_pos (A,) float32, 0 where the anchor has no positive; has_pos (A,) bool).
  """
  if chunk_size < 0:
    raise ValueError(f'chunk_size={chunk_size} must be >= 0 (0 = no chunking)')
  if form not in SUPCON_FORMS:
    raise ValueError(f'form={form!r} must be one of {SUPCON_FORMS}')
  num_keys = keys.shape[0]

  def rows(chunk):
    a, a_rows, a_ids = chunk
    logits = jnp.matmul(a, keys.T, precision=jax.lax.Precision.HIGHEST) / temperature
    is_self = a_rows[:, None] == jnp.arange(num_keys)[None, :]
    logits = jnp.where(is_self, _SELF_LOGIT, logits)
    log_prob = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
    positive = (a_ids[:, None] == key_ids[None, :]) & ~is_self
    num_pos = positive.sum(axis=1)
    if form == 'in':
      # Non-positives masked with a finite logit, so an anchor without positives stays finite (then 0).
      log_sum = jax.nn.logsumexp(jnp.where(positive, log_prob, _SELF_LOGIT), axis=1)
      return jnp.where(num_pos > 0, log_sum, 0.0), num_pos > 0
    return jnp.where(positive, log_prob, 0.0).sum(axis=1) / jnp.maximum(num_pos, 1), num_pos > 0

  total = anchors.shape[0]
  if not chunk_size or chunk_size >= total:
    return rows((anchors, anchor_rows, anchor_ids))
  # Padding anchors (zero vectors at row -1, no key) give finite values that are cut off below.
  pad = -total % chunk_size
  chunks = (jnp.pad(anchors, ((0, pad), (0, 0))), jnp.pad(anchor_rows, (0, pad), constant_values=-1),
            jnp.pad(anchor_ids, (0, pad)))
  chunks = jax.tree.map(lambda x: x.reshape(-1, chunk_size, *x.shape[1:]), chunks)
  # Without the checkpoint the backward pass of the map would keep every chunk's logits: O(N²) again.
  log_prob_pos, has_pos = jax.lax.map(jax.checkpoint(rows, prevent_cse=False), chunks)
  return log_prob_pos.reshape(-1)[:total], has_pos.reshape(-1)[:total]


def _mean_over_anchors(log_prob_pos: jax.Array, has_pos: jax.Array, no_positive: str = 'exclude'):
  """-mean of `log_prob_pos` over the anchors with a positive ('exclude'; 0 if none) or over all ('zero')."""
  if no_positive not in NO_POSITIVE_RULES:
    raise ValueError(f'no_positive={no_positive!r} must be one of {NO_POSITIVE_RULES}')
  kept = has_pos.sum() if no_positive == 'exclude' else has_pos.size
  return -jnp.where(has_pos, log_prob_pos, 0.0).sum() / jnp.maximum(kept, 1)


def contrastive_loss(features: jax.Array, labels: jax.Array | None = None, *, temperature: float,
                     form: str = 'out', no_positive: str = 'exclude', chunk_size: int = 0) -> jax.Array:
  """NT-Xent (SimCLR) without labels, SupCon (L_out or L_in) with labels, over every view of every example.

  All B·V vectors are anchors. For an anchor, the softmax runs over every *other* vector of the batch; its
  positives are the other views of the same example (no labels), or every other vector whose example has the
  same label (labels). With `form='out'` the anchor's loss is the mean over its positives of -log softmax
  (SupCon's L_out, Khosla et al., 2020, eq. 2: SupContrast's and SelfCon's code); with `form='in'` it is
  -log of the summed softmax probability of its positives (L_in, eq. 3: solo-learn's `supcon`). With one
  positive per anchor (two views, no labels) both are SimCLR's NT-Xent (Chen et al., 2020).

  An anchor without positives (one view and a label seen once in the batch) never gives NaN. With
  `no_positive='exclude'` (default) it is left out: the result is the mean over the anchors that have a
  positive, 0 if none has (SelfCon's code, whose `supcon_s` filter drops such anchors before its loss). With
  `no_positive='zero'` it counts with a loss of 0 and the mean is over all B·V anchors (SupContrast at HEAD,
  commit 72fd989, which clamps the positive count to 1; its earlier code divided by 0 and gave NaN). The two
  differ by the factor (anchors with a positive) / (all anchors); with two or more views they are equal.

  Args:
    features: (B, V, D) projections; L2-normalised here, so raw projector outputs are fine.
    labels: optional (B,) integer class labels.
    temperature: softmax temperature τ.
    form: 'out' (L_out) or 'in' (L_in), SUPCON_FORMS.
    no_positive: 'exclude' or 'zero', NO_POSITIVE_RULES: what the mean does with anchors without positives.
    chunk_size: 0: the (B·V)² logits at once; C > 0: C anchors at a time, O(B·V·C) memory (module docstring).

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
  ids = jnp.tile(jnp.arange(b) if labels is None else labels, v)
  per_anchor = _anchor_log_probs(z, jnp.arange(v * b), ids, z, ids, temperature=temperature,
                                 chunk_size=chunk_size, form=form)
  return _mean_over_anchors(*per_anchor, no_positive)


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


def moco_symmetric_infonce(q: jax.Array, k: jax.Array, queue_view1: jax.Array, queue_view2: jax.Array, *,
                           temperature: float) -> jax.Array:
  """MoCo v2+'s symmetric loss (solo-learn, `methods/mocov2plus.py`): the mean of both directions.

  (InfoNCE(q1, k2, past view-2 keys) + InfoNCE(q2, k1, past view-1 keys)) / 2: each view's queries are
  contrasted with the other view's key of the same image and with the queue of that other view's past keys.

  Args:
    q: (B, 2, D) queries of views 1 and 2 (online encoder).
    k: (B, 2, D) keys of views 1 and 2 (key encoder; no gradient).
    queue_view1: (K, D) L2-normalised past keys of view 1, the negatives of the view-2 queries.
    queue_view2: (K, D) L2-normalised past keys of view 2, the negatives of the view-1 queries.
    temperature: τ.

  Returns:
    Scalar float32 loss.
  """
  return 0.5 * (moco_infonce(q[:, 0], k[:, 1], queue_view2, temperature=temperature)
                + moco_infonce(q[:, 1], k[:, 0], queue_view1, temperature=temperature))


def selfcon_loss(features: jax.Array, labels: jax.Array | None = None, *, temperature: float,
                 anchor_views: tuple[int, ...] | None = None, base_temperature: float | None = None,
                 chunk_size: int = 0) -> jax.Array:
  """SupCon-style loss over the exits and views of every image, with a choice of anchors (SelfCon).

  Each example has V vectors (SelfCon: one per exit of the multi-exit network, times the views). Anchors are
  the vectors of the views listed in `anchor_views` (all by default); for an anchor the softmax runs over all
  other B·V - 1 vectors, and its positives are the other vectors of the same example (no labels) or of every
  example with the same label (labels). The anchor's loss is the mean over its positives of -log softmax; the
  result is the mean over the anchors that have a positive (a SupCon-S anchor whose label appears once in a
  single-view batch is left out instead of giving NaN; 0 if none has one). With every view an anchor this is
  `contrastive_loss`; SelfCon's alpha variants make only the sub-network exits anchors (Bae et al., AAAI 2023,
  official code `ConLoss(selfcon_s_FG=True)`), while every vector stays in the denominator.

  Args:
    features: (B, V, D) projections; L2-normalised here.
    labels: optional (B,) integer class labels.
    temperature: softmax temperature τ.
    anchor_views: static indices into V of the anchor vectors; None makes all V anchors.
    base_temperature: when given, the loss is multiplied by τ / base_temperature, the scaling that SupCon's
      and SelfCon's official code apply (base 0.07).
    chunk_size: 0: all anchors' logits at once; C > 0: C anchors at a time (module docstring).

  Returns:
    Scalar float32 loss.

  Example:
    >>> z = jax.random.normal(jax.random.key(0), (4, 2, 8))  # 4 images, (sub-network, backbone) exits
    >>> selfcon_loss(z, jnp.array([0, 1, 0, 2]), temperature=0.1, anchor_views=(0,)).shape
    ()
  """
  b, v, d = features.shape
  anchor_views = tuple(range(v)) if anchor_views is None else tuple(int(i) for i in anchor_views)
  repeated = len(set(anchor_views)) < len(anchor_views)
  if not anchor_views or repeated or not all(0 <= i < v for i in anchor_views):
    raise ValueError(f'anchor_views={anchor_views} must be distinct indices into the {v} views')
  # View-major rows: row i·B + n is view i of example n, so each anchor view is one contiguous slice.
  z = l2_normalize(jnp.swapaxes(features, 0, 1).reshape(v * b, d))
  ids = jnp.tile(jnp.arange(b) if labels is None else labels, v)
  anchors = jnp.concatenate([z[i * b:(i + 1) * b] for i in anchor_views])
  rows = jnp.concatenate([jnp.arange(b) + i * b for i in anchor_views])
  per_anchor = _anchor_log_probs(anchors, rows, ids[rows], z, ids, temperature=temperature,
                                 chunk_size=chunk_size)
  loss = _mean_over_anchors(*per_anchor)
  return loss * (temperature / base_temperature) if base_temperature else loss


def nt_xent_log_of_mean(features: jax.Array, *, temperature: float, chunk_size: int = 0) -> jax.Array:
  """NT-Xent with the mean over anchors taken inside the log: -log((1/N) Σ_j p_j), N = 2B.

  The loss of the official RepMix code (Sharma et al., BDA 2024, `Loss/loss.py`), which it also uses for its
  SimCLR baseline. p_j is the softmax probability anchor j gives its positive, exactly as in NT-Xent: cosine
  similarities over τ, the softmax over every other row (self excluded, the positive included). Standard
  NT-Xent (`contrastive_loss` with V = 2) is -(1/N) Σ_j log p_j instead; by Jensen this form is never larger,
  and its gradient weights anchor j by p_j / Σ_k p_k, so anchors that already find their positive count more.
  The official code removes self-similarity by subtracting exp(1/τ) from each column sum, assuming
  cos(z_j, z_j) = 1 exactly; masking the diagonal here is that computation without the rounding.

  Args:
    features: (B, 2, D) projections; row (i, 0) and row (i, 1) are each other's positive, every other row
      is a negative. L2-normalised here.
    temperature: softmax temperature τ (0.5 in the RepMix code).
    chunk_size: 0: the (2B)² logits at once; C > 0: C anchors at a time (module docstring).

  Returns:
    Scalar float32 loss.

  Example:
    >>> z = jax.random.normal(jax.random.key(0), (4, 2, 8))
    >>> bool(nt_xent_log_of_mean(z, temperature=0.5) <= contrastive_loss(z, temperature=0.5))
    True
  """
  b, v, d = features.shape
  if v != 2:
    raise ValueError(f'nt_xent_log_of_mean takes exactly two rows per example, got features of shape '
                     f'{features.shape}')
  # Example-major rows (2i + k is row k of example i, its one positive the other row of example i): the rows
  # of an example stay on the device that holds it.
  z = l2_normalize(features.reshape(2 * b, d))
  ids = jnp.repeat(jnp.arange(b), 2)
  log_p, _ = _anchor_log_probs(z, jnp.arange(2 * b), ids, z, ids, temperature=temperature,
                               chunk_size=chunk_size)
  return -(jax.nn.logsumexp(log_p) - jnp.log(2.0 * b))


def rotation_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of rotation logits against the drawn angle labels.

  The auxiliary loss of Addepalli et al., "Towards Efficient and Effective Self-Supervised Learning of Visual
  Representations" (ECCV 2022): a head predicts which of the angle set's rotations was applied to an image
  (RotNet's task, Gidaris et al., 2018). One call per rotated view; the caller sums the views' terms.

  Args:
    logits: (B, A) logits over the A angles of the set.
    labels: (B,) integer angle labels in [0, A).

  Returns:
    Scalar float32, the mean over the batch of -log softmax(logits)[label]; log(A) at chance.

  Example:
    >>> rotation_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))  # log(4)
    Array(1.3862944, dtype=float32)
  """
  logits = logits.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def sinkhorn_knopp(scores: jax.Array, *, epsilon: float, num_iters: int) -> jax.Array:
  """SwAV's codes: the soft assignment of N vectors to K prototypes that splits them equally (Caron et al.).

  Q = exp(scores / ε) (K x N after the transpose of the paper), scaled to sum 1, then `num_iters` rounds of
  "every prototype's row sums to 1/K" and "every vector's column sums to 1/N"; finally each vector's codes
  are rescaled to sum to 1 (so the rows of the result are distributions; after the last round every column
  sums to exactly 1/N, so this is Q·N). The sums run over all N rows of the argument: given the global batch,
  they are the official code's all-reduced sums, so the codes do not depend on the device count, and the order
  of the rows does not matter. No gradient flows through the codes (they are targets).

  Args:
    scores: (N, K) scores of N vectors against K prototypes (cosines in SwAV).
    epsilon: ε, the entropic regularisation (SwAV: 0.05; smaller is a harder assignment).
    num_iters: Sinkhorn rounds (SwAV: 3).

  Returns:
    (N, K) float32 codes; every row sums to 1 and, before that rescaling, every prototype gets mass 1/K.
  """
  logits = jax.lax.stop_gradient(scores).astype(jnp.float32) / epsilon
  # The global maximum cancels in the first normalisation; subtracting it keeps exp from overflowing.
  q = jnp.exp(logits - jnp.max(logits)).T
  q = q / jnp.sum(q)
  k, n = q.shape
  for _ in range(num_iters):
    q = q / (jnp.sum(q, axis=1, keepdims=True) * k)
    q = q / (jnp.sum(q, axis=0, keepdims=True) * n)
  return (q * n).T


def swapped_prediction_loss(scores: jax.Array, codes: jax.Array, assign_views: tuple[int, ...], *,
                            temperature: float) -> jax.Array:
  """SwAV's loss: every view predicts the codes of each assignment view from its own prototype scores.

  loss = mean over assignment views a of [ mean over views v != a of
         mean over examples of -Σ_k codes_a[k] · log softmax(scores_v / τ)[k] ]

  Args:
    scores: (B, V, K) prototype scores of every view (all resolutions, globals first).
    codes: (A, B, K) the codes (`sinkhorn_knopp`) of the A assignment views, treated as constants.
    assign_views: the A view indices the codes belong to (SwAV's `crops_for_assign`, (0, 1)).
    temperature: τ of the softmax (SwAV: 0.1).

  Returns:
    Scalar float32 loss.
  """
  log_p = jax.nn.log_softmax(scores.astype(jnp.float32) / temperature, axis=-1)   # (B, V, K)
  codes = jax.lax.stop_gradient(codes).astype(jnp.float32)
  num_views = scores.shape[1]
  total = 0.0
  for a, view in enumerate(assign_views):
    ce = -jnp.mean(jnp.sum(codes[a][:, None] * log_p, axis=-1), axis=0)   # (V,): each view's mean CE
    total += (jnp.sum(ce) - ce[view]) / (num_views - 1)
  return total / len(assign_views)
