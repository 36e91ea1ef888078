"""Optimizers: the learning-rate rules and which parameters get weight decay / LARS adaptation."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax import config_schema, optim
from ssl_jax.errors import UserError

import runs


def _cfg(**kw):
  base = dict(name='sgd', base_lr=0.3, lr_scaling='linear', base_batch_size=256, warmup_epochs=2.0,
              end_lr_factor=0.0, momentum=0.9, nesterov=False, weight_decay=0.1, exclude_bias_and_norm=True,
              trust_coefficient=1e-3, b1=0.9, b2=0.999, schedule='warmup_cosine', cosine_t_max_steps=0)
  return ml_collections.ConfigDict({**base, **kw})


@pytest.mark.parametrize('rule,expected', [('linear', 0.3 * 2), ('sqrt', 0.3 * math.sqrt(2)), ('none', 0.3)])
def test_scaling_rules(rule, expected):
  assert optim.peak_learning_rate(_cfg(lr_scaling=rule), 512) == pytest.approx(expected)


@pytest.mark.parametrize('field, value, match', [
    ('lr_scaling', 'cubic', "optimizer.lr_scaling 'cubic' is unknown; use one of: linear, sqrt, none"),
    ('name', 'adagrad', 'sgd, lars, adamw'),
    ('schedule', 'step', 'warmup_cosine, periodic_cosine')])
def test_unknown_names_are_user_errors(field, value, match):
  c = runs.tiny_synthetic()
  c.optimizer[field] = value
  with pytest.raises(UserError, match=match):
    config_schema.validate(c)
  with pytest.raises(ValueError, match=value):   # from Python: no silent fallback to another rule
    optim.create_optimizer(_cfg(**{field: value}), batch_size=256, total_steps=10, steps_per_epoch=5)


def test_warmup_then_cosine():
  sched = optim.create_schedule(_cfg(), batch_size=256, total_steps=100, steps_per_epoch=5)  # warmup 10 steps
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(0.15)
  assert float(sched(10)) == pytest.approx(0.3)
  assert float(sched(55)) == pytest.approx(0.15, rel=1e-3)  # half-way through the cosine
  assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)


def _one_update(cfg):
  params = {'kernel': jnp.ones((3, 3)), 'bias': jnp.ones((3,))}
  grads = jax.tree.map(jnp.zeros_like, params)
  tx, _ = optim.create_optimizer(cfg, batch_size=256, total_steps=10, steps_per_epoch=1)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


@pytest.mark.parametrize('name', ['sgd', 'lars', 'adamw'])
def test_weight_decay_skips_bias_and_norm(name):
  # With zero gradients, only weight decay moves parameters: kernels must move, 1-D parameters must not.
  updates = _one_update(_cfg(name=name, warmup_epochs=0.0))
  assert np.abs(updates['kernel']).max() > 0
  np.testing.assert_array_equal(updates['bias'], 0.0)


def test_weight_decay_on_everything_when_asked():
  updates = _one_update(_cfg(name='sgd', warmup_epochs=0.0, exclude_bias_and_norm=False))
  assert np.abs(updates['bias']).max() > 0


def test_lars_trust_ratio_only_on_kernels():
  # LARS scales a kernel's step by trust_coefficient·|w|/|g|; an excluded bias takes a plain momentum-SGD step.
  cfg = _cfg(name='lars', warmup_epochs=0.0, weight_decay=0.0, lr_scaling='none', base_lr=1.0)
  params = {'kernel': jnp.full((2, 2), 3.0), 'bias': jnp.full((2,), 3.0)}
  grads = {'kernel': jnp.full((2, 2), 0.5), 'bias': jnp.full((2,), 0.5)}
  tx, _ = optim.create_optimizer(cfg, batch_size=256, total_steps=1000, steps_per_epoch=1)
  updates, _ = tx.update(grads, tx.init(params), params)
  trust = 1e-3 * 6.0 / 1.0  # |w| = 6, |g| = 1
  np.testing.assert_allclose(updates['kernel'], -trust * 0.5, rtol=1e-5)
  np.testing.assert_allclose(updates['bias'], -0.5, rtol=1e-5)
