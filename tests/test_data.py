"""The host input pipeline: epoch order, exact resume, process slices, eval padding, digits, tfds sources."""
import os
import pathlib
import re
import subprocess
import sys
import types

import ml_collections
import numpy as np
import pytest

from ssl_jax import data
from ssl_jax.data import augment, multicrop, sources
from ssl_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _indexed_memory(n=50, shape=(4, 4, 1)):
  """Example i carries label i and pixel value i, so batches reveal which examples they hold."""
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, *shape)).copy()
  return data.InMemorySource(images, np.arange(n), num_classes=n)


SOURCES = {
    'memory': _indexed_memory,
    'synthetic': lambda: data.SyntheticSource(50, (6, 5, 3), num_classes=7, seed=3),
}


# In-memory and synthetic sources: no TensorFlow.

@pytest.mark.parametrize('kind', SOURCES)
def test_batch_shapes_and_dtypes(kind):
  src = SOURCES[kind]()
  batch = next(src.train_batches(global_batch_size=8, seed=0))
  assert batch['image'].shape == (8, *src.image_shape) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
  assert 0 <= batch['label'].min() and batch['label'].max() < src.num_classes
  assert src.steps_per_epoch(8) == 6


def test_epoch_order_depends_only_on_seed_and_epoch_and_covers_every_example_once():
  src = _indexed_memory(n=48)
  labels = np.concatenate([b['label'] for b in _take(src.train_batches(global_batch_size=8, seed=5), 18)])
  epochs = labels.reshape(3, 48)
  for e in range(3):
    np.testing.assert_array_equal(np.sort(epochs[e]), np.arange(48))
    np.testing.assert_array_equal(epochs[e], src.epoch_order(5, e))
  assert not np.array_equal(epochs[0], epochs[1])
  # A new source object with the same seed gives the same order; another seed does not.
  again = _take(_indexed_memory(48).train_batches(global_batch_size=8, seed=5), 6)
  again = np.concatenate([b['label'] for b in again])
  np.testing.assert_array_equal(again, epochs[0])
  other = np.concatenate([b['label'] for b in _take(src.train_batches(global_batch_size=8, seed=6), 6)])
  assert not np.array_equal(other, epochs[0])


@pytest.mark.parametrize('kind', SOURCES)
@pytest.mark.parametrize('start', [4, 6, 13])  # mid-epoch, on a boundary, a later epoch (6 steps per epoch)
def test_resume_equals_the_tail_of_a_fresh_iterator(kind, start):
  src = SOURCES[kind]()
  fresh = _take(src.train_batches(global_batch_size=8, seed=1), 20)
  resumed = _take(src.train_batches(global_batch_size=8, seed=1, start_step=start), 20 - start)
  _same_batches(fresh[start:], resumed)


@pytest.mark.parametrize('kind', SOURCES)
def test_process_slices_concatenate_to_the_global_batch(kind):
  src = SOURCES[kind]()
  whole = _take(src.train_batches(global_batch_size=8, seed=2), 8)
  parts = [_take(src.train_batches(global_batch_size=8, seed=2, process_index=p, process_count=2), 8)
           for p in range(2)]
  for step in range(8):
    assert parts[0][step]['image'].shape[0] == 4
    for k in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([parts[0][step][k], parts[1][step][k]]), whole[step][k])


def test_eval_batches_pad_the_last_batch_and_mask_it():
  src = _indexed_memory(n=50)
  batches = list(src.eval_batches(global_batch_size=16))
  assert len(batches) == 4 and all(b['image'].shape == (16, 4, 4, 1) for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  assert mask.dtype == bool and mask.sum() == 50 and not mask[50:].any()
  np.testing.assert_array_equal(labels[:50], np.arange(50))
  assert (labels[50:] == -1).all() and not batches[-1]['image'][2:].any()
  halves = [list(src.eval_batches(global_batch_size=16, process_index=p, process_count=2)) for p in range(2)]
  for b, (lo, hi) in enumerate(zip(*halves)):
    for k in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(np.concatenate([lo[k], hi[k]]), batches[b][k])


def test_bad_batch_sizes_are_user_errors():
  src = _indexed_memory(n=50)
  with pytest.raises(UserError, match='larger than the 50 examples'):
    src.train_batches(global_batch_size=64, seed=0)
  with pytest.raises(UserError, match='multiple of the 3 processes'):
    src.train_batches(global_batch_size=8, seed=0, process_count=3)
  with pytest.raises(UserError, match='multiple'):
    src.eval_batches(global_batch_size=7, process_count=2)
  with pytest.raises(UserError, match='uint8'):
    data.InMemorySource(np.zeros((4, 2, 2, 1), np.float32), np.zeros(4))


def test_synthetic_examples_are_pure_functions_of_seed_and_index():
  src = data.SyntheticSource(40, (8, 8, 3), num_classes=5, seed=0)
  images, labels = src._gather(np.array([7, 3]))
  images_again, labels_again = src._gather(np.array([3, 9, 7]))
  np.testing.assert_array_equal(images[0], images_again[2])
  assert labels[1] == labels_again[0]
  other = data.SyntheticSource(40, (8, 8, 3), num_classes=5, seed=1)._gather(np.array([7]))[0]
  assert not np.array_equal(other[0], images[0])
  # Uniform bytes and labels: the normalisation constants in IMAGE_STATS hold.
  many, many_labels = src._gather(np.arange(40))
  assert abs(many.mean() / 255 - 0.5) < 0.02 and abs(many.std() / 255 - 0.2898) < 0.01
  assert set(many_labels) == set(range(5))


def test_subset_indices():
  labels = np.repeat(np.arange(4), 10)
  per_class = sources.subset_indices(40, labels, seed=0, per_class=3)
  assert len(per_class) == 12 and (np.bincount(labels[per_class]) == 3).all()
  np.testing.assert_array_equal(per_class, sources.subset_indices(40, labels, seed=0, per_class=3))
  assert not np.array_equal(per_class, sources.subset_indices(40, labels, seed=1, per_class=3))
  some = sources.subset_indices(40, None, seed=0, num=7)
  assert len(set(some)) == 7 and (np.diff(some) > 0).all() and some.max() < 40
  with pytest.raises(UserError):
    sources.subset_indices(40, labels, seed=0, per_class=11)
  with pytest.raises(UserError):
    sources.subset_indices(40, labels, seed=0)


def _cfg(**kw):
  base = dict(name='synthetic', data_dir='', download=True, root='', image_size=16, shuffle_buffer=1000,
              synthetic_examples=32, synthetic_shape=(8, 8, 3), synthetic_classes=4, subset_num=0,
              subset_per_class=0, subset_seed=0)
  return types.SimpleNamespace(**{**base, **kw})


def test_get_source_synthetic_memory_and_unknown_names():
  train = data.get_source(_cfg(), split='train', train=True)
  test = data.get_source(_cfg(), split='test', train=False)
  assert train.num_examples == 32 and train.image_shape == (8, 8, 3) and train.num_classes == 4
  assert not np.array_equal(train._gather(np.arange(2))[0], test._gather(np.arange(2))[0])
  registered = data.register_memory_dataset('tiny_test', np.zeros((10, 4, 4, 3), np.uint8), np.arange(10) % 2)
  assert data.get_source(_cfg(name='tiny_test'), split='train', train=True) is registered
  assert registered.num_classes == 2
  with pytest.raises(UserError, match="no split 'test'"):
    data.get_source(_cfg(name='tiny_test'), split='test', train=False)
  with pytest.raises(UserError, match='mnist3d.*cifar10.*tiny_test'):
    data.get_source(_cfg(name='mnist3d'), split='train', train=True)
  with pytest.raises(UserError, match='built-in'):
    data.register_memory_dataset('cifar10', np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2))


def test_image_stats():
  assert data.image_stats('cifar10', 3) == data.IMAGE_STATS['cifar10']
  assert data.image_stats('digits', 1) == ((0.1553,), (0.2774,))
  assert data.image_stats('synthetic', 3)[0] == (0.5, 0.5, 0.5)
  with pytest.raises(UserError, match='channels'):
    data.image_stats('cifar10', 1)


def test_imagenet100_class_list():
  wnids = (ROOT / 'ssl_jax' / 'data' / 'imagenet100.txt').read_text().split()
  assert len(wnids) == 100 == len(set(wnids))
  assert all(re.fullmatch(r'n\d{8}', w) for w in wnids)
  assert wnids[0] == 'n02869837' and wnids[-1] == 'n02090622'  # CMC's order sets the labels


def test_memory_and_synthetic_need_no_tensorflow():
  script = (
      "import sys; sys.modules['tensorflow'] = None\n"
      "import numpy as np, ssl_jax, ssl_jax.data as d\n"
      "src = d.InMemorySource(np.zeros((8, 4, 4, 3), np.uint8), np.arange(8))\n"
      "it = src.train_batches(global_batch_size=4, seed=0)\n"
      "assert [next(it)['image'].shape for _ in range(3)] == [(4, 4, 4, 3)] * 3\n"
      "syn = d.SyntheticSource(8, (4, 4, 1), 2)\n"
      "assert next(syn.train_batches(global_batch_size=4, seed=0, start_step=5))['label'].shape == (4,)\n"
      "assert len(list(syn.eval_batches(global_batch_size=3))) == 3\n"
      "print('ok')\n")
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == 'ok'


# The digits builder and tfds sources (TensorFlow from here on).

@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
  from ssl_jax.data import digits
  path = tmp_path_factory.mktemp('tfds')
  digits.prepare_digits(str(path))
  return str(path)


def _split_images(data_dir, split):
  import tensorflow_datasets as tfds
  ds = tfds.load('ssl_digits', split=split, data_dir=data_dir)
  batch = next(iter(tfds.as_numpy(ds.batch(2000))))
  return batch['image'], batch['label']


def _sorted_rows(images):
  flat = images.reshape(len(images), -1)
  return flat[np.lexsort(flat.T[::-1])]


def test_digits_builder_splits_and_presentation(digits_dir):
  from ssl_jax.data import digits
  train_x, train_y = _split_images(digits_dir, 'train')
  test_x, test_y = _split_images(digits_dir, 'test')
  assert train_x.shape == (1497, 24, 24, 1) and test_x.shape == (300, 24, 24, 1) and train_x.dtype == np.uint8
  assert (np.bincount(test_y) == 30).all() and set(train_y) == set(range(10))
  # The prepared splits hold exactly the rendered digits of disjoint index sets.
  rendered, labels = digits.render_digits()
  idx = digits.split_indices(labels)
  assert not set(idx['train']) & set(idx['test'])
  np.testing.assert_array_equal(_sorted_rows(test_x), _sorted_rows(rendered[idx['test']]))
  np.testing.assert_array_equal(_sorted_rows(train_x), _sorted_rows(rendered[idx['train']]))
  # Size and position vary: the bounding boxes of the ink differ from digit to digit.
  boxes = []
  for im in train_x[:200, ..., 0]:
    rows, cols = np.nonzero(im.any(1))[0], np.nonzero(im.any(0))[0]
    boxes.append((rows[0], cols[0], rows[-1] - rows[0] + 1))
  tops, lefts, heights = np.array(boxes).T
  assert len(set(heights)) >= 5 and heights.min() >= 8 and heights.max() <= 20
  assert len(set(tops)) >= 5 and len(set(lefts)) >= 5


def test_digits_source_train_resume_across_epochs(digits_dir):
  from ssl_jax.data import tfds_source
  src = tfds_source.TfdsSource('digits', 'train', data_dir=digits_dir)
  assert (src.num_examples, src.num_classes, src.image_shape) == (1497, 10, (24, 24, 1))
  assert src.steps_per_epoch(256) == 5
  fresh = _take(src.train_batches(global_batch_size=256, seed=0), 8)
  assert fresh[0]['image'].shape == (256, 24, 24, 1) and fresh[0]['image'].dtype == np.uint8
  assert fresh[0]['label'].dtype == np.int32
  _same_batches(fresh[3:], _take(src.train_batches(global_batch_size=256, seed=0, start_step=3), 5))
  # An epoch holds distinct examples; the next epoch is a different order.
  epoch0 = np.concatenate([b['image'] for b in fresh[:5]])
  assert len(np.unique(epoch0.reshape(len(epoch0), -1), axis=0)) == 1280
  assert not np.array_equal(fresh[0]['image'], fresh[5]['image'])
  # Two processes read disjoint halves of the split, each with half of every global batch.
  halves = [np.concatenate([b['image'] for b in _take(
      src.train_batches(global_batch_size=256, seed=0, process_index=p, process_count=2), 5)]) for p in range(2)]
  assert halves[0].shape == halves[1].shape == (640, 24, 24, 1)
  both = np.concatenate(halves).reshape(1280, -1)
  assert len(np.unique(both, axis=0)) == 1280


def test_digits_source_eval_covers_the_test_split_once(digits_dir):
  from ssl_jax import data as data_lib
  src = data_lib.get_source(_cfg(name='digits', data_dir=digits_dir), split='test', train=False)
  batches = list(src.eval_batches(global_batch_size=128))
  assert len(batches) == 3 and all(b['image'].shape == (128, 24, 24, 1) for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 300 and not mask[300:].any()
  images = np.concatenate([b['image'] for b in batches])[mask]
  test_x, _ = _split_images(digits_dir, 'test')
  np.testing.assert_array_equal(_sorted_rows(images), _sorted_rows(test_x))
  assert (np.concatenate([b['label'] for b in batches])[~mask] == -1).all()


def test_unknown_split_and_name(digits_dir):
  from ssl_jax.data import tfds_source
  with pytest.raises(UserError, match="split 'validation' of digits.*train"):
    tfds_source.TfdsSource('digits', 'validation', data_dir=digits_dir)
  with pytest.raises(UserError, match='unknown'):
    tfds_source.TfdsSource('mnist3d', 'train', data_dir=digits_dir)


def test_missing_dataset_names_the_command(tmp_path):
  empty = str(tmp_path / 'empty')
  with pytest.raises(UserError, match='download_and_prepare') as info:
    data.get_source(_cfg(name='cifar10', data_dir=empty, download=False), split='train', train=True)
  message = str(info.value)
  assert 'cifar10' in message and empty in message and '\n' not in message
  assert 'data.download=True' in message and ':runlocal,synthetic' in message
  with pytest.raises(UserError, match='downloads/manual'):
    data.get_source(_cfg(name='imagenet2012', data_dir=empty), split='train', train=True)


def _local_cifar(fail_with=None):
  """A stand-in for tfds' cifar10 builder that 'downloads' from memory: 40 train / 20 test 32x32 images, or
  raises `fail_with` where the download would happen."""
  import tensorflow_datasets as tfds

  class LocalCifar(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = 'cifar10'
    VERSION = tfds.core.Version('3.0.2')
    code_path = None  # no checksums file next to this test
    prepared_by = []

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(32, 32, 3)), 'label': tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      if fail_with:
        raise fail_with
      self.prepared_by.append(self.data_dir)
      return {'train': self._generate_examples(40, 0), 'test': self._generate_examples(20, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {'image': rng.integers(0, 256, (32, 32, 3), np.uint8), 'label': i % 10}

  return LocalCifar


def test_a_missing_dataset_is_prepared_on_first_use(tmp_path, monkeypatch, capsys):
  from ssl_jax.data import tfds_source
  builder = _local_cifar()
  monkeypatch.setattr(tfds_source.tfds, 'builder', lambda name, data_dir: builder(data_dir=data_dir))
  src = data.get_source(_cfg(name='cifar10', data_dir=str(tmp_path)), split='train', train=True)
  assert len(builder.prepared_by) == 1 and (src.num_examples, src.image_shape) == (40, (32, 32, 3))
  assert next(src.train_batches(global_batch_size=8, seed=0))['image'].shape == (8, 32, 32, 3)
  assert 'preparing cifar10/3.0.2' in capsys.readouterr().err
  # Prepared once: the next source reads what is there.
  assert data.get_source(_cfg(name='cifar10', data_dir=str(tmp_path)), split='test', train=False).num_examples == 20
  assert len(builder.prepared_by) == 1 and 'preparing' not in capsys.readouterr().err
  # Offline: one line naming the cause, the command and the synthetic variant.
  offline = _local_cifar(fail_with=ConnectionError('no route to host\nmore'))
  monkeypatch.setattr(tfds_source.tfds, 'builder', lambda name, data_dir: offline(data_dir=data_dir))
  with pytest.raises(UserError, match=r'could not be prepared \(ConnectionError: no route to host\)') as info:
    data.get_source(_cfg(name='cifar10', data_dir=str(tmp_path / 'offline')), split='train', train=True)
  assert ':runlocal,synthetic' in str(info.value) and '\n' not in str(info.value)


def test_cifar10_on_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=64, data_dir=str(tmp_path)):
    src = data.get_source(_cfg(name='cifar10'), split='train', train=True)
    assert (src.num_examples, src.num_classes, src.image_shape) == (64, 10, (32, 32, 3))
    fresh = _take(src.train_batches(global_batch_size=16, seed=0), 6)
    assert fresh[0]['image'].shape == (16, 32, 32, 3) and fresh[0]['label'].dtype == np.int32
    _same_batches(fresh[3:], _take(src.train_batches(global_batch_size=16, seed=0, start_step=3), 3))
    masks = [b['mask'].sum() for b in src.eval_batches(global_batch_size=24)]
    assert masks == [24, 24, 16]


def test_imagenet100_on_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=200, data_dir=str(tmp_path)):
    src = data.get_source(_cfg(name='imagenet100'), split='train', train=True, crops=(data.HostCrop(),) * 2)
    # Mock labels are uniform over the 1000 classes: about a tenth are ImageNet-100 classes.
    assert src.num_classes == 100 and src.image_shape is None and 5 <= src.num_examples <= 45
    batch = next(src.train_batches(global_batch_size=4, seed=0))
    assert batch['image'].shape == (4, 2, 16, 16, 3) and batch['image'].dtype == np.uint8
    assert ((0 <= batch['label']) & (batch['label'] < 100)).all()


def _write_image_folder(root):
  """root/train/<class>/ with PNG and JPEG images of different sizes; each image a horizontal ramp."""
  import tensorflow as tf
  for c, (h, w) in enumerate([(40, 60), (50, 30), (33, 47)]):
    folder = root / 'train' / f'class{c}'
    folder.mkdir(parents=True)
    for i in range(4):
      ramp = np.broadcast_to(np.linspace(0, 255, w + 10 * i)[None, :, None], (h, w + 10 * i, 3))
      image = tf.constant(np.round(ramp).astype(np.uint8))
      encoded = tf.io.encode_png(image) if i % 2 else tf.io.encode_jpeg(image, quality=95)
      (folder / f'{i}.{"png" if i % 2 else "jpg"}').write_bytes(encoded.numpy())


def _view_crops(**multicrop_fields):
  """The host crops of a config whose views 1 and 3 crop 10-30% of the area (`augment`) and view 2 all of
  it (`augment2`, scale (1, 1)); with `multicrop_fields`, the multi-crop ones (globals, then locals)."""
  config = ml_collections.ConfigDict(dict(augment=augment.default_config(), augment2=augment.default_config()))
  config.augment.crop_scale, config.augment2.crop_scale = (0.1, 0.3), (1.0, 1.0)
  if multicrop_fields:
    config.multicrop = ml_collections.ConfigDict(multicrop_fields)
    return multicrop.host_crops(config)
  return augment.host_crops(config, 3)


def _ramp_spans(views):
  """Right minus left edge of each crop of the ramp images: the part of the ramp the crop shows."""
  views = views.astype(np.float32)
  return views[..., -1, :].mean(-1) - views[..., 0, :].mean(-1)


def test_image_folder_host_crops(tmp_path):
  import tensorflow as tf
  _write_image_folder(tmp_path)
  cfg = _cfg(name='image_folder', root=str(tmp_path), image_size=16)
  src = data.get_source(cfg, split='train', train=True, crops=_view_crops())
  assert (src.num_examples, src.num_classes, src.image_shape) == (12, 3, None)
  fresh = _take(src.train_batches(global_batch_size=4, seed=0), 5)
  assert fresh[0]['image'].shape == (4, 3, 16, 16, 3) and fresh[0]['image'].dtype == np.uint8
  # View v is cropped with augment{v}'s scale: views 1 and 3 (at most 30% of the area) span only part of the
  # 0..255 ramp, each a different part; view 2 (scale (1, 1)) is the whole image, resized.
  views = np.concatenate([b['image'] for b in fresh])
  spans = _ramp_spans(views)
  assert (spans[:, [0, 2]] > 20).all() and (spans[:, [0, 2]] < 200).all()
  assert (views[:, 0].mean((1, 2, 3)) != views[:, 2].mean((1, 2, 3))).all()
  whole = [tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
      tf.io.decode_image(f.read_bytes(), channels=3), [16, 16], antialias=True)), 0, 255), tf.uint8).numpy()
           for f in sorted(tmp_path.glob('train/*/*'))]
  assert all(any(np.array_equal(view, w) for w in whole) for view in views[:, 1])
  # The crops are seeded by (seed, epoch, file), so a resumed run crops the same way.
  _same_batches(fresh[2:], _take(src.train_batches(global_batch_size=4, seed=0, start_step=2), 3))
  evals = list(data.get_source(cfg, split='train', train=False).eval_batches(global_batch_size=8))
  assert [b['image'].shape for b in evals] == [(8, 16, 16, 3)] * 2
  assert [b['mask'].sum() for b in evals] == [8, 4]


def test_image_folder_multicrop_host_crops(tmp_path):
  """2 global crops of the step's resolution and 3 local 8-px crops per image (scale (0.05, 0.14))."""
  _write_image_folder(tmp_path)
  cfg = _cfg(name='image_folder', root=str(tmp_path), image_size=16)
  crops = _view_crops(num_global=2, num_local=3, local_size=8, local_crop_scale=(0.05, 0.14))
  assert [c.size for c in crops] == [None, None, 8, 8, 8]

  def batches(crops, seed, start_step=0):
    src = data.get_source(cfg, split='train', train=True, crops=crops)
    return _take(src.train_batches(global_batch_size=4, seed=seed, start_step=start_step), 3 - start_step)

  first = batches(crops, 0)
  assert first[0]['image'].shape == (4, 2, 16, 16, 3) and first[0]['local_image'].shape == (4, 3, 8, 8, 3)
  assert first[0]['local_image'].dtype == np.uint8
  _same_batches(first[1:], batches(crops, 0, start_step=1))   # seeded per example: the same after a resume
  assert not np.array_equal(first[0]['local_image'], batches(crops, 1)[0]['local_image'])
  # The local crops draw from their own stream: the global crops are those of a run without local crops.
  _same_batches([{'image': b['image']} for b in first], [{'image': b['image']} for b in batches(crops[:2], 0)])
  local = np.concatenate([b['local_image'] for b in first])
  assert (_ramp_spans(local) < 170).all()          # a small part of the ramp ...
  assert (local.mean((2, 3, 4)).std(1) > 0).all()  # ... a different one for each local crop


def test_image_folder_crops_do_not_depend_on_where_the_folder_lives(tmp_path):
  batches = []
  for place in ('here', 'there/deeper'):
    _write_image_folder(tmp_path / place)
    cfg = _cfg(name='image_folder', root=str(tmp_path / place), image_size=16)
    src = data.get_source(cfg, split='train', train=True, crops=_view_crops()[:2])
    batches.append(_take(src.train_batches(global_batch_size=4, seed=0), 2))
  _same_batches(*batches)
