"""BYOL, SimSiam and MoCo v2: losses vs numpy, the EMA target, MoCo's queue, devices, resume, configs."""
import dataclasses
import json

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import byol_cifar10, moco_cifar10, simsiam_cifar10
from ssl_jax import losses, methods, train
from ssl_jax.errors import UserError
from ssl_jax.methods import _momentum, byol, moco

import runs

_CONFIGS = {'byol': byol_cifar10, 'simsiam': simsiam_cifar10, 'moco': moco_cifar10}


def _synthetic(method, steps=3):
  c = runs.tiny_synthetic(_CONFIGS[method].get_config, steps=steps)
  c.checkpoint_every_steps = steps
  return c


_checkpoints, _losses = runs.checkpoints, runs.logged


def _normalized(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------- losses
def test_byol_and_simsiam_losses_match_numpy():
  rng = np.random.default_rng(0)
  p, z = rng.normal(size=(2, 6, 5)).astype(np.float32)
  cos = np.sum(_normalized(p.astype(np.float64)) * _normalized(z.astype(np.float64)), axis=1)
  np.testing.assert_allclose(losses.regression_loss(p, z), np.mean(2 - 2 * cos), rtol=1e-5)
  np.testing.assert_allclose(losses.negative_cosine(p, z), -np.mean(cos), rtol=1e-5)
  # Identical directions give the minimum; the target side gets no gradient (stop-gradient inside).
  np.testing.assert_allclose(losses.regression_loss(p, 3.0 * p), 0.0, atol=1e-6)
  grad_p, grad_z = jax.grad(losses.regression_loss, argnums=(0, 1))(p, z)
  assert np.abs(grad_p).sum() > 0 and not np.any(grad_z)


def test_moco_logits_and_loss_match_numpy():
  rng = np.random.default_rng(1)
  q, k = rng.normal(size=(2, 4, 8))
  queue = _normalized(rng.normal(size=(12, 8)))
  qn, kn = _normalized(q), _normalized(k)
  expected_logits = np.concatenate([np.sum(qn * kn, 1, keepdims=True), qn @ queue.T], axis=1) / 0.2
  shifted = expected_logits - expected_logits.max(1, keepdims=True)
  expected_loss = np.mean(np.log(np.exp(shifted).sum(1)) - shifted[:, 0])
  args = [jnp.asarray(a, jnp.float32) for a in (q, k, queue)]
  infonce = lambda *a: losses.moco_infonce(*a, temperature=0.2)
  np.testing.assert_allclose(losses.moco_logits(*args, temperature=0.2), expected_logits, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(infonce(*args), expected_loss, rtol=1e-5)
  _, grad_k, grad_queue = jax.grad(infonce, argnums=(0, 1, 2))(*args)
  assert not np.any(grad_k) and not np.any(grad_queue)


def _numpy_infonce(q, k, queue, temperature):
  qn, kn = _normalized(q), _normalized(k)
  logits = np.concatenate([np.sum(qn * kn, 1, keepdims=True), qn @ queue.T], axis=1) / temperature
  logits = logits - logits.max(1, keepdims=True)
  return np.mean(np.log(np.exp(logits).sum(1)) - logits[:, 0])


def test_moco_symmetric_loss_matches_numpy():
  # solo-learn's MoCo v2+: (L(q1, k2, queue of view-2 keys) + L(q2, k1, queue of view-1 keys)) / 2.
  rng = np.random.default_rng(2)
  q, k = rng.normal(size=(2, 4, 2, 8))
  queue1, queue2 = _normalized(rng.normal(size=(2, 12, 8)))
  expected = (_numpy_infonce(q[:, 0], k[:, 1], queue2, 0.2) + _numpy_infonce(q[:, 1], k[:, 0], queue1, 0.2)) / 2
  args = [jnp.asarray(a, jnp.float32) for a in (q, k, queue1, queue2)]
  np.testing.assert_allclose(losses.moco_symmetric_infonce(*args, temperature=0.2), expected, rtol=1e-5)
  swapped = losses.moco_symmetric_infonce(*args[:2], args[3], args[2], temperature=0.2)
  assert not np.isclose(float(swapped), expected, rtol=1e-3)  # each direction reads its own queue


def test_moco_symmetric_step_enqueues_the_keys_of_each_view_in_its_own_queue():
  c = runs.tiny_synthetic(moco_cifar10.get_config)
  assert c.moco.symmetric  # solo-learn's recipe
  c.model.num_stages, c.model.bn_group_size, c.moco.shuffle_bn = 1, 0, False  # keys independent of order
  model = moco.build_model(c, in_channels=3, rngs=nnx.Rngs(0))
  extra = moco.init_extra(model, c)
  c.moco.symmetric = False
  assert 'queue_view1' not in moco.init_extra(model, c)  # MoCo v2's one direction: one queue
  c.moco.symmetric = True
  ctx = methods.StepContext(config=c, resolution=16, step=jnp.int32(1), total_steps=3, extra=extra)
  batch = {'image': jax.random.randint(jax.random.key(0), (16, 16, 16, 3), 0, 256).astype(jnp.uint8)}
  views = moco.make_views(jax.random.key(1), batch, ctx)
  graphdef, state = nnx.split(model)

  @jax.jit
  def step_and_reference(state):
    """The step, and each view's queries and keys computed on their own (fresh copies of the model)."""
    loss, (_, new, _) = moco.loss_fn(nnx.merge(graphdef, state), views, batch, jax.random.key(1), ctx)
    online = lambda: nnx.merge(graphdef, jax.tree.map(lambda x: x, state)).online
    q = jnp.stack([online()(views[:, v], train=True) for v in (0, 1)], axis=1)
    k = [losses.l2_normalize(_momentum.run_target(online(), extra['target'], views[:, v])[0]) for v in (0, 1)]
    return loss, new, q, k

  loss, new, q, (k1, k2) = step_and_reference(state)
  np.testing.assert_allclose(new['queue'][:16], k2, atol=1e-5)
  np.testing.assert_array_equal(new['queue'][16:], extra['queue'][16:])
  assert int(new['queue_ptr']) == 16
  np.testing.assert_allclose(new['queue_view1'][:16], k1, atol=1e-5)
  np.testing.assert_array_equal(new['queue_view1'][16:], extra['queue_view1'][16:])
  expected = losses.moco_symmetric_infonce(q, jnp.stack([k1, k2], axis=1), extra['queue_view1'],
                                           extra['queue'], temperature=c.loss.temperature)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)


# ----------------------------------------------------------------------------------------------- EMA target
def test_ema_rate_schedules():
  cosine = _momentum.ema_rate
  cfg = byol_cifar10.get_config().ema  # cosine from 0.99 to 1
  np.testing.assert_allclose([cosine(cfg, s, 100) for s in (0, 50, 100)], [0.99, 0.995, 1.0], rtol=1e-6)
  k = 30
  np.testing.assert_allclose(cosine(cfg, k, 100), 1 - 0.01 * (np.cos(np.pi * k / 100) + 1) / 2, rtol=1e-6)
  cfg.schedule = 'constant'
  assert float(cosine(cfg, 77, 100)) == np.float32(0.99)
  config = byol_cifar10.get_config()
  config.ema.base, config.ema.final = 0.999, 0.99
  with pytest.raises(UserError, match='ema.base=0.999, ema.final=0.99'):
    runs.check(config)


@pytest.fixture(scope='module')
def byol_setup():
  config = byol_cifar10.get_config('runlocal,synthetic')
  model = byol.build_model(config, in_channels=3, rngs=nnx.Rngs(0))
  extra = byol.init_extra(model, config)
  ctx = methods.StepContext(config=config, resolution=16, step=jnp.int32(3), total_steps=10, extra=extra)
  return config, model, extra, ctx


def test_byol_after_update_is_the_ema_formula(byol_setup):
  config, model, extra, ctx = byol_setup
  params = nnx.state(model, nnx.Param)
  moved = jax.tree.map(lambda x: x + 1.0, params)  # online params after a pretend optimizer step
  new = byol.after_update(extra, moved, ctx)
  tau = 1 - (1 - 0.99) * (np.cos(np.pi * 3 / 10) + 1) / 2
  flat_new = jax.tree.leaves(new['target']['params'])
  for t_new, t_old, online in zip(flat_new, jax.tree.leaves(extra['target']['params']),
                                  jax.tree.leaves(moved['online'])):
    np.testing.assert_allclose(t_new, tau * t_old + (1 - tau) * online, rtol=1e-6, atol=1e-6)
  assert len(flat_new) == len(jax.tree.leaves(params['online'])) > 0
  # Batch statistics are the target's own, never averaged.
  assert jax.tree.all(jax.tree.map(lambda a, b: a is b, new['target']['batch_stats'],
                                   extra['target']['batch_stats']))


def test_target_receives_no_gradient_and_updates_its_batch_stats(byol_setup):
  config, model, extra, ctx = byol_setup
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  batch = {'image': jax.random.randint(jax.random.key(0), (8, 16, 16, 3), 0, 256).astype(jnp.uint8),
           'label': jnp.zeros((8,), jnp.int32)}

  def loss_of(target_params):
    m = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, stats))
    c = dataclasses.replace(ctx, extra={'target': {**extra['target'], 'params': target_params}})
    views = byol.make_views(jax.random.key(1), batch, c)
    loss, (_, new_extra, _) = byol.loss_fn(m, views, batch, jax.random.key(1), c)
    return loss, new_extra

  grads, new_extra = jax.jit(jax.grad(loss_of, has_aux=True))(extra['target']['params'])
  assert not any(np.any(g) for g in jax.tree.leaves(grads))
  old_mean = jax.tree.leaves(extra['target']['batch_stats'])
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new_extra['target']['batch_stats']),
                                                        old_mean))


def test_moco_queue_must_take_whole_batches():
  c = moco_cifar10.get_config('runlocal')
  c.moco.queue_size = 40  # batch 16
  with pytest.raises(UserError, match='multiple of batch_size'):
    runs.check(c)  # the method's check_config, before any model is built


def test_missing_config_block_is_named():
  c = byol_cifar10.get_config('runlocal')
  del c.model['predictor']
  with pytest.raises(UserError, match='needs the config block `model.predictor`'):
    runs.check(c)


def test_moco_enqueue_is_fifo():
  queue, ptr = jnp.zeros((6, 2)), jnp.int32(0)
  for step in range(4):
    queue, ptr = moco.enqueue(queue, ptr, jnp.full((2, 2), step + 1.0))
  # Steps 1..4 wrote rows 0-1, 2-3, 4-5, 0-1: the oldest keys (step 1) were replaced by step 4's.
  np.testing.assert_array_equal(queue[:, 0], [4, 4, 2, 2, 3, 3])
  assert int(ptr) == 2


# ----------------------------------------------------------------------------------------------- trainer
@pytest.mark.parametrize('method, arg', [
    ('byol', 'runlocal'), ('simsiam', 'runlocal,dataset=cifar100,recipe=rotation200'), ('moco', 'runlocal')])
def test_runlocal_config_trains_and_evaluates_end_to_end(tmp_path, method, arg):
  # One device vs eight: tests/test_methods.py (each framework) and tests/test_rotation.py (the add-on).
  c = _CONFIGS[method].get_config(arg)
  c.total_steps = 2
  c.log_every_steps = 1
  c.eval.compare_random_init = False  # the trainer's own tests cover it
  with tfds.testing.mock_data(num_examples=64, data_dir=str(tmp_path / 'tfds')):
    results = train.train_and_evaluate(c, tmp_path / 'run')
  assert 0.0 <= results['knn_top1'] <= 1.0 and 0.0 <= results['linear_top1'] <= 1.0
  assert np.isfinite(_losses(tmp_path / 'run')).all() and len(_losses(tmp_path / 'run')) == 2


def test_moco_queue_is_fifo_across_steps_and_exact_across_resume(tmp_path, monkeypatch):
  c = _synthetic('moco', steps=4)
  c.checkpoint_every_steps = 1
  c.keep_checkpoints = 10
  train.train_and_evaluate(c, tmp_path / 'straight')
  states = _checkpoints(tmp_path / 'straight')
  k, b = c.moco.queue_size, c.batch_size
  for step in range(2, 5):
    before, after = states[step - 1]['extra'], states[step]['extra']
    start = int(before['queue_ptr'])
    assert start == (step - 1) * b % k and int(after['queue_ptr']) == step * b % k
    written = np.zeros(k, bool)
    written[start:start + b] = True
    np.testing.assert_array_equal(after['queue'][~written], before['queue'][~written])
    assert not np.any(np.isclose(after['queue'][written], before['queue'][written]).all(axis=1))
    np.testing.assert_allclose(np.linalg.norm(after['queue'][written], axis=1), 1.0, rtol=1e-5)
    moved = [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(after['target']['params']),
                                                      jax.tree.leaves(before['target']['params']))]
    assert any(moved)  # the key encoder follows the online one

  # SIGTERM while step 2 is logged: the run saves after step 3 and stops; the resumed run must be bitwise
  # equal to the straight one, queue, pointer, key encoder and EMA schedule included.
  runs.preempt_after_step_3(c, tmp_path / 'resumed', monkeypatch)
  train.train_and_evaluate(c, tmp_path / 'resumed')
  assert _losses(tmp_path / 'resumed') == _losses(tmp_path / 'straight')
  taus = [json.loads(l)['ema_tau'] for l in open(tmp_path / 'resumed' / 'metrics.jsonl')]
  assert taus == [json.loads(l)['ema_tau'] for l in open(tmp_path / 'straight' / 'metrics.jsonl')]
  assert taus == sorted(taus) and taus[0] < taus[-1]
  resumed = _checkpoints(tmp_path / 'resumed')[4]
  assert jax.tree.structure(resumed) == jax.tree.structure(states[4])
  for a, b in zip(jax.tree.leaves(states[4]), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)  # bitwise
