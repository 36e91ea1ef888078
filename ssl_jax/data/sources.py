"""Sources that need no TensorFlow: arrays held in memory and deterministic synthetic images.

Every source (these and `tfds_source.TfdsSource`) offers the same small interface:

  num_examples, num_classes, image_shape ((H, W, C), or None for variable-size data cropped on the host), name
  train_batches(*, global_batch_size, seed, start_step=0, process_index=0, process_count=1, partners=False)
      an endless iterator of {'image': uint8 (B, H, W, C), 'label': int32 (B,)}, B = global // process_count.
      Epoch e visits the examples in an order fixed by (seed, e) and drops the last partial batch. Starting at
      `start_step` yields exactly what a fresh iterator yields from that step on (exact resume).
      With `partners`, each batch also has 'partner' (like 'image'): for every anchor a partner drawn
      uniformly from the whole split, independently of the anchor and of its batch, fresh every epoch. The
      partners of epoch e are a second permutation of the split fixed by (seed, e) (`partner_seed`), so
      every example is some anchor's partner exactly once per epoch. RepMix (Sharma et al., 2024) needs them;
      its code draws each partner independently with replacement, which a sequential tf.data reader cannot,
      and which gives each anchor the same uniform marginal.
  eval_batches(*, global_batch_size, process_index=0, process_count=1)
      one pass in a fixed order; the last batch is padded (zero images, label -1) and every batch carries a
      bool 'mask' that is True for real examples.
  steps_per_epoch(global_batch_size)

Here every process computes the same global index list and takes its slice of it, so the global batch at a
step depends neither on the number of devices nor on the number of processes.
"""
from collections.abc import Iterator

import numpy as np

from ssl_jax.errors import UserError


def epoch_seed(seed: int, epoch: int) -> int:
  """A 63-bit seed that depends only on (seed, epoch): the shuffle seed of that epoch.

  Args:
    seed: the run's seed (any int).
    epoch: epoch number, >= 0.

  Returns:
    A non-negative int below 2**63 (valid as a tf.data or numpy seed).
  """
  state = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, np.uint64)[0]
  return int(state >> np.uint64(1))


def partner_seed(seed: int, epoch: int) -> int:
  """The seed of epoch `epoch`'s partner permutation: independent of `epoch_seed(seed, epoch)`."""
  state = np.random.SeedSequence([seed % 2**64, epoch, 1]).generate_state(1, np.uint64)[0]
  return int(state >> np.uint64(1))


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """Checks that the global batch splits evenly over the processes and returns the per-process batch.

  Args:
    global_batch_size: examples per step over all processes.
    process_count: number of processes sharing each global batch.

  Returns:
    global_batch_size // process_count.
  """
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise UserError(f'batch size {global_batch_size} is not a positive multiple of the {process_count} '
                    'processes; choose a multiple of the process count')
  return global_batch_size // process_count


def check_fits(global_batch_size: int, num_examples: int, name: str) -> None:
  """Training drops partial batches, so a batch larger than the split would never produce one."""
  if global_batch_size > num_examples:
    raise UserError(f'batch size {global_batch_size} is larger than the {num_examples} examples of {name}; '
                    'use a smaller batch or more data')


def eval_batch_count(num_examples: int, global_batch_size: int) -> int:
  """Number of (padded) global batches in one pass over `num_examples`."""
  return -(-num_examples // global_batch_size)


class _IndexedSource:
  """Batching, epoch order, resume and padding for sources that can produce any example by its index."""

  num_examples: int
  num_classes: int
  image_shape: tuple
  name: str

  def _gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (len(indices), H, W, C) and labels int32 (len(indices),) of the given examples."""
    raise NotImplementedError

  def all_labels(self) -> np.ndarray:
    """int32 (num_examples,): every example's label, in index order."""
    chunks = [self._gather(np.arange(i, min(i + 1024, self.num_examples)))[1]
              for i in range(0, self.num_examples, 1024)]
    return np.concatenate(chunks).astype(np.int32)

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Number of full global batches in one epoch (the remainder is dropped).

    Args:
      global_batch_size: examples per step over all processes.

    Returns:
      num_examples // global_batch_size.
    """
    return self.num_examples // global_batch_size

  def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
    """The permutation of all example indices that epoch `epoch` visits: int64 (num_examples,)."""
    return np.random.default_rng(epoch_seed(seed, epoch)).permutation(self.num_examples)

  def partner_order(self, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s partners: the anchor at position p of `epoch_order` is paired with example [p]."""
    return np.random.default_rng(partner_seed(seed, epoch)).permutation(self.num_examples)

  def train_batches(self, *, global_batch_size: int, seed: int, start_step: int = 0, process_index: int = 0,
                    process_count: int = 1, partners: bool = False) -> Iterator[dict]:
    """Endless training batches; see the module docstring for the contract.

    Args:
      global_batch_size: examples per step over all processes.
      seed: fixes the order of every epoch.
      start_step: the first step to produce (the number of steps already taken).
      process_index: this process's slice of each global batch.
      process_count: number of processes.
      partners: also yield each anchor's random partner image ('partner', see `partner_order`).

    Returns:
      An iterator of {'image': uint8 (B, H, W, C), 'label': int32 (B,)} (and 'partner': uint8 (B, H, W, C)),
      B = global_batch_size // process_count.
    """
    local = local_batch_size(global_batch_size, process_count)
    check_fits(global_batch_size, self.num_examples, self.name)
    steps = self.steps_per_epoch(global_batch_size)

    def batches():
      epoch, offset = divmod(start_step, steps)
      while True:
        order = self.epoch_order(seed, epoch)
        mates = self.partner_order(seed, epoch) if partners else None
        for step in range(offset, steps):
          start = step * global_batch_size + process_index * local
          images, labels = self._gather(order[start:start + local])
          batch = {'image': images, 'label': labels}
          if partners:
            batch['partner'] = self._gather(mates[start:start + local])[0]
          yield batch
        epoch, offset = epoch + 1, 0

    return batches()

  def eval_batches(self, *, global_batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
    """One pass in index order, the last batch padded; see the module docstring.

    Args:
      global_batch_size: examples per step over all processes.
      process_index: this process's slice of each global batch.
      process_count: number of processes.

    Returns:
      An iterator of {'image': uint8 (B, H, W, C), 'label': int32 (B,), 'mask': bool (B,)}.
    """
    local = local_batch_size(global_batch_size, process_count)

    def batches():
      for b in range(eval_batch_count(self.num_examples, global_batch_size)):
        start = b * global_batch_size + process_index * local
        real = np.arange(start, min(start + local, self.num_examples))
        images, labels = self._gather(real)
        pad = local - len(real)
        yield {'image': np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.uint8)]),
               'label': np.concatenate([labels, np.full((pad,), -1, np.int32)]),
               'mask': np.arange(local) < len(real)}

    return batches()


class InMemorySource(_IndexedSource):
  """A split held as numpy arrays (tests, small data, and training without TensorFlow)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int | None = None,
               name: str = 'memory'):
    """Wraps the arrays (no copy).

    Args:
      images: uint8 (N, H, W, C).
      labels: int (N,); -1 marks an unlabelled example.
      num_classes: size of the label space; max(labels) + 1 when None.
      name: shown in error messages.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise UserError(f'{name}: images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}; '
                      'convert them with np.asarray(x, np.uint8)')
    if labels.shape != images.shape[:1]:
      raise UserError(f'{name}: {len(images)} images but labels of shape {labels.shape}; pass one label each')
    self.images, self.labels = images, labels.astype(np.int32)
    self.num_examples = len(images)
    if num_classes is None:
      num_classes = max(int(labels.max(initial=-1)) + 1, 0)
    self.num_classes = int(num_classes)
    self.image_shape = tuple(images.shape[1:])
    self.name = name

  def _gather(self, indices):
    return self.images[indices], self.labels[indices]

  def all_labels(self) -> np.ndarray:
    return self.labels


class SyntheticSource(_IndexedSource):
  """Random uint8 images and labels, each a pure function of (seed, index): no data, no TensorFlow."""

  def __init__(self, num_examples: int, image_shape: tuple, num_classes: int, seed: int = 0):
    """Describes the synthetic split; nothing is generated until a batch is asked for.

    Args:
      num_examples: size of the split.
      image_shape: (H, W, C).
      num_classes: labels are uniform over range(num_classes).
      seed: fixes every image and label.
    """
    if num_examples <= 0 or num_classes <= 0 or len(image_shape) != 3:
      raise UserError(f'synthetic data needs num_examples > 0, num_classes > 0 and an (H, W, C) shape; got '
                      f'{num_examples}, {num_classes}, {tuple(image_shape)}')
    self.num_examples, self.num_classes = int(num_examples), int(num_classes)
    self.image_shape = tuple(int(d) for d in image_shape)
    self.seed = seed
    self.name = 'synthetic'

  def _gather(self, indices):
    images = np.empty((len(indices), *self.image_shape), np.uint8)
    labels = np.empty((len(indices),), np.int32)
    for row, i in enumerate(indices):
      rng = np.random.default_rng([self.seed % 2**64, int(i)])
      labels[row] = rng.integers(self.num_classes)
      images[row] = rng.integers(0, 256, self.image_shape, np.uint8)
    return images, labels


class SubsetSource(_IndexedSource):
  """A deterministic subset of another in-memory or synthetic source (`subset_indices`), as a source."""

  def __init__(self, base: _IndexedSource, *, seed: int, num: int | None = None,
               per_class: int | None = None):
    """Chooses the subset (no images are copied).

    Args:
      base: the whole split.
      seed: fixes the subset.
      num: keep this many random examples (exclusive with per_class).
      per_class: keep this many random examples of every class.
    """
    labels = base.all_labels() if per_class else None
    self.base, self.indices = base, subset_indices(base.num_examples, labels, seed=seed, num=num,
                                                    per_class=per_class)
    self.num_examples, self.num_classes = len(self.indices), base.num_classes
    self.image_shape, self.name = base.image_shape, base.name

  def _gather(self, indices):
    return self.base._gather(self.indices[indices])  # pylint: disable=protected-access


def subset_indices(num_examples: int, labels: np.ndarray | None, *, seed: int, num: int | None = None,
                   per_class: int | None = None) -> np.ndarray:
  """A deterministic subset of a split: `num` examples at random, or `per_class` examples of every class.

  Args:
    num_examples: size of the split.
    labels: int (num_examples,); needed for `per_class` (unlabelled examples, label < 0, are never chosen).
    seed: fixes the subset.
    num: number of examples to keep (exclusive with per_class).
    per_class: examples to keep of each class present in `labels`.

  Returns:
    Sorted int64 indices into the split.
  """
  if (num is None) == (per_class is None):
    raise UserError('give exactly one of num= and per_class= to choose a subset')
  order = np.random.default_rng(seed).permutation(num_examples)
  if num is not None:
    if not 0 < num <= num_examples:
      raise UserError(f'subset of {num} examples asked from a split of {num_examples}; use 1..{num_examples}')
    return np.sort(order[:num])
  labels = np.asarray(labels)[order]
  if not np.any(labels >= 0):
    raise UserError('per-class subset of a split without labels; use a number of examples (num=) instead')
  chosen = []
  for c in np.unique(labels[labels >= 0]):
    of_class = order[labels == c]
    if len(of_class) < per_class:
      raise UserError(f'class {c} has only {len(of_class)} examples, fewer than per_class={per_class}')
    chosen.append(of_class[:per_class])
  return np.sort(np.concatenate(chosen))
