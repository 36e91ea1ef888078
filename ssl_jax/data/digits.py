"""The embedded default dataset: scikit-learn's handwritten digits as a small tfds builder (no download).

The 1797 8x8 digits (values 0..16) are far too easy as they come: a randomly initialised ResNet already
classifies them well by kNN. So each digit is scaled to 0..255, upscaled (bilinear) to a random size of
14-20 px and pasted at a random position on a black 24x24 canvas. Size and position are drawn once from a
fixed seed, so the dataset is the same on every machine; only an encoder that learned shape, not position,
scores well.

Splits: 'train' (1497) and 'test' (300, 30 per class), a fixed stratified split from a seeded permutation.
Building it takes well under a second; `prepare_digits` does it on first use.
"""
import os

import numpy as np
import tensorflow_datasets as tfds

CANVAS = 24
SIZE_RANGE = (14, 20)       # inclusive, in pixels
TEST_PER_CLASS = 30
_SEED = 0


def render_digits(seed: int = _SEED) -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digits, each upscaled to a random size at a random position on the canvas.

  Args:
    seed: fixes every size and position.

  Returns:
    images: uint8 (1797, 24, 24, 1).
    labels: int64 (1797,), values 0..9.
  """
  from scipy import ndimage  # pylint: disable=g-import-not-at-top  (scipy ships with scikit-learn)
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  rng = np.random.default_rng(seed)
  images = np.zeros((len(digits.images), CANVAS, CANVAS, 1), np.uint8)
  for i, digit in enumerate(digits.images):
    size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
    top, left = rng.integers(0, CANVAS - size + 1, size=2)
    # order=1 is bilinear; grid_mode keeps the zoomed image exactly `size` pixels wide.
    big = ndimage.zoom(digit * (255.0 / 16.0), size / 8.0, order=1, grid_mode=True, mode='nearest')
    images[i, top:top + size, left:left + size, 0] = np.clip(np.round(big), 0, 255).astype(np.uint8)
  return images, digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int = _SEED) -> dict[str, np.ndarray]:
  """The fixed held-out split: TEST_PER_CLASS examples of each class for 'test', the rest for 'train'.

  Args:
    labels: int (N,) class of every digit.
    seed: fixes which examples are held out.

  Returns:
    {'train': sorted int64 indices, 'test': sorted int64 indices}, disjoint and covering range(N).
  """
  order = np.random.default_rng(seed).permutation(len(labels))
  test = np.concatenate([order[labels[order] == c][:TEST_PER_CLASS] for c in np.unique(labels)])
  train = np.setdiff1d(np.arange(len(labels)), test)
  return {'train': train, 'test': np.sort(test)}


class SslDigits(tfds.core.GeneratorBasedBuilder):
  """tfds builder 'ssl_digits': the digits on a 24x24 canvas, 1497 train / 300 test examples."""

  name = 'ssl_digits'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Digits upscaled to 14-20 px at random positions on a 24x24 canvas (seed 0).'}
  # Nothing is downloaded, so there is no checksums file to find next to the code. Looking for it makes tfds
  # 4.9.10 import `importlib_resources`, which it declares as a dependency only on Python < 3.9.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    # dataset_info_from_configs() looks for a package folder with metadata, which a single-file builder lacks.
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.splitlines()[0],
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(CANVAS, CANVAS, 1)),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the data ship with scikit-learn
    images, labels = render_digits()
    return {name: self._generate_examples(images, labels, idx)
            for name, idx in split_indices(labels).items()}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {'image': images[i], 'label': int(labels[i])}


def prepare_digits(data_dir: str) -> SslDigits:
  """Returns the 'ssl_digits' builder, preparing the dataset into `data_dir` first if it is missing.

  Args:
    data_dir: tfds data directory; the dataset lives in `<data_dir>/ssl_digits/1.0.0`.

  Returns:
    The prepared builder.
  """
  builder = SslDigits(data_dir=os.path.expanduser(data_dir))
  if not builder.is_prepared():
    builder.download_and_prepare(file_format='tfrecord')
  return builder
