"""Sources over tfds and tf.data: the host side of the input pipeline for real datasets.

Each process reads its own slice of the split (`tfds.even_splits`), shuffles it once per epoch with a seed
derived from (seed, epoch), decodes and batches uint8 images. TensorFlow is imported only when a `TfdsSource`
is built, and is kept off the accelerators.

Exact resume: every epoch gets a freshly built pipeline with `reshuffle_each_iteration=False` and the seed of
that epoch, so the order of an epoch is the same however often it is rebuilt, whatever the shuffle buffer. To
start at step k the pipeline skips the batches already taken in the current epoch *before* decoding (images
are read as undecoded bytes and decoded in a map after the skip), so resuming costs reading, not decoding.
Random crops draw their seeds from (seed, epoch, example id), so they too are the same after a resume; the
local crops draw theirs from a stream of their own, so the global crops are those of a run without them.

Fixed-size datasets (cifar10, cifar100, stl10, digits) yield uint8 (B, H, W, C); grayscale stays 1-channel.
Variable-size datasets (imagenet2012, imagenet100, image_folder) are cropped on the host: training yields
the method's host crops of every example (`data.HostCrop`, each with its own scale and ratio), decoding only
the crop window of each JPEG: the V crops of the step's resolution S as 'image', uint8 (B, V, S, S, 3), and
with multi-crop the M local crops of side s as 'local_image', uint8 (B, M, s, s, 3). Evaluation resizes the
shorter side to S / 0.875 and takes the central S x S crop, uint8 (B, S, S, 3). The training crop is a
random-resized crop (`host_crop['mode']` 'random_resized'), or 'resize_crop': the shorter side to S / 0.875
and a random S x S window (torchvision's Resize(256) + RandomCrop(224), the fine-tuning crop of S3L's code),
cut from the image as one window and resized once.

Missing datasets: one that tfds can download (cifar10, cifar100, stl10, caltech_birds2011, ...) is downloaded
and prepared on first use with `download=True` (`config.data.download`, the default), by process 0 while the
others wait at a barrier (`prepare_once`); tfds shows the download's progress. ImageNet needs its archives
put in place by hand, and `download=False` keeps the data directory as it is: both stop with a UserError
that gives the command to prepare it, and so does a failed download, naming its cause.

Unreadable files in an image_folder (corrupt, truncated, not an image) are found by decoding every file once
when the source is built: they are left out of the split, counted in `skipped_images` (the trainer logs it as
`data/skipped_images`) and named in a warning; a folder with no readable image is a UserError.

Subsets (`subset`, small-data runs): the chosen examples are found by their position in the split's fixed
read order (for `per_class`, after one pass over the labels, cached as a .npy file beside the dataset), and
every pass reads the whole split but decodes only the subset; training caches the subset's undecoded records
in memory after the first epoch (when it has at most 100k examples), so later epochs read only those.

Partners (`train_batches(partners=True)`, RepMix): a second, independently shuffled pass over the same
records (seed `sources.partner_seed(seed, epoch)`) is zipped with the anchors, so each batch also carries
'partner' images, and resuming skips both streams before decoding. With several processes each draws the
partners from its own slice of the split. Host-cropped data then put the clean view (the evaluation crop)
first: 'image' and 'partner' are uint8 (B, 1 + V, S, S, 3).
"""
import functools
import json
import os
import re

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from ssl_jax import progress
from ssl_jax.data import TFDS_NAMES, VARIABLE_SIZE, sources
from ssl_jax.errors import UserError

_BUILDER_NAMES = {'digits': 'ssl_digits', 'imagenet100': 'imagenet2012'}
_UNLABELLED_SPLITS = {('stl10', 'unlabelled')}   # every label is -1
_FULL_SHUFFLE_MAX = 100_000                      # splits up to this size are shuffled as a whole
_EVAL_CROP_FRACTION = 0.875                      # the usual ImageNet eval: resize to S / 0.875, center crop S
_CROP_ATTEMPTS = 10                              # as torchvision's RandomResizedCrop; then the whole image
_LOCAL_STREAM = 0x4C6F63                         # 'Loc': the local host crops' own seed stream
_IMAGENET100_FILE = os.path.join(os.path.dirname(__file__), 'imagenet100.txt')


def default_data_dir() -> str:
  """`$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (expanded)."""
  return os.path.expanduser(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


@functools.cache
def _tf():
  """TensorFlow, hidden from the GPUs before it can reserve their memory (JAX owns the accelerators)."""
  progress.note('importing TensorFlow for the tf.data input pipeline')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    logging.warning('TensorFlow was initialised before ssl_jax could hide the GPUs from it')
  return tf


def prepare_once(builder) -> None:
  """Downloads and prepares `builder`'s dataset if it is not prepared yet: process 0 does it, the others wait.

  Every process calls this at the same point (the trainer builds the same sources everywhere). With several
  processes the data directory must be shared (a bucket, NFS), as for every tfds dataset they read.

  Raises:
    UserError: the download or the preparation failed (offline, a full disk, ...): its cause.
  """
  import jax  # pylint: disable=g-import-not-at-top  (the process layout; jax is imported by every caller)
  name = builder.info.full_name
  if jax.process_index() == 0 and not builder.is_prepared():
    progress.note(f'preparing {name} in {builder.data_dir} (once, on first use: download and conversion; '
                  'tfds shows its progress)')
    started = progress.elapsed()
    try:
      builder.download_and_prepare(file_format='tfrecord')
    except Exception as e:  # noqa: BLE001  (network, disk and archive errors come in many types)
      first = (str(e).strip().splitlines() or [''])[0][:200]
      raise UserError(f'{type(e).__name__}: {first}') from None
    progress.note(f'prepared {name} in {progress.duration(progress.elapsed() - started)}')
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'ssl_jax: {name} prepared')


def imagenet100_wnids() -> list[str]:
  """The 100 WordNet ids of ImageNet-100 (CMC's list, also solo-learn's), in label order."""
  with open(_IMAGENET100_FILE) as f:
    return f.read().split()


def _split_names(split: str) -> list[str]:
  """The plain split names inside a tfds split expression such as 'train[:10%]+test'."""
  return [part.split('[')[0].strip() for part in split.split('+')]


class TfdsSource:
  """A tfds split as a source (see `sources` for the interface)."""

  def __init__(self, name: str, split: str, *, data_dir: str | None = None, root: str | None = None,
               host_crop: dict | None = None, shuffle_buffer: int = 50_000, threads: int = 2,
               subset: dict | None = None, download: bool = True):
    """Opens the split, preparing the dataset first if it is missing and `download` (module docstring); fails
    with a UserError when it is missing and cannot be prepared, or the split does not exist.

    Args:
      name: one of ssl_jax.data.TFDS_NAMES.
      split: a tfds split ('train', 'test', 'unlabelled', 'train[:10%]', ...); imagenet100 takes a plain name.
      data_dir: tfds data directory; `default_data_dir()` when None. 'digits' is prepared there on first use.
      root: folder of `<split>/<class>/<image>` files, for 'image_folder'.
      host_crop: for variable-size data, dict(size, crops, mode='random_resized'): the training crops
        (`crops`, a tuple of data.HostCrop; size None is `size`), the evaluation crop's side (`size`) and
        the crop mode ('resize_crop': see the module docstring).
      shuffle_buffer: shuffle buffer for splits larger than 100k examples (smaller ones are shuffled whole).
      threads: size of tf.data's private thread pool (the trainer and XLA need the other cores).
      subset: dict(seed, num=None, per_class=None): only these examples of the split
        (`sources.subset_indices`); None for all.
      download: prepare a missing dataset that tfds can download (not ImageNet: manual download).
    """
    _tf()  # before tfds touches TensorFlow
    if name not in TFDS_NAMES:
      raise UserError(f'dataset {name!r} is unknown; valid tfds datasets: {", ".join(TFDS_NAMES)}')
    if (name in VARIABLE_SIZE) != (host_crop is not None):
      raise ValueError(f'{name}: host_crop must be given exactly for variable-size data {VARIABLE_SIZE}')
    self.name, self.split, self.host_crop = name, split, host_crop
    self.shuffle_buffer, self.threads = shuffle_buffer, threads
    self.data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
    self.download = download
    self._builder = self._open_builder(root)
    self._check_split()
    features = self._builder.info.features
    self._image_feature = features['image']
    self.image_shape = None if name in VARIABLE_SIZE else tuple(features['image'].shape)
    self.num_classes = 0 if (name, split) in _UNLABELLED_SPLITS else features['label'].num_classes
    if name == 'imagenet100':
      self._label_map = self._imagenet100_label_map()
      self.num_classes = 100
      self._positions = self._imagenet100_positions()
      self.num_examples = len(self._positions)
    else:
      self.num_examples = self._split_size(self._as_dataset(split), split)
    self._readable = None  # image_folder: bool (N,), which files of the split decode (the others are skipped)
    if name == 'image_folder':
      self._find_readable_images()
    self._subset = None
    if subset:
      labels = self._split_labels() if subset.get('per_class') else None
      self._subset = sources.subset_indices(self.num_examples, labels, **subset)
      self._split_examples, self.num_examples = self.num_examples, len(self._subset)

  # Opening the dataset.

  def _open_builder(self, root):
    if self.name == 'digits':
      from ssl_jax.data import digits  # pylint: disable=g-import-not-at-top
      return digits.prepare_digits(self.data_dir)
    if self.name == 'image_folder':
      if not root or not os.path.isdir(os.path.expanduser(root)):
        raise UserError(f'image_folder needs data.root, a folder of <split>/<class>/<image> files; '
                        f'got {root!r}')
      return tfds.ImageFolder(os.path.expanduser(root))
    builder_name = _BUILDER_NAMES.get(self.name, self.name)
    try:
      builder = tfds.builder(builder_name, data_dir=self.data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise UserError(self._missing_message()) from e
    if self.download and not getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
      try:
        prepare_once(builder)
      except UserError as e:
        raise UserError(self._missing_message(f' and could not be prepared ({e})')) from None
    return builder

  def _missing_message(self, why: str = '') -> str:
    builder_name = _BUILDER_NAMES.get(self.name, self.name)
    command = (f'python -c "import tensorflow_datasets as tfds; tfds.builder(\'{builder_name}\', '
               f'data_dir=\'{self.data_dir}\').download_and_prepare()"')
    if builder_name == 'imagenet2012':
      return (f'dataset {self.name} not found in {self.data_dir}: put ILSVRC2012_img_train.tar and '
              f'ILSVRC2012_img_val.tar in {self.data_dir}/downloads/manual/ and run once: {command}')
    how = ('it is prepared on first use with data.download=True (the default), or once with: '
           if not self.download else 'prepare it once (with internet access) with: ')
    return (f'dataset {self.name} not found in {self.data_dir}{why}; {how}{command}; or try the recipe '
            'without the data: its :synthetic variant, e.g. --config configs/simclr_cifar10.py:runlocal,synthetic')

  def _check_split(self):
    known = list(self._builder.info.splits)
    if not known:  # splits are unknown before preparation (and under tfds.testing.mock_data)
      return
    names = _split_names(self.split)
    if self.name == 'imagenet100' and names != [self.split]:
      raise UserError(f'imagenet100 takes a whole split name, not {self.split!r}; '
                      f'use one of {", ".join(known)}')
    for s in names:
      if s not in known:
        raise UserError(f'split {s!r} of {self.name} does not exist; use one of {", ".join(known)}')

  def _as_dataset(self, split):
    """Undecoded examples {'image': encoded bytes, 'label', ...} of `split`, in file order."""
    read_config = tfds.ReadConfig(add_tfds_id=self.host_crop is not None and self.name != 'image_folder')
    try:
      return self._builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()},
                                      shuffle_files=False, read_config=read_config)
    except AssertionError as e:  # tfds: "Dataset X: could not find data in DIR"
      if 'could not find data' not in str(e):
        raise
      raise UserError(self._missing_message()) from e

  def _split_size(self, ds, split) -> int:
    # The dataset's own cardinality also holds under tfds.testing.mock_data, where info.splits does not.
    n = int(ds.cardinality())
    return n if n >= 0 else self._builder.info.splits[split].num_examples

  # image_folder: files that do not decode are left out (and counted), so they never stop a run.

  def _find_readable_images(self) -> None:
    """Decodes every image of the split once, sets `skipped_images` and leaves the unreadable ones out.

    Done before training, so the split's examples (and with them the batches of every step, and exact resume)
    are fixed from the start. JPEGs are decoded at 1/8 scale, which still reads every byte (a truncated
    file fails) at a fraction of the cost.
    """
    tf = _tf()

    def decodes(encoded):
      small_jpeg = lambda: tf.shape(
          tf.io.decode_jpeg(encoded, channels=3, ratio=8, dct_method='INTEGER_FAST'))
      other = lambda: tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))
      return tf.cond(tf.io.is_jpeg(encoded), small_jpeg, other)

    ds = self._as_dataset(self.split).enumerate()
    ds = ds.map(lambda i, ex: (i, decodes(ex['image'])), num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    readable = np.sort(np.fromiter((i for i, _ in ds.as_numpy_iterator()), np.int64))
    total, self.skipped_images = self.num_examples, self.num_examples - len(readable)
    if not self.skipped_images:
      return
    kept = set(readable.tolist())
    files = self._as_dataset(self.split).map(lambda ex: ex['image/filename']).as_numpy_iterator()
    # <split>/<class>/<file>: where the bad file is, relative to data.root.
    names = ['/'.join(name.decode().split(os.sep)[-3:]) for i, name in enumerate(files) if i not in kept][:3]
    if not len(readable):
      raise UserError(f'none of the {total} images of split {self.split!r} in data.root can be decoded '
                      f'(e.g. {names[0]}); check that the files are images (JPEG, PNG, GIF, BMP)')
    logging.warning('Skipping %d of %d images of split %r that cannot be decoded, e.g. %s',
                    self.skipped_images, total, self.split, ', '.join(names))
    keep = np.zeros((total,), bool)
    keep[readable] = True
    self._readable, self.num_examples = keep, len(readable)

  # ImageNet-100: ImageNet-2012 filtered to 100 classes.

  def _imagenet100_label_map(self) -> np.ndarray:
    """int32 (1000,): the ImageNet-100 label of each ImageNet label, -1 for the other 900 classes."""
    names = self._builder.info.features['label'].names
    table = np.full((len(names),), -1, np.int32)
    for new, wnid in enumerate(imagenet100_wnids()):
      table[names.index(wnid)] = new
    return table

  def _imagenet100_positions(self) -> np.ndarray:
    """Sorted positions, within the ImageNet split, of the ImageNet-100 examples (cached in a json file)."""
    path = os.path.join(self._builder.data_dir, f'imagenet100-{self.split}.json')
    if os.path.exists(path):
      with open(path) as f:
        return np.asarray(json.load(f)['positions'], np.int64)
    self._as_dataset(self.split)  # a missing dataset fails here with the prepare command
    logging.info('Counting the ImageNet-100 examples of imagenet2012 %s (once; cached in %s)',
                 self.split, path)
    # One file at a time (no interleaving), so that the n-th label read is example n of the split, the
    # indexing that split slices like 'train[a:b]' use.
    ds = self._builder.as_dataset(split=self.split, decoders=tfds.decode.PartialDecoding({'label': True}),
                                  shuffle_files=False, read_config=tfds.ReadConfig(interleave_cycle_length=1))
    labels = np.concatenate(list(ds.map(lambda ex: ex['label']).batch(8192).as_numpy_iterator()))
    positions = np.flatnonzero(self._label_map[labels] >= 0)
    try:
      with open(path, 'w') as f:
        json.dump({'split': self.split, 'num_examples': len(positions), 'positions': positions.tolist()}, f)
    except OSError as e:
      logging.warning('Could not cache the ImageNet-100 positions in %s: %s', path, e)
    return positions

  # Per-process records: undecoded, with int32 labels and (for host crops) a stable example id.

  def _records(self, process_index: int, process_count: int, drop_remainder: bool):
    """This process's undecoded examples {'image', 'label', ['key']} in a fixed order, and their count."""
    if self._subset is not None:
      return self._subset_records(process_index, process_count, drop_remainder)
    return self._split_records(process_index, process_count, drop_remainder)

  def _split_records(self, process_index: int, process_count: int, drop_remainder: bool):
    """`_records` of the whole split."""
    tf = _tf()
    if self.name == 'imagenet100':
      ds, count = self._imagenet100_records(process_index, process_count, drop_remainder)
    elif self.name == 'image_folder':
      # ImageFolder has no sub-split API: every process keeps every P-th file (and reads, not decodes, the
      # others). Fine for the small folders it is meant for.
      ds = self._as_dataset(self.split)
      if self.skipped_images:
        ds = _keep_positions(ds, self._readable)
      ds = ds.shard(process_count, process_index)
      count = (self.num_examples - process_index + process_count - 1) // process_count
      if drop_remainder:
        count = self.num_examples // process_count
        ds = ds.take(count)
    else:
      split = self.split
      if process_count > 1:
        split = tfds.even_splits(self.split, process_count, drop_remainder=drop_remainder)[process_index]
      ds = self._as_dataset(split)
      count = self._split_size(ds, split)

    def tidy(ex):
      out = {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32)}
      if self.host_crop is not None:
        if self.name == 'image_folder':
          # <split>/<class>/<file>, relative to data.root: the crops must not depend on where the folder lives.
          example_id = tf.strings.regex_replace(ex['image/filename'], r'^.*/([^/]+/[^/]+/[^/]+)$', r'\1')
        else:
          example_id = ex['tfds_id']
        out['key'] = tf.strings.to_hash_bucket_fast(example_id, 2**62)
      return out

    return ds.map(tidy), count

  def _subset_records(self, process_index: int, process_count: int, drop_remainder: bool):
    """`_records` of the subset: the whole split read in its fixed order, filtered by position."""
    tf = _tf()
    keep = np.zeros((self._split_examples,), bool)
    keep[self._subset] = True
    table = tf.constant(keep)
    ds, _ = self._split_records(0, 1, drop_remainder=False)
    ds = ds.enumerate().filter(lambda i, ex: table[i]).map(lambda i, ex: ex)
    # Every process keeps every P-th example of the subset, so the slices do not depend on the split's files.
    n = self.num_examples
    count = n // process_count if drop_remainder else (n - process_index + process_count - 1) // process_count
    return ds.shard(process_count, process_index).take(count), count

  def _split_labels(self) -> np.ndarray:
    """int32 (N,): the label of every example of the split in `_split_records` order (cached in a .npy)."""
    safe_split = re.sub(r'[^A-Za-z0-9_.-]', '_', self.split)
    path = (os.path.join(self._builder.data_dir, f'ssl_jax_labels_{self.name}_{safe_split}.npy')
            if self.name != 'image_folder' else None)
    if path and os.path.exists(path):
      labels = np.load(path)
      if len(labels) == self.num_examples:
        return labels
    logging.info('Reading the labels of %s %s for a per-class subset (once; cached in %s)', self.name,
                 self.split, path)
    ds, _ = self._split_records(0, 1, drop_remainder=False)
    labels = np.concatenate([np.zeros((0,), np.int32)] + list(
        ds.map(lambda ex: ex['label']).batch(8192).as_numpy_iterator()))
    if path:
      try:
        np.save(path, labels)
      except OSError as e:
        logging.warning('Could not cache the labels of %s %s in %s: %s', self.name, self.split, path, e)
    return labels

  def _imagenet100_records(self, process_index, process_count, drop_remainder):
    tf = _tf()
    # Split the kept positions (not the ImageNet split) so every process gets the same number of examples,
    # then read only the ImageNet range that holds this process's share.
    if drop_remainder:
      per = len(self._positions) // process_count
      mine = self._positions[process_index * per:(process_index + 1) * per]
    else:
      mine = np.array_split(self._positions, process_count)[process_index]
    if not len(mine):  # fewer ImageNet-100 examples than processes: this one only pads
      return self._as_dataset(self.split).take(0), 0
    ds = self._as_dataset(f'{self.split}[{mine[0]}:{mine[-1] + 1}]')
    table = tf.constant(self._label_map)
    ds = ds.map(lambda ex: {**ex, 'label': tf.gather(table, ex['label'])})
    return ds.filter(lambda ex: ex['label'] >= 0).take(len(mine)), len(mine)

  # Decoding.

  def _decode_fixed(self, encoded):
    return self._image_feature.decode_example(encoded)

  def _crop_views(self, encoded, seed) -> dict:
    """The host crops of one encoded image: {'image': uint8 (V, S, S, 3)[, 'local_image': (M, s, s, 3)]}."""
    tf = _tf()
    crop, size = self.host_crop, self.host_crop['size']
    global_crops = [c for c in crop['crops'] if c.size is None]
    local_crops = [c for c in crop['crops'] if c.size is not None]

    def split(parent, n):
      seeds = tf.random.experimental.stateless_split(parent, n)
      return [seeds[i] for i in range(n)]

    seeds = split(seed, len(global_crops))
    if local_crops:
      seeds += split(tf.random.experimental.stateless_fold_in(seed, _LOCAL_STREAM), len(local_crops))
    crops = global_crops + local_crops

    def window(shape, c, crop_seed):
      if crop.get('mode', 'random_resized') == 'resize_crop':
        return _resize_crop_window(shape, c.size or size, crop_seed)
      begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
          shape, tf.zeros([1, 0, 4]), seed=crop_seed, min_object_covered=0.0, aspect_ratio_range=c.ratio,
          area_range=c.scale, max_attempts=_CROP_ATTEMPTS, use_image_if_no_bounding_boxes=True)
      return tf.stack([begin[0], begin[1], extent[0], extent[1]])

    def jpeg_views():  # decode only the crop window of the JPEG
      shape = tf.image.extract_jpeg_shape(encoded)
      return [tf.image.decode_and_crop_jpeg(encoded, window(shape, c, crop_seed), channels=3)
              for c, crop_seed in zip(crops, seeds)]

    def other_views():  # PNG and friends cannot be partially decoded
      image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
      views = []
      for c, crop_seed in zip(crops, seeds):
        w = window(tf.shape(image), c, crop_seed)
        views.append(image[w[0]:w[0] + w[2], w[1]:w[1] + w[3]])
      return views

    def resize(views):
      return [_to_uint8(tf.image.resize(v, [c.size or size] * 2, antialias=True)) for v, c in zip(views, crops)]

    views = tf.cond(tf.io.is_jpeg(encoded), lambda: resize(jpeg_views()), lambda: resize(other_views()))
    out = {'image': tf.stack(views[:len(global_crops)])}
    if local_crops:
      out['local_image'] = tf.stack(views[len(global_crops):])
    return out

  def _center_crop(self, encoded):
    """The evaluation view of a variable-size image: shorter side to S / 0.875, central S x S, uint8."""
    tf = _tf()
    size = self.host_crop['size']
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = round(size / _EVAL_CROP_FRACTION) / tf.reduce_min(hw)
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), size)
    image = tf.image.resize(image, new_hw, antialias=True)
    return _to_uint8(tf.image.resize_with_crop_or_pad(image, size, size))

  def _train_image(self, encoded, key, crop_seed: int, clean_view: bool) -> dict:
    """{'image': the decoded training image, or its host crops (V, S, S, 3) after its clean view with
    `clean_view`; with local host crops also 'local_image' (M, s, s, 3)}."""
    tf = _tf()
    if self.host_crop is None:
      return {'image': self._decode_fixed(encoded)}
    views = self._crop_views(encoded, tf.stack([tf.constant(crop_seed, tf.int64), key]))
    if clean_view:
      views['image'] = tf.concat([self._center_crop(encoded)[None], views['image']], 0)
    return views

  def _train_example(self, ex, crop_seed: int, partner_seed: int | None = None):
    with_partner = partner_seed is not None
    out = {**self._train_image(ex['image'], ex.get('key'), crop_seed, clean_view=with_partner),
           'label': ex['label']}
    if with_partner:  # its own crop seed: a partner's crops differ from its crops as an anchor
      out['partner'] = self._train_image(ex['partner'], ex.get('partner_key'), partner_seed,
                                         clean_view=True)['image']
    return out

  def _eval_example(self, ex):
    tf = _tf()
    decode = self._decode_fixed if self.host_crop is None else self._center_crop
    return {'image': decode(ex['image']), 'label': ex['label'], 'mask': tf.constant(True)}

  # The interface.

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Number of full global batches in one epoch: num_examples // global_batch_size."""
    return self.num_examples // global_batch_size

  def _options(self):
    tf = _tf()
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = self.threads
    options.threading.max_intra_op_parallelism = 1
    return options

  def _epoch(self, records, count: int, local: int, seed: int, epoch: int, skip_batches: int,
             partners: bool = False):
    """The tf.data pipeline of one epoch, starting after `skip_batches` batches."""
    buffer = count if count <= _FULL_SHUFFLE_MAX else min(self.shuffle_buffer, count)
    epoch_seed = sources.epoch_seed(seed, epoch)
    ds = records.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    partner_seed = sources.partner_seed(seed, epoch) if partners else None
    if partners:
      mates = records.shuffle(buffer, seed=partner_seed, reshuffle_each_iteration=False)
      ds = _tf().data.Dataset.zip((ds, mates)).map(_with_partner)
    ds = ds.skip(skip_batches * local)  # before decoding: resuming reads records but decodes nothing
    decode = functools.partial(self._train_example, crop_seed=epoch_seed, partner_seed=partner_seed)
    ds = ds.map(decode, num_parallel_calls=_tf().data.AUTOTUNE)
    ds = ds.batch(local, drop_remainder=True).prefetch(2)
    return ds.with_options(self._options())

  def train_batches(self, *, global_batch_size: int, seed: int, start_step: int = 0, process_index: int = 0,
                    process_count: int = 1, partners: bool = False):
    """Endless training batches in an order fixed by (seed, epoch, process_count); exact resume.

    Args:
      global_batch_size: examples per step over all processes.
      seed: fixes the order and the host crops of every epoch.
      start_step: the first step to produce (the number of steps already taken).
      process_index: which slice of the split this process reads.
      process_count: number of processes.
      partners: also yield a random partner per anchor (module docstring).

    Returns:
      An iterator of {'image': uint8 (B, H, W, C), or (B, V, S, S, 3) with host crops, 'label': int32 (B,)};
      with local host crops also 'local_image' (B, M, s, s, 3); with `partners` also 'partner' of the
      shape of 'image', and host crops are (B, 1 + V, S, S, 3), the clean view first (partners take no local
      crops). B = global_batch_size // process_count.
    """
    if partners and self.host_crop and any(c.size is not None for c in self.host_crop['crops']):
      raise ValueError('partners take no local host crops: ask for either')
    local = sources.local_batch_size(global_batch_size, process_count)
    sources.check_fits(global_batch_size, self.num_examples, self.name)
    records, count = self._records(process_index, process_count, drop_remainder=True)
    if self._subset is not None and count <= _FULL_SHUFFLE_MAX:
      # Filled during the first epoch (its shuffle buffer holds the whole subset); later epochs read memory.
      records = records.cache()
    steps = count // local
    if not steps:
      raise UserError(f'process {process_index} holds {count} examples of {self.name}, fewer than its batch '
                      f'of {local}; use a smaller batch')

    def batches():
      epoch, offset = divmod(start_step, steps)
      while True:
        yield from self._epoch(records, count, local, seed, epoch, offset, partners).as_numpy_iterator()
        epoch, offset = epoch + 1, 0

    return batches()

  def eval_batches(self, *, global_batch_size: int, process_index: int = 0, process_count: int = 1):
    """One pass over the split in file order, the last batches padded (zero images, label -1, mask False).

    Args:
      global_batch_size: examples per step over all processes.
      process_index: which slice of the split this process reads.
      process_count: number of processes.

    Returns:
      An iterator of {'image': uint8 (B, H, W, C), or (B, S, S, 3) with host crops, 'label': int32 (B,),
      'mask': bool (B,)}; every process yields the same number of batches.
    """
    tf = _tf()
    local = sources.local_batch_size(global_batch_size, process_count)
    records, _ = self._records(process_index, process_count, drop_remainder=False)
    total = sources.eval_batch_count(self.num_examples, global_batch_size) * local
    shape = self.image_shape or (self.host_crop['size'], self.host_crop['size'], 3)
    pad = tf.data.Dataset.from_tensors({'image': tf.zeros(shape, tf.uint8), 'label': tf.constant(-1),
                                        'mask': tf.constant(False)}).repeat(total)
    ds = records.map(self._eval_example, num_parallel_calls=_tf().data.AUTOTUNE).concatenate(pad).take(total)
    return ds.batch(local).prefetch(2).with_options(self._options()).as_numpy_iterator()


def _keep_positions(ds, keep: np.ndarray):
  """The examples of `ds` (in order) whose position p has keep[p]; `keep` is bool (len(ds),)."""
  table = _tf().constant(keep)
  kept = ds.enumerate().filter(lambda position, _: table[position])
  return kept.map(lambda _, example: example)


def _with_partner(anchor: dict, partner: dict) -> dict:
  """An anchor record carrying its partner's encoded image (and crop key)."""
  out = {**anchor, 'partner': partner['image']}
  if 'key' in partner:
    out['partner_key'] = partner['key']
  return out


def _resize_crop_window(shape, size: int, seed):
  """[top, left, side, side]: the square window that Resize(size / 0.875) + RandomCrop(size) would show."""
  tf = _tf()
  hw = tf.cast(shape[:2], tf.float32)
  side = tf.cast(tf.round(tf.reduce_min(hw) * size / round(size / _EVAL_CROP_FRACTION)), tf.int32)
  room = tf.cast(shape[:2], tf.int32) - side
  u = tf.random.stateless_uniform([2], seed=seed)
  offset = tf.minimum(tf.cast(tf.floor(u * tf.cast(room + 1, tf.float32)), tf.int32), room)
  return tf.stack([offset[0], offset[1], side, side])


def _to_uint8(image):
  tf = _tf()
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
