"""Offline linear probe: multinomial logistic regression trained with optax on fixed features.

Features are optionally standardised with the train mean and std; the classifier is trained with minibatch
AdamW, SGD or LARS and a cosine learning-rate decay, one jitted function per epoch. The trainer's final probe
and the offline linear-evaluation CLI (`ssl_jax.evaluate.linear_cli`) both train with this; fine-tuning lives
elsewhere.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax.errors import UserError

OPTIMIZERS = ('adamw', 'sgd', 'lars')


def _standardizer(feats: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
  d = feats.shape[1]
  if not standardize:
    return np.zeros(d, np.float32), np.ones(d, np.float32)
  mean, std = feats.mean(axis=0), feats.std(axis=0)
  # Constant features would divide by ~0; like sklearn's StandardScaler, leave them unscaled.
  std = np.where(std < 10 * np.finfo(np.float32).eps * np.maximum(np.abs(mean), 1.0), 1.0, std)
  return mean.astype(np.float32), std.astype(np.float32)


def make_optimizer(name: str, lr, weight_decay, momentum, total_steps) -> optax.GradientTransformation:
  """The classifier's optimizer on a cosine decay to 0; hyperparameters may be traced (no recompile)."""
  schedule = lambda count: lr * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(count / total_steps, 1.0)))
  decay = {'w': True, 'b': False}  # the bias is not regularised
  if name == 'adamw':
    return optax.adamw(schedule, weight_decay=weight_decay, mask=decay)
  if name == 'lars':
    return optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=decay, trust_ratio_mask=decay,
                      momentum=momentum)
  return optax.chain(optax.add_decayed_weights(weight_decay, mask=decay),
                     optax.sgd(schedule, momentum=momentum))


def linear_predict(params: dict, feats) -> jax.Array:
  """Logits of the probe.

  Args:
    params: from `train_linear_probe`: 'w' (D, C), 'b' (C,), 'mean' (D,), 'std' (D,).
    feats: (M, D) features.

  Returns:
    (M, C) float32 logits.
  """
  x = (jnp.asarray(feats, jnp.float32) - params['mean']) / params['std']
  return _logits(params, x)


def _logits(weights, x):
  return jnp.matmul(x, weights['w'], precision=jax.lax.Precision.HIGHEST) + weights['b']


@functools.partial(jax.jit, static_argnames=('optimizer', 'batch_size'), donate_argnums=(0, 1))
def _train_epoch(weights, opt_state, feats, labels, key, hparams, *, optimizer, batch_size):
  """One pass over a fresh permutation of standardised features; the incomplete last batch is left out."""
  tx = make_optimizer(optimizer, **hparams)
  steps = feats.shape[0] // batch_size
  order = jax.random.permutation(key, feats.shape[0])[:steps * batch_size].reshape(steps, batch_size)

  def step(carry, idx):
    weights, opt_state = carry
    ce = optax.softmax_cross_entropy_with_integer_labels
    loss = lambda w: ce(_logits(w, feats[idx]), labels[idx]).mean()
    updates, opt_state = tx.update(jax.grad(loss)(weights), opt_state, weights)
    return (optax.apply_updates(weights, updates), opt_state), None

  (weights, opt_state), _ = jax.lax.scan(step, (weights, opt_state), order)
  return weights, opt_state


def train_linear_probe(train_feats, train_labels, *, num_classes: int, epochs: int = 100,
                       batch_size: int = 256, lr: float = 1e-2, weight_decay: float = 1e-4,
                       optimizer: str = 'adamw', momentum: float = 0.9, seed: int = 0, standardize: bool = True,
                       after_epoch=None) -> dict:
  """Fits a linear classifier on features.

  Args:
    train_feats: (N, D) features, or a function epoch -> (N, D) features recomputed every epoch (augmented
      protocols); standardisation uses the first epoch's statistics, so every epoch is scaled alike.
    train_labels: (N,) integer labels in [0, num_classes).
    num_classes: number of classes C.
    epochs: passes over the data.
    batch_size: minibatch size; clamped to N (full batch) for small sets.
    lr: peak learning rate, decayed to 0 with a cosine over all steps. The default suits AdamW on standardised
      features; SGD wants about 0.1-0.3.
    weight_decay: decoupled (AdamW), L2-gradient (SGD) or LARS decay on the weight matrix.
    optimizer: 'adamw', 'sgd' or 'lars' (both with `momentum`).
    momentum: momentum of SGD and LARS.
    seed: shuffling seed.
    standardize: standardise features with the train mean and std before the classifier.
    after_epoch: optional callback(params) after every epoch (e.g. to score the test split).

  Returns:
    params: 'w' (D, C), 'b' (C,) and the standardisation 'mean' (D,), 'std' (D,), for `linear_predict`.
  """
  features_at = train_feats if callable(train_feats) else lambda epoch: train_feats
  feats, labels = np.asarray(features_at(0), np.float32), np.asarray(train_labels, np.int32)
  if optimizer not in OPTIMIZERS:
    raise UserError(f'unknown linear-probe optimizer {optimizer!r}; use one of {", ".join(OPTIMIZERS)}')
  if feats.ndim != 2 or feats.shape[0] == 0 or labels.shape != feats.shape[:1] or epochs < 1:
    raise UserError(f'linear probe needs (N, D) features with N > 0, (N,) labels and epochs >= 1 (got '
                    f'{feats.shape}, {labels.shape}, epochs={epochs}); check the train split')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise UserError(f'linear-probe labels must lie in [0, {num_classes}), got {labels.min()}..'
                    f'{labels.max()}; drop unlabelled examples or fix num_classes')
  mean, std = _standardizer(feats, standardize)
  scale = lambda f: jnp.asarray((np.asarray(f, np.float32) - mean) / std)
  batch_size = min(batch_size, feats.shape[0])
  hparams = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                 total_steps=epochs * (feats.shape[0] // batch_size))
  # Zero init: the loss is convex, so the start only matters for speed, and zeros make runs repeatable.
  weights = {'w': jnp.zeros((feats.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  opt_state = make_optimizer(optimizer, **hparams).init(weights)
  hparams = jax.tree.map(jnp.float32, hparams)  # traced, not static: new values do not recompile
  stats = {'mean': jnp.asarray(mean), 'std': jnp.asarray(std)}
  labels = jnp.asarray(labels)
  for epoch, key in enumerate(jax.random.split(jax.random.key(seed), epochs)):
    x = scale(feats if epoch == 0 else features_at(epoch))
    weights, opt_state = _train_epoch(weights, opt_state, x, labels, key, hparams,
                                      optimizer=optimizer, batch_size=batch_size)
    if after_epoch is not None:
      after_epoch({**weights, **stats})
  return {**weights, **stats}


def topk_accuracy(logits, labels) -> dict:
  """{'top1', 'top5'} of (M, C) logits against (M,) labels; top-5 is 1.0 when C <= 5."""
  ranked = np.argsort(-np.asarray(logits), axis=1)[:, :5]
  hits = ranked == np.asarray(labels)[:, None]
  return {'top1': float(hits[:, 0].mean()), 'top5': float(hits.any(axis=1).mean())}


def linear_probe_accuracy(train_feats, train_labels, test_feats, test_labels, *, num_classes: int,
                          **kwargs) -> dict:
  """Trains a probe on the train features and scores it on the test features.

  Args:
    train_feats: (N, D) train features.
    train_labels: (N,) train labels.
    test_feats: (M, D) test features.
    test_labels: (M,) test labels.
    num_classes: number of classes C.
    **kwargs: passed to `train_linear_probe` (epochs, lr, weight_decay, ...).

  Returns:
    {'top1': float, 'top5': float}; 'top5' only when C >= 5.
  """
  params = train_linear_probe(train_feats, train_labels, num_classes=num_classes, **kwargs)
  logits = np.asarray(linear_predict(params, test_feats))
  test_labels = np.asarray(test_labels)
  if logits.shape[0] == 0:
    raise UserError('linear probe has no test example to score; check the eval split')
  results = topk_accuracy(logits, test_labels)
  return results if num_classes >= 5 else {'top1': results['top1']}
