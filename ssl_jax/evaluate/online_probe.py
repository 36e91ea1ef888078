"""The online linear probe: a classifier on stop-gradient encoder features, trained inside the train step.

It costs the encoder nothing (its input is `stop_gradient`ed, and its parameters and optimizer are its own) and
gives a label-based signal at every log step: `probe_top1` is its accuracy on the training stream, measured on
each batch before the probe's update. Examples labelled -1 (unlabelled) are ignored.
"""
import jax
import jax.numpy as jnp
import optax


def optimizer(cfg, *, total_steps: int) -> optax.GradientTransformation:
  """The probe's optimizer: SGD with momentum and weight decay (`config.probe`) on a cosine schedule."""
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                     optax.sgd(optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1)), momentum=cfg.momentum))


def init(feature_dim: int, num_classes: int, tx: optax.GradientTransformation) -> dict:
  """The probe's initial state: {'params': {'w': (D, C) zeros, 'b': (C,) zeros}, 'opt_state': tx's}."""
  params = {'w': jnp.zeros((feature_dim, num_classes), jnp.float32),
            'b': jnp.zeros((num_classes,), jnp.float32)}
  return {'params': params, 'opt_state': tx.init(params)}


def update(state, tx, features, labels):
  """One probe step on a batch of features (B, D) and labels (B,); returns (new state, metrics)."""
  features = jax.lax.stop_gradient(features.astype(jnp.float32))
  valid = labels >= 0
  count = jnp.maximum(valid.sum(), 1)

  def loss_fn(params):
    logits = features @ params['w'] + params['b']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    return jnp.where(valid, ce, 0.0).sum() / count, logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  correct = jnp.where(valid, jnp.argmax(logits, axis=-1) == labels, False)
  metrics = {'probe_loss': loss, 'probe_top1': correct.sum() / count}
  return {'params': optax.apply_updates(state['params'], updates), 'opt_state': opt_state}, metrics
