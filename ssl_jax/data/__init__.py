"""The host-side input pipeline: sources of uint8 image batches, chosen by `config.data.name`.

`get_source` returns a source (interface in `sources`) for one split. tfds datasets go through
`tfds_source.TfdsSource`, which is imported only when such a dataset is asked for, so `import ssl_jax.data`
and training from 'synthetic' or registered in-memory data need no TensorFlow.

Datasets (DATASET_NAMES):
  digits        the embedded default: scikit-learn's digits on a 24x24 canvas, prepared automatically
  cifar10, cifar100, stl10 (split 'unlabelled' for pretraining; its labels are -1)
  imagenet2012  manual download; imagenet100 (CMC's 100 classes of it, labels 0..99 in imagenet100.txt order)
  caltech_birds2011  CUB-200-2011 (5,994 train / 5,794 test, variable size)
  cars196, oxford_flowers102, oxford_iiit_pet  Stanford Cars, Flowers-102, Oxford-IIIT Pets (variable size)
  imagenet_resized/8x8, /16x16, /32x32, /64x64  downsampled ImageNet (Chrabaszcz et al., 2017), fixed size
  image_folder  `<data.root>/<split>/<class>/<image>` files (e.g. FGVC-Aircraft: ssl_jax/data/aircraft.py)
  synthetic     random images, no data and no TensorFlow needed
and any name registered with `register_memory_dataset`.

Small data: `data.subset_num` = N keeps N random examples of `data.train_split`, `data.subset_per_class` = n
keeps n random examples of every class (exclusive), chosen by `data.subset_seed` (`sources.subset_indices`),
wherever the run reads its train split (training, the kNN bank, probes, fine-tuning); the eval split is whole.
"""
import os
import pathlib
from typing import NamedTuple
import zlib

import numpy as np

from ssl_jax.data.sources import InMemorySource, SubsetSource, SyntheticSource, subset_indices  # noqa: F401
from ssl_jax.errors import UserError

FINE_GRAINED = ('caltech_birds2011', 'cars196', 'oxford_flowers102', 'oxford_iiit_pet')
IMAGENET_RESIZED = tuple(f'imagenet_resized/{s}x{s}' for s in (8, 16, 32, 64))
TFDS_NAMES = ('digits', 'cifar10', 'cifar100', 'stl10', 'imagenet2012', 'imagenet100', *FINE_GRAINED,
              *IMAGENET_RESIZED, 'image_folder')
VARIABLE_SIZE = ('imagenet2012', 'imagenet100', *FINE_GRAINED, 'image_folder')  # cropped on the host
HOST_CROPS = ('random_resized', 'resize_crop')
DATASET_NAMES = TFDS_NAMES + ('synthetic',)

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Per-channel (mean, std) of images scaled to [0, 1], for the model's input normalisation. A single-channel
# entry applies to every channel.
IMAGE_STATS = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'stl10': _IMAGENET,           # as solo-learn
    'imagenet2012': _IMAGENET,
    'imagenet100': _IMAGENET,
    **{name: _IMAGENET for name in FINE_GRAINED + IMAGENET_RESIZED},  # as S3L (torchvision's ImageNet stats)
    'image_folder': _IMAGENET,
    # Computed over the 1497 train digits (pixels / 255) of digits.render_digits(); mostly black canvas.
    'digits': ((0.1553,), (0.2774,)),
    # Uniform bytes: mean 127.5 / 255, std sqrt((256**2 - 1) / 12) / 255.
    'synthetic': ((0.5,), (0.2898,)),
}
_NEUTRAL_STATS = ((0.5,), (0.25,))  # registered in-memory data: no statistics known in advance


class HostCrop(NamedTuple):
  """One random-resized crop the host cuts from every training example of variable-size data.

  Crops of the step's resolution (size None) make the batch's 'image', uint8 (B, V, S, S, 3), in the order
  given; crops of one smaller size make its 'local_image', uint8 (B, M, s, s, 3) (multi-crop local crops).
  Methods list theirs (`methods.Method.host_crops`); view v's crop reads view v's augment block
  (`augment.host_crops`), as the device crop of fixed-size data does.
  """
  size: int | None = None                      # side in px; None: the step's resolution
  scale: tuple[float, float] = (0.08, 1.0)     # range of the crop's fraction of the image area
  ratio: tuple[float, float] = (3 / 4, 4 / 3)  # range of the crop's aspect ratio (width / height)

_MEMORY_DATASETS: dict[tuple[str, str], InMemorySource] = {}


def register_memory_dataset(name: str, images: np.ndarray, labels: np.ndarray, *, split: str = 'train',
                            num_classes: int | None = None) -> InMemorySource:
  """Makes arrays available as `config.data.name = name` (one call per split).

  Args:
    name: the dataset name to use in configs; must not be one of DATASET_NAMES.
    images: uint8 (N, H, W, C).
    labels: int (N,); -1 marks an unlabelled example.
    split: the split name these arrays serve ('train', 'test', ...).
    num_classes: size of the label space; max(labels) + 1 when None.

  Returns:
    The registered source.
  """
  if name in DATASET_NAMES:
    raise UserError(f'{name!r} is a built-in dataset name; register in-memory data under another name')
  source = InMemorySource(images, labels, num_classes=num_classes, name=name)
  _MEMORY_DATASETS[(name, split)] = source
  return source


def subset_spec(data_cfg, split: str) -> dict | None:
  """{'num', 'per_class', 'seed'} of the subset `data_cfg` asks for on `split`, or None (the whole split).

  Only `data_cfg.train_split` is subsetted; at most one of `subset_num` and `subset_per_class` is set
  (train.check_run).
  """
  num, per_class = data_cfg.subset_num, data_cfg.subset_per_class
  if not (num or per_class) or split != data_cfg.train_split:
    return None
  return {'num': num or None, 'per_class': per_class or None, 'seed': data_cfg.subset_seed}


def get_source(data_cfg, *, split: str, train: bool, crops: tuple[HostCrop, ...] = (HostCrop(),),
               image_size: int | None = None, crop: str = 'random_resized'):
  """The source of one split of `data_cfg.name`.

  Args:
    data_cfg: the `config.data` ConfigDict (name, data_dir, download, root, image_size, shuffle_buffer,
      synthetic_examples, synthetic_shape, synthetic_classes, subset_num, subset_per_class, subset_seed).
    split: split name, e.g. config.data.train_split.
    train: True for the source the trainer draws training batches from; variable-size data then make the
      host crops `crops` of every example. False for evaluation-only sources (one central crop).
    crops: the host crops of every training example of variable-size data (`HostCrop`; the method's
      `host_crops(config)`); fixed-size data ignore them (they are cropped on the device).
    image_size: side of the host crops of the step's resolution (and of the evaluation crop);
      `data_cfg.image_size` when None.
    crop: the host training crop (HOST_CROPS): 'random_resized' (each crop's scale and ratio) or
      'resize_crop' (shorter side to S / 0.875, a random S x S window).

  Returns:
    A source: InMemorySource, SyntheticSource, a subset of one (sources.SubsetSource) or
    tfds_source.TfdsSource.
  """
  name, subset = data_cfg.name, subset_spec(data_cfg, split)
  if name == 'synthetic':
    # A different, fixed set of images for each split.
    source = SyntheticSource(data_cfg.synthetic_examples, tuple(data_cfg.synthetic_shape),
                             data_cfg.synthetic_classes, seed=zlib.crc32(split.encode()))
    return SubsetSource(source, **subset) if subset else source
  if any(registered == name for registered, _ in _MEMORY_DATASETS):
    if (name, split) not in _MEMORY_DATASETS:
      splits = sorted(s for n, s in _MEMORY_DATASETS if n == name)
      raise UserError(f'in-memory dataset {name!r} has no split {split!r}; '
                      f'registered splits: {", ".join(splits)}')
    source = _MEMORY_DATASETS[(name, split)]
    return SubsetSource(source, **subset) if subset else source
  if crop not in HOST_CROPS:
    raise UserError(f'host crop {crop!r} is unknown; use one of {", ".join(HOST_CROPS)}')
  if name not in TFDS_NAMES:
    registered = sorted({n for n, _ in _MEMORY_DATASETS})
    raise UserError(f'dataset {name!r} is unknown; use one of {", ".join(DATASET_NAMES + tuple(registered))}')
  if name == 'image_folder':
    check_class_folders(data_cfg.root, split)
  from ssl_jax.data import tfds_source  # pylint: disable=g-import-not-at-top  (TensorFlow only from here)
  host_crop = None
  if name in VARIABLE_SIZE:
    host_crop = dict(size=int(image_size or data_cfg.image_size), crops=_check_crops(crops) if train else (),
                     mode=crop)
  # Configs saved before data.download existed download too.
  return tfds_source.TfdsSource(name, split, data_dir=data_cfg.data_dir or None, root=data_cfg.root or None,
                                host_crop=host_crop, shuffle_buffer=data_cfg.shuffle_buffer, subset=subset,
                                download=data_cfg.download)


def _check_crops(crops) -> tuple[HostCrop, ...]:
  """`crops` as HostCrops; at least one of the step's resolution, the others of one size (one batch entry)."""
  crops = tuple(HostCrop(c.size, tuple(c.scale), tuple(c.ratio)) for c in crops)
  sizes = {c.size for c in crops if c.size is not None}
  if all(c.size is not None for c in crops) or len(sizes) > 1:
    raise ValueError(f'host crops {crops}: give at least one of the step\'s resolution (size None) and the '
                     'others of one size')
  return crops


def check_class_folders(root: str, split: str) -> None:
  """Refuses an image_folder split with an empty class folder: it would still be a class (a label no example
  has, in every classifier and kNN vote), which is almost always an unfinished copy."""
  folder = pathlib.Path(os.path.expanduser(root or '.')) / split
  if not folder.is_dir():
    return  # the source names what is missing
  empty = sorted(d.name for d in folder.iterdir() if d.is_dir() and not any(f.is_file() for f in d.rglob('*')))
  if empty:
    more = f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''
    raise UserError(f'class folder {folder / empty[0]}{more} holds no image; add its images or remove the '
                    'folder (an empty folder would still count as a class)')


def image_stats(name: str, in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std (of images in [0, 1]) to normalise the model's input with.

  Args:
    name: config.data.name.
    in_channels: channels of the images fed to the model.

  Returns:
    (mean, std), each a tuple of `in_channels` floats.
  """
  mean, std = IMAGE_STATS.get(name, _NEUTRAL_STATS)
  if len(mean) == 1:
    return mean * in_channels, std * in_channels
  if len(mean) != in_channels:
    raise UserError(f'{name} has {len(mean)}-channel statistics but the model sees {in_channels} channels; '
                    'check data.synthetic_shape or the dataset')
  return mean, std
