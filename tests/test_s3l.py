"""S3L: training stages, the staged optimizer, small-data subsets, the S3L datasets, transfer + warm-up."""
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from configs import common, s3l_byol_cub, s3l_moco_cub, s3l_simclr_cub
from ssl_jax import data, methods, models, optim, stages, train
from ssl_jax.data import aircraft, sources
from ssl_jax.encoder import build_from_checkpoint
from ssl_jax.errors import UserError
from ssl_jax.evaluate import finetune_cli as finetune

import runs


def _optimizer_cfg(**kw):
  c = common.base_config().optimizer
  c.update(name='sgd', lr_scaling='none', warmup_epochs=0.0, momentum=0.9, weight_decay=0.01,
           exclude_bias_and_norm=False, **kw)
  return c


def _staged_config(*stage_list, **kw):
  c = common.base_config()
  c.optimizer = _optimizer_cfg(base_lr=0.1)
  c.total_epochs = 0.0
  c.stages = stage_list
  c.update(kw)
  return c


# ----------------------------------------------------------------------------------------------- stages
def test_plan_converts_epochs_applies_overrides_and_joins_continuing_stages():
  c = _staged_config({'image_size': 56, 'epochs': 2.0}, {'image_size': 112, 'steps': 7},
                     {'image_size': 224, 'epochs': 0.5, 'optimizer': {'base_lr': 0.03}})
  plan = stages.plan(c, steps_per_epoch=10)
  assert [(s.first_step, s.num_steps, s.image_size) for s in plan.stages] == [(0, 20, 56), (20, 7, 112),
                                                                              (27, 5, 224)]
  assert plan.total_steps == 32 and stages.image_sizes(c) == [56, 112, 224]
  assert [plan.image_size_at(t) for t in (0, 19, 20, 26, 27, 31)] == [56, 56, 112, 112, 224, 224]
  segments = plan.optimizer_segments()
  assert [(first, n, cfg.base_lr) for first, n, cfg in segments] == [(0, 20, 0.1), (20, 7, 0.1),
                                                                      (27, 5, 0.03)]
  c.stages[1]['restart_optimizer'] = False  # stage 2 continues stage 1's optimizer: one segment of 27 steps
  assert [(first, n) for first, n, _ in stages.plan(c, 10).optimizer_segments()] == [(0, 27), (27, 5)]
  plain = common.base_config()
  plain.total_steps, plain.data.image_size = 9, 40
  assert (stages.plan(plain, 10).total_steps, stages.image_sizes(plain)) == (9, [40])


@pytest.mark.parametrize('stage_list, kw, message', [
    (({'image_size': 56, 'epochs': 1},), {'total_steps': 5}, 'total_steps'),
    (({'image_size': 56, 'epochs': 1, 'steps': 3},), {}, 'exactly one of epochs'),
    (({'image_size': 56},), {}, 'exactly one of epochs'),
    (({'epochs': 1},), {}, 'image_size'),
    (({'image_size': 56, 'epochs': 1, 'lr': 0.1},), {}, 'unknown field'),
    (({'image_size': 56, 'epochs': 1, 'optimizer': {'lr': 0.1}},), {}, 'optimizer has unknown'),
    (({'image_size': 56, 'epochs': 1},
      {'image_size': 112, 'epochs': 1, 'restart_optimizer': False, 'optimizer': {'base_lr': 1.0}}), {},
     'cannot change'),
])
def test_bad_stages_are_user_errors(stage_list, kw, message):
  with pytest.raises(UserError, match=message):
    stages.check(_staged_config(*stage_list, **kw))


def test_staged_optimizer_restarts_its_schedule_and_state_and_keeps_the_others():
  # Segment 0: 3 steps at peak 0.1, segment 1: 2 steps at peak 0.03; SGD momentum 0.9, wd 0.01, cosine.
  segments = ((0, 3, _optimizer_cfg(base_lr=0.1)), (3, 2, _optimizer_cfg(base_lr=0.03)))
  tx, schedule = optim.create_staged_optimizer(segments, batch_size=8, steps_per_epoch=1)
  rng = np.random.default_rng(0)
  w0, grads = rng.normal(size=3).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)

  # Independent numpy reference: each segment from zero momentum and its own cosine over its own steps.
  expected, w, lrs = [], w0.astype(np.float64), []
  for steps, peak in ((3, 0.1), (2, 0.03)):
    trace = np.zeros(3)
    for t in range(steps):
      lrs.append(peak * 0.5 * (1 + math.cos(math.pi * t / steps)))
      trace = 0.9 * trace + grads[len(expected)] + 0.01 * w
      w = w - lrs[-1] * trace
      expected.append(w)

  params, state = {'w': jnp.asarray(w0)}, tx.init({'w': jnp.asarray(w0)})
  fresh_second = jax.tree.map(np.asarray, state.segments[1])
  update = jax.jit(tx.update)
  history = []
  for t in range(5):
    updates, state = update({'w': jnp.asarray(grads[t])}, state, params)
    params = optax.apply_updates(params, updates)
    history.append(jax.tree.map(np.asarray, state))
    np.testing.assert_allclose(params['w'], expected[t], rtol=1e-5)
  np.testing.assert_allclose([schedule(t) for t in range(5)], lrs, rtol=1e-6)
  # Up to the boundary only segment 0 moves; after it, segment 0's state is kept exactly as it was.
  for a, b in zip(jax.tree.leaves(history[2].segments[1]), jax.tree.leaves(fresh_second)):
    np.testing.assert_array_equal(a, b)
  for later in history[3:]:
    for a, b in zip(jax.tree.leaves(later.segments[0]), jax.tree.leaves(history[2].segments[0])):
      np.testing.assert_array_equal(a, b)
  assert int(history[-1].count) == 5
  # One segment is exactly the plain optimizer (no wrapper, same state as before stages existed).
  single, _ = optim.create_staged_optimizer(segments[:1], batch_size=8, steps_per_epoch=1)
  assert not isinstance(single.init(params), optim.StagedState)


# ----------------------------------------------------------------------------------------------- subsets
def _with(cfg, **kw):
  out = ml_collections.ConfigDict(cfg.to_dict())
  out.update(kw)
  return out


def test_memory_subsets_are_deterministic_by_seed_and_class_balanced():
  labels = np.arange(60) % 5
  images = np.arange(60, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  data.register_memory_dataset('s3l_subset_test', images, labels, split='train')
  data.register_memory_dataset('s3l_subset_test', images, labels, split='test')
  cfg = common.base_config().data
  cfg.update(name='s3l_subset_test', subset_per_class=3, subset_seed=1)

  def chosen(c, split='train'):
    source = data.get_source(c, split=split, train=True)
    return np.concatenate([b['image'][:, 0, 0, 0] for b in source.eval_batches(global_batch_size=4)
                           if b['mask'].any()])[:source.num_examples]

  first = chosen(cfg)
  assert len(first) == 15 and np.bincount(labels[first], minlength=5).tolist() == [3] * 5
  np.testing.assert_array_equal(first, chosen(cfg))                       # same seed, same subset
  assert not np.array_equal(first, chosen(_with(cfg, subset_seed=2)))
  np.testing.assert_array_equal(first, sources.subset_indices(60, labels, seed=1, per_class=3))
  assert len(chosen(cfg, split='test')) == 60                             # the eval split stays whole
  some = chosen(_with(cfg, subset_per_class=0, subset_num=7))
  assert len(set(some.tolist())) == 7
  both = runs.tiny_synthetic()
  both.data.update(subset_num=7, subset_per_class=3)
  with pytest.raises(UserError, match='at most one'):
    runs.check(both)


def _indexed_jpegs(self, *args, **kwargs):
  """36 constant JPEGs of random sizes whose value (3 x index) tells which example a crop came from.

  Fixed-size builders (imagenet_resized) get images of their own size; every label is index % 4.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  fixed = self.info.features['image'].shape[0]
  images = []
  for i in range(36):
    h, w = (fixed, fixed) if fixed else (rng.integers(30, 50), rng.integers(30, 50))
    images.append(tf.io.encode_jpeg(np.full((h, w, 3), 3 * i, np.uint8), quality=100))
  return tf.data.Dataset.from_tensor_slices({'image': tf.stack(images), 'label': np.arange(36) % 4,
                                             'tfds_id': [f'{self.name}-{i}' for i in range(36)]})


def _indices(images):
  """The example index each crop shows (constant images: value / 3)."""
  return np.round(images.reshape(len(images), -1).mean(axis=1) / 3).astype(int)


@pytest.fixture(scope='module')
def mock_tfds(tmp_path_factory):
  with tfds.testing.mock_data(data_dir=str(tmp_path_factory.mktemp('tfds')), as_dataset_fn=_indexed_jpegs):
    yield


def test_tfds_subsets_and_stage_crops_at_each_stage_size(mock_tfds):
  cfg = common.base_config().data
  cfg.update(name='caltech_birds2011', subset_per_class=2, subset_seed=3, image_size=24)
  source = data.get_source(cfg, split='train', train=False)
  expected = sources.subset_indices(36, np.arange(36) % 4, seed=3, per_class=2)
  shown = _indices(np.concatenate([b['image'][b['mask']] for b in source.eval_batches(global_batch_size=4)]))
  np.testing.assert_array_equal(shown, expected)  # file order, only the chosen examples

  # Two stages: host crops cut at 16 px, then at 24 px; the example stream is the one of a single source.
  config = _staged_config({'image_size': 16, 'steps': 3}, {'image_size': 24, 'steps': 3})
  plan = stages.plan(config, steps_per_epoch=2)
  source_for = lambda size: data.get_source(cfg, split='train', train=True, crops=(data.HostCrop(),) * 2,
                                            image_size=size)
  kw = dict(global_batch_size=4, seed=0)
  staged_batches = list(stages.stage_batches(plan, source_for, start_step=0, **kw))
  assert [b['image'].shape for b in staged_batches] == [(4, 2, 16, 16, 3)] * 3 + [(4, 2, 24, 24, 3)] * 3
  single = source_for(16).train_batches(**kw)
  for batch in staged_batches:
    np.testing.assert_array_equal(_indices(batch['image'][:, 0]), _indices(next(single)['image'][:, 0]))
  epoch = np.concatenate([_indices(b['image'][:, 1]) for b in staged_batches[:2]])
  np.testing.assert_array_equal(np.sort(epoch), expected)  # each subset example once per epoch
  resumed = list(stages.stage_batches(plan, source_for, start_step=4, **kw))
  assert len(resumed) == 2
  for a, b in zip(resumed, staged_batches[4:]):
    np.testing.assert_array_equal(a['image'], b['image'])

  # S3L's fine-tuning crop: shorter side to S / 0.875, then a random S x S window.
  resize_crop = data.get_source(cfg, split='train', train=True, image_size=16, crop='resize_crop')
  assert next(resize_crop.train_batches(**kw))['image'].shape == (4, 1, 16, 16, 3)


@pytest.mark.parametrize('shape', [(40, 60), (75, 31)])
def test_resize_crop_window_is_torchvisions_resize_then_random_crop(shape):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from ssl_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  side = round(min(shape) * 16 / round(16 / 0.875))  # Resize(18) then RandomCrop(16), in original pixels
  tops, lefts = set(), set()
  for seed in range(40):
    top, left, h, w = tfds_source._resize_crop_window(tf.constant(shape + (3,)), 16, tf.constant([seed, 1]))
    assert int(h) == int(w) == side
    assert 0 <= int(top) <= shape[0] - side and 0 <= int(left) <= shape[1] - side
    tops.add(int(top)), lefts.add(int(left))
  assert len(tops | lefts) > 2  # the position is random


@pytest.mark.parametrize('name, classes, shape', [
    ('cars196', 196, None), ('oxford_flowers102', 102, None), ('oxford_iiit_pet', 37, None),
    ('imagenet_resized/32x32', 1000, (32, 32, 3))])
def test_s3l_datasets_open_and_decode(mock_tfds, name, classes, shape):
  cfg = common.base_config().data
  cfg.update(name=name, image_size=16)
  source = data.get_source(cfg, split='train', train=True, crops=(data.HostCrop(),) * 2)
  assert source.num_classes == classes and source.image_shape == shape and source.num_examples == 36
  batch = next(source.train_batches(global_batch_size=4, seed=0))
  assert batch['image'].shape == ((4, 2, 16, 16, 3) if shape is None else (4, *shape))
  assert data.image_stats(name, 3) == data.image_stats('imagenet2012', 3)


def test_aircraft_folder_layout(tmp_path, capsys):
  src = tmp_path / 'fgvc-aircraft-2013b' / 'data'
  (src / 'images').mkdir(parents=True)
  lists = {'trainval': ['0001 707-320', '0002 F/A-18', '0003 F/A-18'], 'test': ['0004 707-320']}
  for split, lines in lists.items():
    (src / f'images_variant_{split}.txt').write_text('\n'.join(lines) + '\n')
    for line in lines:
      (src / 'images' / f'{line.split()[0]}.jpg').write_bytes(line.encode())
  assert aircraft.main(['--src', str(src.parent), '--dst', str(tmp_path / 'out')]) == 0
  made = sorted(str(p.relative_to(tmp_path / 'out')) for p in (tmp_path / 'out').rglob('*.jpg'))
  assert made == ['test/707-320/0004.jpg', 'train/707-320/0001.jpg', 'train/F_A-18/0002.jpg',
                  'train/F_A-18/0003.jpg']
  assert (tmp_path / 'out' / 'train' / 'F_A-18' / '0003.jpg').read_bytes() == b'0003 F/A-18'
  assert aircraft.main(['--src', str(tmp_path), '--dst', str(tmp_path / 'x')]) == 2
  assert 'fgvc-aircraft-2013b' in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize('module, method, lr, epochs', [
    (s3l_moco_cub, 'moco', 0.03, 200), (s3l_simclr_cub, 'simclr', 0.5 / 0.7, 200),
    (s3l_byol_cub, 'byol', 0.125, 800)])
def test_recipes_hold_s3ls_settings(module, method, lr, epochs):
  c = module.get_config()
  assert (c.method, c.model.name, c.data.name, c.data.image_size, c.total_epochs) == (
      method, 'resnet50', 'caltech_birds2011', 112, epochs)
  assert c.optimizer.name == 'sgd' and c.optimizer.base_lr == pytest.approx(lr) and not c.stages
  multi = module.get_config('res=56to112to224,arch=no_conv5')
  assert [s['image_size'] for s in multi.stages] == [56, 112, 224] and multi.model.num_stages == 3
  assert [s['epochs'] for s in multi.stages] == [epochs, 50, 50] and multi.data.image_size == 224
  with pytest.raises(ValueError, match='res='):
    module.get_config('res=300')


@pytest.mark.parametrize('module, arch, hidden, width', [
    (s3l_moco_cub, 'full', 0, 2048), (s3l_moco_cub, 'no_conv5', 0, 1024), (s3l_moco_cub, 'no_conv5', 512, 512),
    (s3l_simclr_cub, 'no_conv5', 0, 1024)])
def test_projector_hidden_width_follows_the_encoder_unless_set(module, arch, hidden, width):
  # S3L's MoCo and SimCLR builders: Linear(dim_mlp, dim_mlp), dim_mlp the encoder's output width.
  c = module.get_config(f'arch={arch}')
  c.model.head.hidden_dim = hidden or c.model.head.hidden_dim
  model = nnx.eval_shape(lambda: methods.get_method(c).build_model(c, in_channels=3, rngs=nnx.Rngs(0)))
  projector = model.online.projector if module is s3l_moco_cub else model.projector
  encoder_width = 2048 if arch == 'full' else 1024
  assert projector.hidden[0].kernel.shape == (encoder_width, width)
  assert projector.out.kernel.shape == (width, 128)


# ----------------------------------------------------------------------------------------------- trainer
def _runlocal():
  c = s3l_moco_cub.get_config('runlocal,res=56to112,arch=no_conv5')
  c.data.subset_per_class = 5          # small data: 20 of the 36 mock images, 5 per class (1 step per epoch)
  c.log_every_steps = 1
  c.eval.compare_random_init = False   # the trainer's own tests cover it
  return c


@pytest.fixture(scope='module')
def pretrained(mock_tfds, tmp_path_factory):
  """S3L's MoCo :runlocal recipe on mock CUB: 56 -> 112 px (16 -> 24 here), no last stage, 8 devices."""
  workdir = tmp_path_factory.mktemp('s3l') / 'eight'
  results = train.train_and_evaluate(_runlocal(), workdir, devices=jax.devices())
  assert 0.0 <= results['knn_top1'] <= 1.0 and 0.0 <= results['linear_top1'] <= 1.0
  assert np.isfinite(runs.logged(workdir)).all()
  return workdir


def test_two_stage_run_restarts_the_lr_keeps_state_and_resumes_exactly(pretrained, tmp_path, monkeypatch):
  c = _runlocal()
  assert runs.logged(pretrained, 'image_size') == [16, 16, 24, 24]
  np.testing.assert_allclose(runs.logged(pretrained, 'lr'), [0.03, 0.015, 0.03, 0.015], rtol=1e-6)
  states = runs.checkpoints(pretrained)
  boundary, end = states[2], states[4]
  assert int(boundary['step']) == 2 and int(end['step']) == 4
  # At the boundary stage 2's optimizer is untouched (zero momentum, step count 0); during stage 2, stage 1's
  # optimizer state stays exactly as stage 1 left it.
  assert all(not np.any(x) for x in jax.tree.leaves(boundary['opt_state']['segments'][1]))
  for a, b in zip(jax.tree.leaves(end['opt_state']['segments'][0]),
                  jax.tree.leaves(boundary['opt_state']['segments'][0])):
    np.testing.assert_array_equal(a, b)

  c.eval.final = False
  runs.preempt_after_step_3(c, tmp_path / 'resumed', monkeypatch)  # stopped inside stage 2
  train.train_and_evaluate(c, tmp_path / 'resumed')
  resumed = runs.final_state(tmp_path / 'resumed')
  assert jax.tree.structure(resumed) == jax.tree.structure(end)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(end)):
    np.testing.assert_array_equal(a, b)  # bitwise: params, both optimizer segments, queue, key encoder


# ----------------------------------------------------------------------------------------------- transfer
def _encoder_arrays(model) -> dict:
  return {path: np.array(v[...]) for path, v in nnx.to_flat_state(nnx.state(model.encoder,
                                                                            (nnx.Param, nnx.BatchStat)))}


def test_transfer_warm_up_and_fine_tune_in_one_command(mock_tfds, pretrained, monkeypatch):
  run_config, model = build_from_checkpoint(pretrained)
  loaded = _encoder_arrays(model)
  full = ml_collections.ConfigDict(run_config.to_dict())
  full.model.num_stages = 0
  fresh = _encoder_arrays(models.build_compiled(
      lambda: methods.get_method(full).build_model(full, in_channels=3, rngs=nnx.Rngs(5))))
  calls = []
  original = finetune.fine_tune

  def recording(config, backbone, cfg, **kw):
    before = _encoder_arrays(backbone)
    scores, classifier = original(config, backbone, cfg, **kw)
    calls.append((cfg, kw, before, _encoder_arrays(classifier.backbone)))
    return scores, classifier

  monkeypatch.setattr(finetune, 'fine_tune', recording)
  cfg = finetune.default_config()
  cfg.update(preset='s3l', image_size=16, batch_size=16, eval_batch_size=32, epochs=1, warmup_epochs=1,
             bn_group_size=8, seed=5)
  results = finetune.evaluate_finetune(pretrained, cfg)

  (warm_cfg, warm_kw, start, warmed), (main_cfg, main_kw, main_start, tuned) = calls
  assert (warm_cfg.frozen_stages, warm_cfg.schedule, warm_cfg.mixup_alpha) == (3, 'constant', 0)
  assert warm_cfg.lr == 0.1 and warm_cfg.epochs == 1
  assert warm_kw == {'update_frozen_stats': True, 'what': 'conv5 warm-up'}  # 'what': its progress lines
  assert main_cfg.frozen_stages == -1 and not main_kw
  assert main_cfg.mixup_alpha == 1.0 and main_cfg.crop == 'resize_crop' and main_cfg.epochs == 1
  new = [p for p in start if p[:2] == ('stages', 3)]
  assert new and set(start) == set(loaded) | set(new)
  for path, value in loaded.items():       # every pretrained variable in its place
    np.testing.assert_array_equal(start[path], value, err_msg=str(path))
  for path in new:                         # stage 4: the new random initialisation, not pretrained
    np.testing.assert_array_equal(start[path], fresh[path], err_msg=str(path))
  old_params = [p for p in loaded if p[-1] in ('kernel', 'scale', 'bias')]
  for path in old_params:                  # the warm-up never changes stem and stages 1-3
    np.testing.assert_array_equal(warmed[path], start[path], err_msg=str(path))
  assert any(not np.array_equal(warmed[p], start[p]) for p in loaded if p[-1] == 'mean')  # BN stats follow
  assert all(not np.array_equal(warmed[p], start[p]) for p in new if p[-1] == 'kernel')
  for path in start:                       # fine-tuning starts from the warmed-up encoder, trains it all
    np.testing.assert_array_equal(main_start[path], warmed[path])
  assert any(not np.array_equal(tuned[p], warmed[p]) for p in old_params)
  saved = json.loads((pretrained / 'results.json').read_text())['finetune']
  assert saved['top1'] == results['top1'] and 0 <= results['best_top1'] <= 1
  assert 'warm-up' in saved['protocol'] and len(results['warmup']['top1_per_epoch']) == 1
