"""MoCo v3: the loss against numpy, the momentum schedule and update, no gradient into the momentum encoder,
resume exactness, the backbone checks. (One step on 1 device equals 8: tests/test_methods.py, whose recipe
for mocov3 is configs/mocov3_cifar10.py, a ViT.)"""
import dataclasses
import functools
import json
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssl_jax
from configs import mocov3_cifar10, selfcon_digits
from ssl_jax import methods, train
from ssl_jax.errors import UserError
from ssl_jax.methods import mocov3

import runs


def _numpy_infonce(q, k, temperature):
  """MoCo v3's contrastive_loss in float64: cross-entropy of q̂·k̂ᵀ/T with label i for row i, times 2T."""
  q = q / np.linalg.norm(q, axis=1, keepdims=True)
  k = k / np.linalg.norm(k, axis=1, keepdims=True)
  logits = q @ k.T / temperature
  log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  return -np.mean(np.diag(log_softmax)) * 2 * temperature


def test_loss_matches_numpy():
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(2, 12, 7))
  for temperature in (0.2, 1.0):
    got = mocov3.mocov3_infonce(q.astype(np.float32), 3.0 * k.astype(np.float32), temperature=temperature)
    np.testing.assert_allclose(got, _numpy_infonce(q, k, temperature), rtol=1e-5)
  # Queries equal to their keys and far apart from the others: the loss goes to 0.
  eye = np.eye(12, 12, dtype=np.float32)
  assert float(mocov3.mocov3_infonce(eye, eye, temperature=0.05)) < 1e-6


def _tiny(steps=4):
  c = runs.tiny_synthetic(mocov3_cifar10.get_config, steps=steps)
  c.model.num_stages = 1
  c.probe.enabled = False
  return c


def test_momentum_schedule_and_update():
  c = _tiny()
  c.total_steps = 10
  target = {'params': {'w': jnp.full((3,), 2.0)}, 'batch_stats': {'s': jnp.ones(2)}}
  online = {'online': {'w': jnp.zeros(3)}}
  for step in (0, 3, 9):
    ctx = methods.StepContext(config=c, resolution=16, step=jnp.int32(step), total_steps=10, extra={})
    # The official adjust_moco_momentum at the next step (it updates before computing that step's keys).
    m = 1 - 0.5 * (1 + math.cos(math.pi * (step + 1) / 10)) * (1 - 0.99)
    new = mocov3.after_update({'target': target}, online, ctx)['target']
    np.testing.assert_allclose(new['params']['w'], 2.0 * m, rtol=1e-6)
    np.testing.assert_array_equal(new['batch_stats']['s'], target['batch_stats']['s'])
  assert m == pytest.approx(1.0)  # the last update leaves the momentum encoder as it is


def test_no_gradient_reaches_the_momentum_encoder():
  c = _tiny()
  model = mocov3.build_model(c, in_channels=3, rngs=nnx.Rngs(0))
  extra = mocov3.init_extra(model, c)
  batch = {'image': jax.random.randint(jax.random.key(0), (8, 16, 16, 3), 0, 256).astype(jnp.uint8),
           'label': jnp.zeros(8, jnp.int32)}
  ctx = methods.StepContext(config=c, resolution=16, step=jnp.int32(0), total_steps=4, extra=extra)
  views = mocov3.make_views(jax.random.key(1), batch, ctx)
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

  def loss(params, target_params):
    run_ctx = dataclasses.replace(ctx, extra={'target': {**extra['target'], 'params': target_params}})
    model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, stats))  # stats of this trace level
    return mocov3.loss_fn(model, views, batch, jax.random.key(1), run_ctx)[0]

  g_online, g_target = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, extra['target']['params'])
  assert all(not np.any(g) for g in jax.tree.leaves(g_target))
  assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(g_online)) > 0
  # The projector and predictor are bias-free (the official _build_mlp); the projector ends in a BN
  # without affine parameters.
  assert model.online.projector.out.bias is None and model.predictor.out.bias is None
  assert model.online.projector.out_bn.scale is None and len(model.online.projector.hidden) == 2


def test_resume_is_exact(tmp_path, monkeypatch):
  c = _tiny(steps=4)
  c.checkpoint_every_steps = 1
  c.keep_checkpoints = 10
  # One device: the device count is tests/test_methods.py's subject; 8 fake ones only slow this down.
  monkeypatch.setattr(train, 'train_and_evaluate',
                      functools.partial(train.train_and_evaluate, devices=jax.devices()[:1]))
  train.train_and_evaluate(c, tmp_path / 'straight')
  states = runs.checkpoints(tmp_path / 'straight')
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(states[2]['extra']['target']['params']),
                                                    jax.tree.leaves(states[3]['extra']['target']['params']))]
  assert any(moved)  # the momentum encoder follows the base encoder (m < 1 until the last update)
  # load_encoder reads a ViT run, whose frozen patch projection is kept beside the batch statistics.
  assert c.model.freeze_patch_embed
  encoder = ssl_jax.load_encoder(tmp_path / 'straight')
  images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
  features = encoder.embed(images)
  assert features.shape == (5, encoder.feature_dim) and np.isfinite(features).all()
  np.testing.assert_allclose(encoder.embed(images[:2]), features[:2], rtol=1e-5, atol=1e-6)
  runs.preempt_after_step_3(c, tmp_path / 'resumed', monkeypatch)
  train.train_and_evaluate(c, tmp_path / 'resumed')
  assert runs.logged(tmp_path / 'resumed') == runs.logged(tmp_path / 'straight')
  taus = [json.loads(l)['ema_tau'] for l in open(tmp_path / 'resumed' / 'metrics.jsonl')]
  assert taus == sorted(taus) and taus[-1] == 1.0
  resumed = runs.checkpoints(tmp_path / 'resumed')[4]
  assert jax.tree.structure(resumed) == jax.tree.structure(states[4])
  for a, b in zip(jax.tree.leaves(states[4]), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)  # bitwise


def test_backbones_a_method_cannot_train_are_refused():
  c = selfcon_digits.get_config('runlocal')
  c.model.name = 'vit_tiny'
  with pytest.raises(UserError, match="method 'selfcon' cannot train a vit encoder"):
    runs.check(c)
  c = _tiny()
  c.fusion.enabled, c.fusion.placement = True, 'stem'
  with pytest.raises(UserError, match='needs a ResNet encoder'):
    runs.check(c)
  c = _tiny()
  c.model.predictor.out_dim = 8
  with pytest.raises(UserError, match='must equal model.head.out_dim'):
    runs.check(c)
