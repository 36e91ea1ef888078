"""SwAV (ssl_jax/methods/swav.py), its losses, multi-crop views and the rotation task on it.

The losses against numpy; the codes on 1 vs 8 devices; one model-level fixture (multi-crop, queue, rotation)
for prototype normalisation and freezing, the queue, per-resolution BatchNorm and the rotation wiring; a
multi-crop run with a queue resumed exactly from its checkpoint. (The whole step on 1 vs 8 devices is the
contract test's, tests/test_methods.py, on configs/swav_cifar.py with rotation.)
"""
import shutil

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
import pytest

from configs import swav_cifar, swav_digits, swav_imagenet
from ssl_jax import config_schema, losses, methods, sharding, train
from ssl_jax.data import multicrop
from ssl_jax.errors import UserError

import runs


# ----------------------------------------------------------------------------------------------- losses
def _np_sinkhorn(scores, eps, iters):
  q = np.exp(scores.astype(np.float64) / eps).T
  q /= q.sum()
  k, n = q.shape
  for _ in range(iters):
    q /= q.sum(axis=1, keepdims=True) * k
    q /= q.sum(axis=0, keepdims=True) * n
  return (q / q.sum(axis=0, keepdims=True)).T


def _np_swav_loss(scores, codes, assign, temperature):
  logits = scores / temperature
  log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  total = 0.0
  for a, view in enumerate(assign):
    others = [v for v in range(scores.shape[1]) if v != view]
    total += np.mean([-np.mean(np.sum(codes[a] * log_p[:, v], -1)) for v in others])
  return total / len(assign)


def _scores(rng, n, k, v=None):
  z = rng.normal(size=(n, 8) if v is None else (n, v, 8))
  w = rng.normal(size=(8, k))
  return (z / np.linalg.norm(z, axis=-1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))


def test_sinkhorn_matches_numpy_and_splits_the_batch_equally():
  scores = _scores(np.random.default_rng(0), 48, 12).astype(np.float32)
  codes = np.asarray(losses.sinkhorn_knopp(jnp.asarray(scores), epsilon=0.05, num_iters=3))
  np.testing.assert_allclose(codes, _np_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-5)          # each example's codes: a distribution
  # Run to convergence, every prototype gets N/K of the batch (the equipartition constraint).
  converged = np.asarray(losses.sinkhorn_knopp(jnp.asarray(scores), epsilon=0.05, num_iters=200))
  np.testing.assert_allclose(converged.sum(axis=0), 48 / 12, rtol=1e-3)
  assert np.abs(codes.sum(axis=0) - 4).max() < np.abs(np.exp(scores / 0.05).sum(0) /
                                                       np.exp(scores / 0.05).sum() * 48 - 4).max()


def test_swapped_prediction_loss_matches_numpy():
  rng = np.random.default_rng(1)
  scores = _scores(rng, 16, 10, v=5).astype(np.float32)
  codes = np.stack([_np_sinkhorn(scores[:, v], 0.05, 3) for v in (0, 1)]).astype(np.float32)
  got = losses.swapped_prediction_loss(jnp.asarray(scores), jnp.asarray(codes), (0, 1), temperature=0.1)
  np.testing.assert_allclose(float(got), _np_swav_loss(scores, codes, (0, 1), 0.1), rtol=1e-5)


def test_codes_do_not_depend_on_the_device_count():
  scores = jnp.asarray(_scores(np.random.default_rng(2), 64, 20).astype(np.float32))
  fn = jax.jit(lambda s: losses.sinkhorn_knopp(s, epsilon=0.05, num_iters=3))
  one = fn(jax.device_put(scores, jax.devices()[0]))
  mesh = Mesh(np.array(jax.devices()), ('data',))
  eight = fn(jax.device_put(scores, NamedSharding(mesh, PartitionSpec('data'))))
  assert len(eight.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(one), np.asarray(eight), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------- the model
def _config(rotation=True, queue=32, num_local=2):
  """swav_cifar:runlocal,synthetic with one ResNet stage, 2 local 8-px crops and a queue of 32 rows."""
  c = swav_cifar.get_config('runlocal,synthetic' + ('' if rotation else ',rotation=false'))
  c.model.num_stages = 1
  c.multicrop.update(num_local=num_local, local_size=8)
  c.swav.update(queue_length=queue, queue_start_epoch=0.0, freeze_prototypes_steps=2)
  c.data.synthetic_shape = (16, 16, 3)
  config_schema.validate(c)
  return c


class _Run:
  """One config's method, model and a jitted loss + gradient of its `loss_fn` at a given step."""

  def __init__(self, config):
    self.config, self.method = config, methods.get_method(config)
    model = self.method.build_model(config, in_channels=3, rngs=nnx.Rngs(0))
    self.encoder_out = model.encoder.out_dim
    self.head_in = model.rotation_head.hidden[0].in_features if config.rotation.enabled else None
    self.graphdef, self.params, self.batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    self.extra = self.method.init_extra(model, config)

    def loss_and_grads(params, views, extra, step, key):
      ctx = methods.StepContext(config=config, resolution=16, step=step, total_steps=8, extra=extra)

      def loss_of(p):
        m = nnx.merge(self.graphdef, p, jax.tree.map(lambda x: x, self.batch_stats))
        return self.method.loss_fn(m, views, {'image': None, 'label': None}, key, ctx)

      (loss, (metrics, new_extra, features)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
      return loss, metrics, new_extra, features, grads

    self.step = jax.jit(loss_and_grads)


@pytest.fixture(scope='module')
def swav_runs():
  """SwAV + rotation with multi-crop and a queue, and plain SwAV without a queue (same initial weights)."""
  return _Run(_config()), _Run(_config(rotation=False, queue=0))


_IMAGES = np.random.default_rng(3).integers(0, 256, (16, 16, 16, 3)).astype(np.uint8)
_make_views = jax.jit(lambda key, batch: multicrop.make_views(key, batch, _config(), 16))


def _views(step: int):
  return _make_views(jax.random.key(step), {'image': _IMAGES})


@pytest.fixture(scope='module')
def views():
  return _views(0)


def _without_rotation_head(params):
  return nnx.State({k: v for k, v in params.items() if k != 'rotation_head'})


def test_multicrop_views_have_their_shapes_and_crop_scales(views):
  assert views.global_views.shape == (16, 2, 16, 16, 3) and views.local_views.shape == (16, 2, 8, 8, 3)
  c = _config()
  c.augment3 = c.augment.copy_and_resolve_references()
  c.augment3.flip_prob = 0.0
  local = multicrop._local_config(c, 3)     # local crop 1 is view 3: augment3, with the local crop scale
  assert tuple(local.crop_scale) == tuple(c.multicrop.local_crop_scale) and local.flip_prob == 0.0
  assert multicrop._local_config(c, 4).flip_prob == c.augment.flip_prob
  assert tuple(c.augment.crop_scale) != tuple(c.multicrop.local_crop_scale)   # the config itself is untouched


def test_multicrop_views_of_host_crops(views):
  """Variable-size data come cropped by the host, the global crops as 'image' and the local ones as
  'local_image': the views have the device crops' shapes, the local views are made from the local crops,
  and they are the same with the batch on one device and sharded over eight as the trainer puts it."""
  rng = np.random.default_rng(5)
  batch = {'image': rng.integers(0, 256, (16, 2, 16, 16, 3), dtype=np.uint8),
           'local_image': rng.integers(0, 256, (16, 2, 8, 8, 3), dtype=np.uint8)}
  one = _make_views(jax.random.key(0), batch)
  assert jax.tree.map(jnp.shape, one) == jax.tree.map(jnp.shape, views)
  eight = _make_views(jax.random.key(0), sharding.global_batch(batch, sharding.make_mesh()))
  assert len(eight.local_views.sharding.device_set) == 8
  for a, b in zip(one, eight):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  other = _make_views(jax.random.key(0), {**batch, 'local_image': 255 - batch['local_image']})
  np.testing.assert_array_equal(np.asarray(other.global_views), np.asarray(one.global_views))
  assert not np.allclose(np.asarray(other.local_views), np.asarray(one.local_views))


def test_prototypes_are_normalised_before_the_step_and_frozen_at_first(swav_runs, views):
  run, _ = swav_runs
  params = run.method.prepare_params(run.params, run.config)
  kernel = np.asarray(params['prototypes']['kernel'][...])
  raw = np.asarray(run.params['prototypes']['kernel'][...])
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)
  np.testing.assert_allclose(kernel, raw / np.linalg.norm(raw, axis=0), rtol=1e-5)
  assert not np.allclose(np.linalg.norm(raw, axis=0), 1.0)   # the caller's params are left as they were
  key = jax.random.key(1)
  for step, frozen in ((1, True), (2, False)):
    _, _, _, _, grads = run.step(params, views, run.extra, jnp.int32(step), key)
    proto = np.abs(np.asarray(grads['prototypes']['kernel'][...])).max()
    assert (proto == 0) == frozen, (step, proto)
    assert np.abs(np.asarray(grads['encoder']['stem_conv']['kernel'][...])).max() > 0


def test_queue_is_fifo_and_used_once_full(swav_runs):
  run, plain = swav_runs
  params = run.method.prepare_params(run.params, run.config)
  plain_params = _without_rotation_head(params)
  key, extra, queues, filled = jax.random.key(1), run.extra, [], []
  for step in range(3):
    views = _views(step)   # a queue of copies of the batch would give the batch's own codes
    loss, metrics, new_extra, _, _ = run.step(params, views, extra, jnp.int32(step), key)
    plain_loss = plain.step(plain_params, views, plain.extra, jnp.int32(step), key)[0]
    # Until the queue is full the codes are the batch's own: the SwAV loss equals the loss without a queue.
    full = int(extra['queue_filled']) == 32
    assert np.isclose(float(metrics['ssl_loss']), float(plain_loss), rtol=1e-5) != full, step
    extra = new_extra
    queues.append(np.asarray(extra['queue']))
    filled.append(int(extra['queue_filled']))
  assert filled == [16, 32, 32]
  # Newest first: each step's 16 projections go in front and push the older ones back (the oldest fall out).
  np.testing.assert_array_equal(queues[1][:, 16:], queues[0][:, :16])
  np.testing.assert_array_equal(queues[2][:, 16:], queues[1][:, :16])
  np.testing.assert_allclose(np.linalg.norm(queues[2], axis=-1), 1.0, rtol=1e-5)
  assert not np.allclose(queues[2][0], queues[2][1])   # one queue per assignment view


def test_per_resolution_batchnorm_and_rotation_only_of_global_crops(swav_runs, views):
  """The global crops go through the encoder without the local ones (their own BatchNorm statistics), the
  rotated copies never reach the SwAV loss, and the rotation head reads the backbone feature of global crops
  only."""
  run, plain = swav_runs
  assert run.head_in == run.encoder_out
  params = run.method.prepare_params(run.params, run.config)
  key = jax.random.key(1)
  _, metrics, _, features, _ = run.step(params, views, run.extra, jnp.int32(2), key)
  noisy = views._replace(local_views=jnp.asarray(
      np.random.default_rng(4).uniform(size=views.local_views.shape), jnp.float32))
  _, noisy_metrics, _, noisy_features, _ = run.step(params, noisy, run.extra, jnp.int32(2), key)
  np.testing.assert_allclose(noisy_features, features, rtol=1e-6)       # global crops: their own BN pass
  assert not np.isclose(float(noisy_metrics['ssl_loss']), float(metrics['ssl_loss']))
  np.testing.assert_allclose(float(noisy_metrics['rotation_loss']), float(metrics['rotation_loss']), rtol=1e-6)
  # The SwAV loss with the rotation task (its `ssl_loss`) is SwAV's alone, on the same weights.
  plain_loss = plain.step(_without_rotation_head(params), views, plain.extra, jnp.int32(2), key)[0]
  np.testing.assert_allclose(float(metrics['ssl_loss']), float(plain_loss), rtol=1e-6)
  assert float(metrics['rotation_loss']) > 0


# ----------------------------------------------------------------------------------------------- the trainer
def test_multicrop_queue_run_resumes_exactly(tmp_path):
  """3 steps straight; the step-2 checkpoint (queue full) resumed: the same params and queue after step 3."""
  c = runs.tiny_synthetic(lambda arg: _config(rotation=False), steps=3)
  c.checkpoint_every_steps = 2
  c.probe.enabled = False
  train.train_and_evaluate(c, tmp_path / 'straight')
  shutil.copytree(tmp_path / 'straight', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / '3')
  (tmp_path / 'resumed' / 'results.json').unlink()   # else the run counts as done
  train.train_and_evaluate(c, tmp_path / 'resumed')
  states = runs.checkpoints(tmp_path / 'straight')
  assert int(states[2]['extra']['queue_filled']) == 32   # step 3 used the queue restored from step 2
  straight, resumed = states[3], runs.final_state(tmp_path / 'resumed')
  for a, b in zip(jax.tree.leaves((straight['params'], straight['extra'])),
                  jax.tree.leaves((resumed['params'], resumed['extra']))):
    np.testing.assert_array_equal(a, b)


def test_bad_settings_are_refused_in_one_line():
  c = _config()
  c.swav.crops_for_assign = (0, 2)
  with pytest.raises(UserError, match=r'swav.crops_for_assign=\(0, 2\) must name global crops'):
    runs.check(c)
  c = swav_imagenet.get_config()    # ImageNet JPEGs: the host cuts the 2 global and the 6 local crops
  runs.check(c)
  crops = methods.get_method(c).host_crops(c)
  assert [(crop.size, crop.scale) for crop in crops] == [(None, (0.14, 1.0))] * 2 + [(96, (0.05, 0.14))] * 6
  c = runs.tiny_synthetic()          # SimCLR does not take local crops
  c.multicrop = _config().multicrop
  with pytest.raises(UserError, match="method 'simclr' does not take local crops"):
    runs.check(c)
  assert swav_digits.get_config('runlocal,rotation').rotation.head_on == 'backbone'
