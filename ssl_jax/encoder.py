"""The public encoder API: a trained encoder loaded from a workdir or checkpoint, ready to embed images.

    encoder = ssl_jax.load_encoder('runs/quickstart')
    features = encoder.embed(images)   # uint8 or [0, 1] float (N, H, W, C) -> float32 (N, feature_dim)

The model is rebuilt from the config saved with the checkpoint; only its parameters and BatchNorm statistics
are read (not the optimizer or method state), and it always runs in inference mode (BatchNorm running
statistics), so an image's feature does not depend on the other images of the call.
"""
import functools
import pathlib
import warnings

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from ssl_jax import config_schema, methods, paths
from ssl_jax.errors import UserError
from ssl_jax.evaluate import exits
from ssl_jax.evaluate.features import inference_features



def _step_dir(path: pathlib.Path) -> pathlib.Path:
  """`<workdir>/checkpoints/<step>` for a workdir (its newest step), a checkpoints folder or a step folder."""
  if not path.exists():
    raise UserError(f'{path} does not exist; pass a workdir or a <workdir>/checkpoints/<step> directory')
  if not path.is_dir():
    raise UserError(f'{path} is a file; pass a workdir or a <workdir>/checkpoints/<step> directory')
  if (path / 'state').is_dir():
    return path
  folder = path / 'checkpoints' if (path / 'checkpoints').is_dir() else path
  # Orbax names a complete step by its number; unfinished saves carry a temporary suffix.
  steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / 'state').is_dir()]
  if not steps:
    raise UserError(f'no checkpoint in {path}; pass a workdir that holds checkpoints/<step>/ '
                    '(train it first with python -m ssl_jax.main)')
  return folder / str(max(steps))


def _unwrap(tree):
  """Orbax saves each nnx.Variable as {'value': array}; this leaves the arrays."""
  if isinstance(tree, dict):
    if set(tree) == {'value'}:
      return tree['value']
    return {k: _unwrap(v) for k, v in tree.items()}
  return tree


def read_checkpoint(path) -> tuple[ml_collections.ConfigDict, dict, pathlib.Path]:
  """Reads the config and the model state (params and batch stats only) of a checkpoint.

  Args:
    path: a workdir (its newest checkpoint is used), its `checkpoints` folder, or one step directory;
      relative (to the current directory), absolute or starting with `~`.

  Returns:
    (config, state, step_dir): state is {'params': nested dict, 'batch_stats': nested dict} of numpy arrays.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (slow import, only needed here)
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top  (imports orbax)
  step_dir = _step_dir(paths.user_path(path))
  if step_dir != paths.user_path(path):  # given a workdir: its newest readable checkpoint, with a warning
    return checkpoint.read_newest(step_dir.parent, read_checkpoint)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      verbosity = logging.get_verbosity()
      logging.set_verbosity(logging.ERROR)  # orbax warns about a metadata file that sub-items never have
      try:
        with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
          config = checkpointer.restore(step_dir / 'config')
        with ocp.PyTreeCheckpointer() as checkpointer:
          meta = checkpointer.metadata(step_dir / 'state').item_metadata
          wanted = {'params': meta['params'], 'batch_stats': meta['batch_stats']}
          # numpy, not the saved shardings: the checkpoint may come from another topology.
          args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
          state = checkpointer.restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
              item=wanted, restore_args=args, partial_restore=True))
      finally:
        logging.set_verbosity(verbosity)
  except Exception as e:  # noqa: BLE001  (orbax raises many types for unreadable files)
    raise UserError(f'the checkpoint at {step_dir} is unreadable ({checkpoint.describe_error(e)}); pass '
                    'another step directory or workdir') from None
  return ml_collections.ConfigDict(config), _unwrap(dict(state)), step_dir


def _stem_kernel(tree):
  """The encoder's input kernel (kh, kw, in_channels, out) in a state tree: a ResNet's encoder/stem_conv/kernel
  or a ViT's encoder/patch_kernel, or inside a sub-model (the online branch of BYOL, SimSiam and MoCo); None
  when there is none."""
  if not isinstance(tree, dict):
    return None
  encoder = tree.get('encoder')
  if isinstance(encoder, dict):
    stem = encoder.get('stem_conv')
    kernel = stem.get('kernel') if isinstance(stem, dict) else encoder.get('patch_kernel')
    if hasattr(kernel, 'shape'):
      return kernel
  return next((k for k in map(_stem_kernel, tree.values()) if k is not None), None)


def build_from_checkpoint(path):
  """The saved model, rebuilt from its config and filled with the checkpoint's params and batch stats.

  Args:
    path: as for `read_checkpoint`.

  Returns:
    (config, model): the ConfigDict and the method's nnx model (encoder, heads, input normalisation).
  """
  config, state, step_dir = read_checkpoint(path)
  config_schema.check_saved(config, step_dir)
  # MoCo v3's frozen patch projection is kept beside the batch statistics, not with the params.
  kernel = _stem_kernel(state['params'])
  kernel = _stem_kernel(state['batch_stats']) if kernel is None else kernel
  if kernel is None:
    raise UserError(f'the checkpoint at {step_dir} holds no encoder stem; it is not an ssl_jax encoder')
  method = methods.get_method(config)
  # The stem kernel is (kh, kw, in_channels, out): the channels the model was trained on.
  # Shapes only: every array is replaced by the saved one below.
  model = nnx.eval_shape(lambda: method.build_model(config, in_channels=int(kernel.shape[-2]),
                                                    rngs=nnx.Rngs(config.seed)))
  params, batch_stats = nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat)
  try:
    for target, saved in ((params, state['params']), (batch_stats, state['batch_stats'])):
      if len(dict(nnx.to_flat_state(target))) != len(jax.tree.leaves(saved)):
        raise ValueError('different number of arrays')
      nnx.replace_by_pure_dict(target, saved)
  except ValueError as e:
    raise UserError(f'the checkpoint at {step_dir} does not fit the model its config builds ({e}); '
                    'it was written by another version of ssl_jax') from None
  nnx.update(model, params, batch_stats)
  return config, model


class Encoder:
  """A frozen encoder in inference mode: `embed` maps images to features."""

  def __init__(self, config, model, *, batch_size: int = 256):
    """Wraps a model built by a method (see `load_encoder`).

    Args:
      config: the run's ConfigDict.
      model: the method's nnx model; it must have `features(images, *, train)` and an `encoder.out_dim`.
      batch_size: the most images run through the model at once.
    """
    self.config = config
    self.image_size = int(config.data.image_size)
    self.batch_size = batch_size
    self.in_channels = int(model.encoder.in_channels)
    self.feature_dim = int(model.encoder.out_dim)
    self.graphdef, self.params, self.batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    self._features = jax.jit(functools.partial(inference_features, self.graphdef, resolution=self.image_size))

  def exits(self) -> dict:
    """{exit name: Encoder} of a multi-exit model (SelfCon), backbone first; {'backbone': self} otherwise.

    The encoders share the loaded parameters (nothing is copied).
    """
    model = nnx.merge(self.graphdef, self.params, self.batch_stats)
    names = exits.exit_names(model)
    if len(names) == 1:
      return {names[0]: self}
    return {name: Encoder(self.config, model.exit_model(name), batch_size=self.batch_size) for name in names}

  def apply(self, params, batch_stats, images):
    """The pure forward pass (traceable): features (N, D) of float images in [0, 1] at `image_size`."""
    return nnx.merge(self.graphdef, params, batch_stats).features(images, train=False)

  def _check(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != self.in_channels:
      raise UserError(f'embed wants images (N, H, W, {self.in_channels}), got shape {images.shape}; '
                      'add a batch axis or convert the channels the encoder was trained on')
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
      raise UserError(f'embed wants uint8 images or floats in [0, 1], got {images.dtype}')
    return images

  def embed(self, images) -> np.ndarray:
    """Features of any number of images.

    Args:
      images: (N, H, W, C) uint8 in [0, 255] or float in [0, 1]; each is centre-cropped to a square and
        resized to the training resolution `config.data.image_size`.

    Returns:
      (N, feature_dim) float32 numpy array.
    """
    images = self._check(images)
    n = len(images)
    if n == 0:
      return np.zeros((0, self.feature_dim), np.float32)
    # Chunks of a power-of-two size up to batch_size, the last one padded: a handful of compiled shapes.
    chunk = min(self.batch_size, 1 << (n - 1).bit_length())
    out = []
    for start in range(0, n, chunk):
      part = images[start:start + chunk]
      padded = np.concatenate([part, np.zeros((chunk - len(part), *part.shape[1:]), part.dtype)])
      out.append(np.asarray(self._features(self.params, self.batch_stats, padded))[:len(part)])
    return np.concatenate(out).astype(np.float32)


def load_encoder(path, *, batch_size: int = 256) -> Encoder:
  """Loads the encoder of a training run.

  Args:
    path: a workdir (its newest checkpoint), its `checkpoints` folder, or `<workdir>/checkpoints/<step>`.
    batch_size: the most images `embed` runs through the model at once.

  Returns:
    An `Encoder` with `.config`, `.feature_dim` and `.embed(images)`.
  """
  config, model = build_from_checkpoint(path)
  return Encoder(config, model, batch_size=batch_size)

