"""RepMix: both loss forms vs numpy, the batch layout, partners, two BatchNorm passes, recipes, devices."""
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage, stats
import tensorflow_datasets as tfds

from configs import repmix_cifar10, repmix_digits, repmix_imagenet, repmix_stl10, simclr_digits
from ssl_jax import config_schema, data, losses, methods, optim, train
from ssl_jax.data import augment
from ssl_jax.errors import UserError
from ssl_jax.evaluate import linear_cli as linear
from ssl_jax.methods import common, repmix

import runs


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


# ----------------------------------------------------------------------------------------------- losses
def _numpy_p(z, tau):
  """p_j of every row, computed as the official code does: column sums of exp(sim / τ) minus exp(1 / τ)."""
  b = z.shape[0]
  rows = z.reshape(2 * b, -1).astype(np.float64)  # row 2i + k: view k of example i
  rows /= np.linalg.norm(rows, axis=1, keepdims=True)
  e = np.exp(rows @ rows.T / tau)
  denominator = e.sum(axis=0) - np.exp(1 / tau)
  positive = np.array([e[j ^ 1, j] for j in range(2 * b)])
  return positive / denominator


@pytest.mark.parametrize('tau', [0.5, 0.2])
def test_both_loss_forms_match_numpy(tau):
  z = np.random.default_rng(0).normal(size=(6, 2, 5)).astype(np.float32)
  p = _numpy_p(z, tau)
  log_of_mean, mean_of_log = -np.log(p.mean()), -np.log(p).mean()
  cfg = lambda reduction: ml_collections.ConfigDict(dict(temperature=tau, reduction=reduction, chunk_size=0,
                                                       supcon_form='out', no_positive='exclude'))
  objective = lambda reduction: common.contrastive_objective(z, None, cfg(reduction))
  np.testing.assert_allclose(losses.nt_xent_log_of_mean(z, temperature=tau), log_of_mean, rtol=1e-5)
  np.testing.assert_allclose(objective('log_of_mean'), log_of_mean, rtol=1e-5)
  np.testing.assert_allclose(objective('mean_of_log'), mean_of_log, rtol=1e-5)
  assert log_of_mean < mean_of_log - 0.01  # Jensen: really a different loss
  # The log_of_mean form takes two views and no labels: a supervised config is refused before any compute.
  with pytest.raises(UserError, match='two views and no labels'):
    common.check_contrastive(ml_collections.ConfigDict(dict(loss=cfg('log_of_mean'), num_views=2)),
                             use_labels=True)


# ----------------------------------------------------------------------------------------------- layout
class _OneHot:
  """A stand-in model: the projection of an image is the one-hot of the id written in its pixels."""

  def __call__(self, images, *, train, return_features=False):
    ids = jnp.round(images.mean(axis=(1, 2, 3)) * 255 / 20).astype(jnp.int32)
    z = jax.nn.one_hot(ids, 8)
    return (z, 2 * z) if return_features else z


def _identity_augment():
  cfg = augment.default_config()
  cfg.update(crop=False, flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0)
  return cfg


def _ctx(config, resolution=4):
  return methods.StepContext(config=config, resolution=resolution, step=jnp.int32(0), total_steps=1, extra={})


def test_batch_layout_and_positive_pairs():
  config = repmix_cifar10.get_config('runlocal')
  config.augment = _identity_augment()
  config.repmix.mix_weight = 0.25
  # Anchors carry ids 0, 1, 2; partners 4, 0, 5: anchor 1's partner is anchor 0's image.
  x_ids, r_ids = np.array([0, 1, 2]), np.array([4, 0, 5])
  img = lambda ids: np.broadcast_to((20 * ids).astype(np.uint8)[:, None, None, None], (3, 4, 4, 3)).copy()
  batch = {'image': img(x_ids), 'partner': img(r_ids), 'label': np.zeros(3, np.int32)}
  views = repmix.make_views(jax.random.key(0), batch, _ctx(config))
  assert views.shape == (3, 4, 4, 4, 3)
  # n(x), n(r), a(r), a'(x) with an identity augmentation: x, r, r, x.
  for v, ids in enumerate([x_ids, r_ids, r_ids, x_ids]):
    np.testing.assert_allclose(views[:, v], img(ids) / 255.0, atol=1e-6)

  z_clean, z_aug, _ = repmix.encode_branches(_OneHot(), views)
  z = repmix.mix(z_clean, z_aug, config.repmix.mix_weight)
  e = np.eye(8)
  expected = np.stack([0.25 * e[x_ids] + 0.75 * e[r_ids], 0.25 * e[r_ids] + 0.75 * e[x_ids]], axis=1)
  np.testing.assert_allclose(z, expected)
  # The loss pairs rows (i, 0) and (i, 1): the same as the numpy loss on that layout.
  loss, (metrics, _, features) = repmix.loss_fn(_OneHot(), views, batch, jax.random.key(0), _ctx(config))
  np.testing.assert_allclose(loss, -np.log(_numpy_p(expected, 0.5).mean()), rtol=1e-5)
  np.testing.assert_allclose(metrics['pos_cosine'], np.mean([0.6] * 3), rtol=1e-5)  # (2·0.1875) / 0.625
  np.testing.assert_allclose(features, 2 * e[x_ids])  # the probe reads a'(x)


def test_augmented_views_are_independent_draws_and_clean_views_untouched():
  config = repmix_cifar10.get_config('runlocal')
  config.augment = _identity_augment()
  config.augment.flip_prob = 0.5
  images = np.random.default_rng(0).integers(0, 256, (16, 4, 4, 3), np.uint8)
  batch = {'image': images, 'partner': images, 'label': np.zeros(16, np.int32)}
  views = np.asarray(repmix.make_views(jax.random.key(1), batch, _ctx(config)))
  np.testing.assert_allclose(views[:, :2], np.stack([images, images], axis=1) / 255.0, atol=1e-6)
  # a(r) and a'(x) of the same image, with independent keys: each flipped or not, and not alike.
  for v in (2, 3):
    plain = np.isclose(views[:, v], images / 255.0, atol=1e-6).all(axis=(1, 2, 3))
    mirrored = np.isclose(views[:, v], images[:, :, ::-1] / 255.0, atol=1e-6).all(axis=(1, 2, 3))
    assert (plain | mirrored).all() and 0 < mirrored.sum() < 16
  same = np.isclose(views[:, 2], views[:, 3], atol=1e-6).all(axis=(1, 2, 3))
  assert 0 < same.sum() < 16


def test_beta_mix_weights():
  cfg = ml_collections.ConfigDict(dict(mix_weight=0.5, mix_beta_alpha=2.0))
  lam = np.asarray(repmix.mix_weights(jax.random.key(0), 4000, cfg))
  assert lam.shape == (4000, 1, 1) and ((0 < lam) & (lam < 1)).all()
  assert abs(lam.mean() - 0.5) < 0.02 and abs(lam.var() - 0.05) < 0.006  # Beta(2, 2): var 1/20
  cfg.mix_beta_alpha, cfg.mix_weight = 0.0, 0.3
  assert repmix.mix_weights(jax.random.key(0), 4, cfg) == 0.3


# ----------------------------------------------------------------------------------------------- batch stats
def test_two_passes_keep_separate_batch_statistics():
  config = repmix_cifar10.get_config('runlocal')
  config.model.num_stages = 1  # any BatchNorm model shows it; a short one runs fast
  model = repmix.build_model(config, in_channels=3, rngs=nnx.Rngs(0))
  views = jax.random.uniform(jax.random.key(0), (4, 4, 16, 16, 3))
  clean, aug = views[:, :2].reshape(8, 16, 16, 3), views[:, 2:].reshape(8, 16, 16, 3)
  momentum = model.encoder.stem_bn.momentum
  old = np.asarray(model.encoder.stem_bn.mean[...])

  pair = nnx.clone(model)
  z_clean, z_aug, _ = repmix.encode_branches(pair, views)
  np.testing.assert_allclose(z_clean.reshape(8, -1), nnx.clone(model)(clean, train=True), atol=1e-5)
  np.testing.assert_allclose(z_aug.reshape(8, -1), nnx.clone(model)(aug, train=True), atol=1e-5)
  joint = nnx.clone(model)(jnp.concatenate([clean, aug]), train=True)
  assert not np.allclose(z_clean.reshape(8, -1), joint[:8], atol=1e-3)
  # Both passes update the same running statistics, clean first: old·m² + μ_clean·m(1 - m) + μ_aug·(1 - m).
  stem = lambda x: model.encoder.stem_conv(augment.normalize(x, model.mean, model.std))
  mu = lambda x: np.asarray(stem(x)).mean(axis=(0, 1, 2))
  expected = momentum ** 2 * old + momentum * (1 - momentum) * mu(clean) + (1 - momentum) * mu(aug)
  np.testing.assert_allclose(pair.encoder.stem_bn.mean[...], expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------- partners
def _indexed(n):
  """Example i has label i and pixels (i // 256, i % 256), so a batch shows which examples it holds."""
  ids = np.arange(n)
  images = np.stack([ids // 256, ids % 256], axis=1).astype(np.uint8)[:, None, :, None]
  return data.InMemorySource(images, ids, num_classes=n)


def _ids(images):
  return images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 1, 0]


def test_partners_are_uniform_fresh_and_independent_of_the_anchor_batch():
  n, b, epochs = 40, 8, 400
  steps = n // b
  batches = _take(_indexed(n).train_batches(global_batch_size=b, seed=3, partners=True), steps * epochs)
  anchors = np.stack([bt['label'] for bt in batches]).reshape(epochs, n)
  mates = np.stack([_ids(bt['partner']) for bt in batches]).reshape(epochs, n)
  assert not np.array_equal(mates[0], mates[1])  # fresh every epoch
  # Uniform over the whole split for every anchor: counts of (anchor, partner) pairs, 10 expected per cell.
  table = np.zeros((n, n))
  np.add.at(table, (anchors.ravel(), mates.ravel()), 1)
  assert stats.chisquare(table.ravel()).pvalue > 1e-3
  # Independent of the anchor's batch: the batch of the same epoch holding the partner is uniform, whatever
  # the anchor's (it is the anchor's own batch a fifth of the time, not always).
  batch_of = np.argsort(anchors, axis=1) // b          # [epoch, example] -> its batch in that epoch
  mate_batch = np.take_along_axis(batch_of, mates, axis=1)
  anchor_batch = np.broadcast_to(np.arange(n) // b, (epochs, n))
  cells = np.zeros((steps, steps))
  np.add.at(cells, (anchor_batch.ravel(), mate_batch.ravel()), 1)
  assert stats.chisquare(cells.ravel()).pvalue > 1e-3
  assert abs(np.trace(cells) / cells.sum() - 1 / steps) < 0.02


def test_partners_resume_exactly_and_do_not_depend_on_processes():
  source = _indexed(40)
  fresh = _take(source.train_batches(global_batch_size=8, seed=1, partners=True), 12)
  resumed = _take(source.train_batches(global_batch_size=8, seed=1, start_step=7, partners=True), 5)
  for a, b in zip(fresh[7:], resumed):
    np.testing.assert_array_equal(a['partner'], b['partner'])
    np.testing.assert_array_equal(a['image'], b['image'])
  halves = [_take(source.train_batches(global_batch_size=8, seed=1, partners=True, process_index=p,
                                           process_count=2), 12) for p in range(2)]
  for whole, one, two in zip(fresh, *halves):
    np.testing.assert_array_equal(whole['partner'], np.concatenate([one['partner'], two['partner']]))
  assert 'partner' not in next(source.train_batches(global_batch_size=8, seed=1))


def _jpeg_folder(root):
  """root/train/class<c>/<i>.jpg: 8 JPEGs of different sizes, each filled with its own grey level."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for i in range(8):
    folder = root / 'train' / f'class{i % 2}'
    folder.mkdir(parents=True, exist_ok=True)
    image = np.full((30 + 3 * i, 40 - 2 * i, 3), 25 * i + 10, np.uint8)
    (folder / f'{i}.jpg').write_bytes(tf.io.encode_jpeg(image, quality=100).numpy())


def test_tfds_partners_fixed_size_and_host_crops(tmp_path):
  with tfds.testing.mock_data(num_examples=32, data_dir=str(tmp_path / 'tfds')):
    cfg = repmix_cifar10.get_config('runlocal').data
    source = data.get_source(cfg, split='train', train=True)
    fresh = _take(source.train_batches(global_batch_size=8, seed=0, partners=True), 6)
    resumed = _take(source.train_batches(global_batch_size=8, seed=0, start_step=3, partners=True), 3)
  assert fresh[0]['partner'].shape == fresh[0]['image'].shape == (8, 32, 32, 3)
  for a, b in zip(fresh[3:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  anchors = np.concatenate([b['image'] for b in fresh[:4]]).reshape(32, -1)
  partners = np.concatenate([b['partner'] for b in fresh[:4]]).reshape(32, -1)
  # One epoch: the partners are the split again, in another order.
  assert sorted(map(bytes, anchors)) == sorted(map(bytes, partners)) and not np.array_equal(anchors, partners)

  _jpeg_folder(tmp_path)
  cfg = ml_collections.ConfigDict(dict(cfg.to_dict(), name='image_folder', root=str(tmp_path), image_size=16))
  source = data.get_source(cfg, split='train', train=True)
  batch = next(source.train_batches(global_batch_size=4, seed=0, partners=True))
  assert batch['image'].shape == batch['partner'].shape == (4, 2, 16, 16, 3)
  # View 0 is the clean view: exactly the evaluation crop of some image of the split.
  clean = {bytes(im) for b in source.eval_batches(global_batch_size=8) for im in b['image']}
  assert all(bytes(im) in clean for im in np.concatenate([batch['image'][:, 0], batch['partner'][:, 0]]))


# ----------------------------------------------------------------------------------------------- pieces
def test_fixed_horizontal_blur_matches_kornia_and_scipy():
  image = jax.random.uniform(jax.random.key(0), (11, 11, 3))
  out = augment.fixed_gaussian_blur(image, (0.1, 2.0), kernel_size=3)
  taps = np.exp(-0.5 * (np.arange(-1, 2) / 2.0) ** 2)
  taps /= taps.sum()
  np.testing.assert_allclose(taps, [0.319, 0.362, 0.319], atol=1e-3)  # the reference notes' x-kernel
  # numpy/jax "reflect" (edge pixel not repeated) is scipy's "mirror"; at σ 0.1 the vertical pass is a no-op.
  np.testing.assert_allclose(out, ndimage.correlate1d(np.asarray(image), taps, 1, mode='mirror'), atol=1e-6)
  np.testing.assert_allclose(augment.fixed_gaussian_blur(image, (0.0, 0.0), kernel_size=9), image)
  assert [augment.fixed_blur_kernel_size(0.1, s) for s in (16, 24, 32, 64, 96, 224)] == [1, 1, 3, 5, 9, 21]
  with pytest.raises(ValueError, match='kernel_size'):  # an even kernel would shift the image
    augment.fixed_gaussian_blur(image, (0.1, 2.0), kernel_size=4)
  # Recipes apply it (here alone): away from the border the view is the blurred image.
  cfg = _identity_augment()
  cfg.fixed_blur_sigma, cfg.blur_kernel_frac = (0.1, 2.0), 0.3  # 3 taps at 11 px
  view = augment.augment_image(jax.random.key(1), image, cfg, 11)
  np.testing.assert_allclose(view[:, 1:-1], out[:, 1:-1], atol=1e-6)


def test_periodic_cosine_schedule_is_the_codes():
  cfg = repmix_cifar10.get_config().optimizer
  schedule = optim.create_schedule(cfg, batch_size=1024, total_steps=9600, steps_per_epoch=48)
  lr = lambda t: float(schedule(jnp.int32(t)))
  # T_max = 200 epochs counted as steps: 0.015·(1 + cos(π t / 200)), period 400 steps.
  for t in (0, 50, 100, 200, 399, 400, 9599):
    assert lr(t) == pytest.approx(0.015 * (1 + np.cos(np.pi * t / 200)), abs=1e-7)
  cfg.schedule = 'exponential'
  with pytest.raises(ValueError, match='schedule'):  # a config's is refused by the schema first
    optim.create_schedule(cfg, batch_size=1024, total_steps=10, steps_per_epoch=5)


def test_linear_eval_preset():
  run = ml_collections.ConfigDict(dict(batch_size=1024))
  cfg = linear.default_config()
  cfg.preset, cfg.epochs = 'repmix', 7  # a value given on the command line wins over the preset
  out = linear.apply_preset(cfg, run)
  assert (out.optimizer, out.lr, out.weight_decay, out.batch_size, out.standardize, out.protocol,
          out.epochs) == ('adamw', 0.02, 0.0, 1024, False, 'frozen_features', 7)
  assert linear.apply_preset(linear.default_config(), run) == linear.default_config()
  cfg.preset = 'nope'
  with pytest.raises(UserError, match='preset'):
    linear.apply_preset(cfg, run)


def _flat(d, prefix=''):
  """{'a.b': value} of a nested dict."""
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
  return out


@pytest.mark.parametrize('module, arg', [
    (repmix_cifar10, ''), (repmix_cifar10, 'dataset=cifar100'), (repmix_stl10, ''), (repmix_imagenet, ''),
    (repmix_digits, 'recipe=official')])
def test_recipes_and_their_simclr_baselines(module, arg):
  c = module.get_config(arg)
  baseline = module.get_config(','.join(filter(None, [arg, 'method=simclr'])))
  flat, flat_baseline = _flat(c.to_dict()), _flat(baseline.to_dict())
  diff = {k for k, v in flat.items() if flat_baseline[k] != v}
  assert c.method == 'repmix' and diff == {'method'}  # the baseline differs only in the method
  assert (c.optimizer.name, c.optimizer.base_lr, c.optimizer.weight_decay, c.optimizer.schedule,
          c.loss.temperature, c.loss.reduction, c.model.head.activation, c.model.head.hidden_dim) == (
              'adamw', 0.03, 5e-4, 'periodic_cosine', 0.5, 'log_of_mean', 'leaky_relu',
              256 if module is repmix_digits else 512)
  assert module.get_config(','.join(filter(None, [arg, 'runlocal']))).batch_size <= 32
  if module is repmix_cifar10:
    assert (c.model.name, c.batch_size, c.total_epochs, c.data.name) == (
        'resnet20', 1024, 200.0, arg.partition('=')[2] or 'cifar10')
    assert c.augment.fixed_blur_sigma == (0.1, 2.0) and c.augment.brightness == 0.8
    simclr_aug = module.get_config('augment=simclr').augment
    assert simclr_aug.fixed_blur_sigma == (0.0, 0.0) and simclr_aug.brightness == 0.4


def test_digits_baseline_is_the_quickstart():
  quickstart = _flat(simclr_digits.get_config().to_dict())
  baseline = _flat(repmix_digits.get_config('method=simclr').to_dict())
  assert {k for k, v in baseline.items() if quickstart[k] != v} == {'eval_every_steps'}
  assert {k for k, v in _flat(repmix_digits.get_config().to_dict()).items() if baseline[k] != v} == {'method'}


def test_bad_repmix_settings_are_user_errors():
  c = repmix_cifar10.get_config('runlocal')
  c.repmix.mix_weight = 1.5
  with pytest.raises(UserError, match='repmix.mix_weight=1.5'):
    config_schema.validate(c)


# ----------------------------------------------------------------------------------------------- trainer
def test_runlocal_config_trains_end_to_end(tmp_path):
  # One device vs eight (partners included): tests/test_methods.py.
  c = repmix_cifar10.get_config('runlocal')
  c.total_steps = 2
  c.log_every_steps = 1
  c.eval.final = False  # the frozen-encoder evaluation is the same as SimCLR's, tested with the trainer
  with tfds.testing.mock_data(num_examples=64, data_dir=str(tmp_path / 'tfds')):
    train.train_and_evaluate(c, tmp_path / 'run')
  assert np.isfinite(runs.logged(tmp_path / 'run')).all()
  # The code's schedule: T_max = the run's epoch count (here 1) in steps, so 0.03 then 0.
  np.testing.assert_allclose(runs.logged(tmp_path / 'run', 'lr'), [0.03, 0.0], atol=1e-8)
  assert all(0 <= p <= 1 for p in runs.logged(tmp_path / 'run', 'probe_top1'))
