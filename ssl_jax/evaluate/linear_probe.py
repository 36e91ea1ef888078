"""Offline linear probe: multinomial logistic regression trained with optax on fixed features.

The features are computed once (no augmentation) and optionally standardised with the train mean and std; the
classifier is trained with minibatch AdamW (or SGD with momentum) and a cosine learning-rate decay, one jitted
function per epoch. This is the cheap probe used to score an encoder; fine-tuning lives elsewhere.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax.errors import UserError

_OPTIMIZERS = ('adamw', 'sgd')


def _standardizer(feats: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
  d = feats.shape[1]
  if not standardize:
    return np.zeros(d, np.float32), np.ones(d, np.float32)
  mean, std = feats.mean(axis=0), feats.std(axis=0)
  # Constant features would divide by ~0; like sklearn's StandardScaler, leave them unscaled.
  std = np.where(std < 10 * np.finfo(np.float32).eps * np.maximum(np.abs(mean), 1.0), 1.0, std)
  return mean.astype(np.float32), std.astype(np.float32)


def _make_optimizer(name: str, lr, weight_decay, total_steps) -> optax.GradientTransformation:
  """The probe's optimizer; hyperparameters may be traced, so one compiled epoch serves every setting."""
  schedule = lambda count: lr * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(count / total_steps, 1.0)))
  decay_mask = {'w': True, 'b': False}  # the bias is not regularised
  if name == 'adamw':
    return optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask)
  return optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask),
                     optax.sgd(schedule, momentum=0.9))


def linear_predict(params: dict, feats) -> jax.Array:
  """Logits of the probe.

  Args:
    params: from `train_linear_probe`: 'w' (D, C), 'b' (C,), 'mean' (D,), 'std' (D,).
    feats: (M, D) features.

  Returns:
    (M, C) float32 logits.
  """
  x = (jnp.asarray(feats, jnp.float32) - params['mean']) / params['std']
  return jnp.matmul(x, params['w'], precision=jax.lax.Precision.HIGHEST) + params['b']


def _loss(weights, stats, x, y):
  logits = linear_predict({**weights, **stats}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.partial(jax.jit, static_argnames=('optimizer', 'batch_size'), donate_argnums=(0, 1))
def _train_epoch(weights, opt_state, stats, feats, labels, key, hparams, *, optimizer, batch_size):
  """One pass over a fresh permutation; the incomplete last batch is left to the next epoch's shuffle."""
  tx = _make_optimizer(optimizer, **hparams)
  steps = feats.shape[0] // batch_size
  order = jax.random.permutation(key, feats.shape[0])[:steps * batch_size].reshape(steps, batch_size)

  def step(carry, idx):
    weights, opt_state = carry
    grads = jax.grad(_loss)(weights, stats, feats[idx], labels[idx])
    updates, opt_state = tx.update(grads, opt_state, weights)
    return (optax.apply_updates(weights, updates), opt_state), None

  (weights, opt_state), _ = jax.lax.scan(step, (weights, opt_state), order)
  return weights, opt_state


def train_linear_probe(train_feats, train_labels, *, num_classes: int, epochs: int = 100,
                       batch_size: int = 256, lr: float = 1e-2, weight_decay: float = 1e-4,
                       optimizer: str = 'adamw', seed: int = 0, standardize: bool = True) -> dict:
  """Fits a linear classifier on fixed features.

  Args:
    train_feats: (N, D) features.
    train_labels: (N,) integer labels in [0, num_classes).
    num_classes: number of classes C.
    epochs: passes over the data.
    batch_size: minibatch size; clamped to N (full batch) for small sets.
    lr: peak learning rate, decayed to 0 with a cosine over all steps. The default suits AdamW on standardised
      features; SGD wants about 0.1-0.3.
    weight_decay: decoupled (AdamW) or L2-gradient (SGD) decay on the weight matrix.
    optimizer: 'adamw' or 'sgd' (momentum 0.9).
    seed: shuffling seed.
    standardize: standardise features with the train mean and std before the classifier.

  Returns:
    params: 'w' (D, C), 'b' (C,) and the standardisation 'mean' (D,), 'std' (D,), for `linear_predict`.
  """
  feats, labels = np.asarray(train_feats, np.float32), np.asarray(train_labels, np.int32)
  if optimizer not in _OPTIMIZERS:
    raise UserError(f'unknown linear-probe optimizer {optimizer!r}; use one of {", ".join(_OPTIMIZERS)}')
  if feats.ndim != 2 or feats.shape[0] == 0 or labels.shape != feats.shape[:1] or epochs < 1:
    raise UserError(f'linear probe needs (N, D) features with N > 0, (N,) labels and epochs >= 1 (got '
                    f'{feats.shape}, {labels.shape}, epochs={epochs}); check the train split')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise UserError(f'linear-probe labels must lie in [0, {num_classes}), got {labels.min()}..'
                    f'{labels.max()}; drop unlabelled examples or fix num_classes')
  mean, std = _standardizer(feats, standardize)
  batch_size = min(batch_size, feats.shape[0])
  hparams = dict(lr=lr, weight_decay=weight_decay, total_steps=epochs * (feats.shape[0] // batch_size))
  stats = {'mean': jnp.asarray(mean), 'std': jnp.asarray(std)}
  # Zero init: the loss is convex, so the start only matters for speed, and zeros make runs repeatable.
  weights = {'w': jnp.zeros((feats.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  opt_state = _make_optimizer(optimizer, **hparams).init(weights)
  hparams = jax.tree.map(jnp.float32, hparams)  # traced, not static: new values do not recompile
  feats, labels = jnp.asarray(feats), jnp.asarray(labels)
  for key in jax.random.split(jax.random.key(seed), epochs):
    weights, opt_state = _train_epoch(weights, opt_state, stats, feats, labels, key, hparams,
                                      optimizer=optimizer, batch_size=batch_size)
  return {**weights, **stats}


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
  results = {'top1': float(np.mean(logits.argmax(axis=1) == test_labels))}
  if num_classes >= 5:
    top5 = np.argsort(-logits, axis=1)[:, :5]
    results['top5'] = float(np.mean((top5 == test_labels[:, None]).any(axis=1)))
  return results
