r"""Offline linear evaluation of a trained encoder: `python -m ssl_jax.evaluate.linear_cli --workdir DIR`.

A linear classifier is trained on the features of the frozen encoder (loaded with `ssl_jax.load_encoder`, in
inference mode, never updated) and scored on the eval split after every epoch. Two protocols:
  frozen_features  features of the un-augmented images, extracted once (fast; the default)
  augmented        features recomputed every epoch from random-resized crops and flips of the train images
                   (the protocol of SimCLR and most papers; the test images stay un-augmented)
The top-1 / top-5 of the last epoch and of the best epoch, and the protocol, are printed and merged into
`<workdir>/results.json` under 'linear_eval'. A multi-exit model (SelfCon) gets one classifier per exit and
their ensemble (mean of the logits): `sub_top1`, `ensemble_top1`, ... beside the backbone's scores.
Override the defaults of `default_config` with --config.a=b:
  python -m ssl_jax.evaluate.linear_cli --workdir runs/quickstart --config.optimizer=lars --config.lr=0.5
A paper's protocol is one flag, `--config.preset=NAME` (PRESETS): it replaces the defaults of the fields it
names, and fields given on the command line keep the given value. `repmix`: the RepMix code's (Sharma et al.,
2024) frozen backbone features, AdamW lr 0.02 without weight decay, 100 epochs, batch = the run's batch size,
no standardisation, the last epoch reported (its per-step periodic cosine is replaced by one decay).
Exit codes: 0 done; 2 bad input (one line on stderr).
"""
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssl_jax import data, paths, progress
from ssl_jax.data import augment
from ssl_jax.errors import UserError
from ssl_jax.evaluate import exits
from ssl_jax.evaluate.linear_probe import (OPTIMIZERS, linear_predict, topk_accuracy,
                                           train_linear_probe)

PROTOCOLS = ('frozen_features', 'augmented')
# Published protocols; batch_size 0 stands for the pretraining run's batch size.
PRESETS = {
    'repmix': dict(protocol='frozen_features', epochs=100, optimizer='adamw', lr=0.02, weight_decay=0.0,
                   batch_size=0, standardize=False),
}


def default_config() -> ml_collections.ConfigDict:
  """The probe's defaults: SGD with momentum, cosine decay, standardised features, 100 epochs.

  Returns:
    ConfigDict: epochs, batch_size, optimizer ('sgd' | 'lars' | 'adamw'), lr, weight_decay, momentum,
    protocol ('frozen_features' | 'augmented'), crop_scale and flip_prob (the 'augmented' views;
    flip_prob -1 = the run's augment.flip_prob, e.g. 0 for digits),
    standardize, train_split and eval_split ('' = the run's data.train_split / data.eval_split),
    embed_batch_size (images per forward pass), seed, and preset ('' or a name of PRESETS).
  """
  return ml_collections.ConfigDict(dict(  # noqa: C408  (keyword style reads like a config)
      epochs=100, batch_size=256, optimizer='sgd', lr=0.1, weight_decay=0.0, momentum=0.9,
      protocol='frozen_features', crop_scale=(0.08, 1.0), flip_prob=-1.0, standardize=True,
      train_split='', eval_split='', embed_batch_size=256, seed=0, preset=''))


def apply_preset(cfg, run_config, *, presets=None, default=None) -> ml_collections.ConfigDict:
  """`cfg` with `cfg.preset`'s values in every field it names that is still at its default.

  Args:
    cfg: a `default_config()`, possibly changed (e.g. on the command line).
    run_config: the pretraining run's config (for the batch size).
    presets: {name: {field: value}}; this module's PRESETS when None (the fine-tuning CLI passes its own).
    default: the function giving the defaults `cfg` started from; this module's `default_config` when None.

  Returns:
    A new ConfigDict; `cfg` itself is unchanged.
  """
  presets, default = presets or PRESETS, (default or default_config)()
  out = ml_collections.ConfigDict(cfg.to_dict())
  if not cfg.preset:
    return out
  _check_choice('preset', cfg.preset, tuple(presets))
  for field, value in presets[cfg.preset].items():
    if cfg[field] == default[field]:  # a value given on the command line wins
      out[field] = run_config.batch_size if field == 'batch_size' and value == 0 else value
  return out


# ----------------------------------------------------------------------------------------------- classifier
def _check_choice(field: str, value: str, options: tuple[str, ...]) -> None:
  if value not in options:
    raise UserError(f'unknown {field} {value!r}; use --config.{field}= one of {", ".join(options)}')


def train_classifier(train_features, train_labels, test_feats, test_labels, *, num_classes: int, cfg) -> dict:
  """Trains a linear classifier (`linear_probe.train_linear_probe`), scoring the test split after every epoch.

  Args:
    train_features: (N, D) features, or a function epoch -> (N, D) features (recomputed each epoch).
    train_labels: (N,) integer labels in [0, num_classes).
    test_feats: (M, D) test features.
    test_labels: (M,) test labels.
    num_classes: number of classes C.
    cfg: `default_config()` (epochs, batch_size, optimizer, lr, weight_decay, momentum, standardize, seed).

  Returns:
    {'top1', 'top5' (last epoch), 'best_top1', 'best_top5', 'best_epoch' (1-based), 'top1_per_epoch'}.
  """
  _check_choice('optimizer', cfg.optimizer, OPTIMIZERS)
  history, phase = [], progress.Progress('linear evaluation: epoch', cfg.epochs)

  def score(params):
    history.append(topk_accuracy(linear_predict(params, test_feats), test_labels))
    phase.update(len(history), f'top1 {history[-1]["top1"]:.4f}')

  train_linear_probe(train_features, train_labels, num_classes=num_classes, epochs=cfg.epochs,
                     batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                     optimizer=cfg.optimizer, momentum=cfg.momentum, seed=cfg.seed, standardize=cfg.standardize,
                     after_epoch=score)
  best = max(range(len(history)), key=lambda i: history[i]['top1'])  # the first of equally good epochs
  return {**history[-1], 'best_top1': history[best]['top1'], 'best_top5': history[best]['top5'],
          'best_epoch': best + 1, 'top1_per_epoch': [h['top1'] for h in history]}


# ----------------------------------------------------------------------------------------------- features
def run_flip_prob(cfg, run_config) -> float:
  """`cfg.flip_prob`, or the pretraining run's `augment.flip_prob` when it is negative."""
  return float(run_config.augment.flip_prob if cfg.flip_prob < 0 else cfg.flip_prob)


def _labelled_batches(encoder, split: str, batch_size: int):
  """(images uint8 (B, H, W, C), labels (B,)) of the labelled examples of `split`, in a fixed order."""
  source = data.get_source(encoder.config.data, split=split, train=False)
  count = data.sources.eval_batch_count(source.num_examples, batch_size)
  batches = source.eval_batches(global_batch_size=batch_size)
  for batch in progress.counted(batches, f'features of {split!r}: batch', count):
    keep = np.asarray(batch['mask'], bool) & (np.asarray(batch['label']) >= 0)
    if keep.any():
      yield np.asarray(batch['image'])[keep], np.asarray(batch['label'])[keep]


def _augmented_fn(encoder, cfg):
  """Jitted (images uint8, key) -> features of random-resized crops and flips, encoder in inference mode."""
  views = ml_collections.ConfigDict(dict(crop_scale=tuple(cfg.crop_scale), crop_ratio=(3 / 4, 4 / 3),
                                         flip_prob=run_flip_prob(cfg, encoder.config)))

  def view(key, image):
    k_crop, k_flip = jax.random.split(key)
    image = augment.random_resized_crop(k_crop, image, encoder.image_size, views.crop_scale, views.crop_ratio)
    return augment.random_flip(k_flip, image, views.flip_prob)

  @jax.jit
  def features(params, batch_stats, images, key):
    x = jax.vmap(view)(jax.random.split(key, images.shape[0]), images.astype(jnp.float32) / 255.0)
    return encoder.apply(params, batch_stats, x)

  return features


def split_features(encoder, split: str, batch_size: int, augmented=None, key=None):
  """Features (N, D) and labels (N,) of the labelled images of `split`; with `augmented`, of random views."""
  feats, labels = [], []
  for i, (images, y) in enumerate(_labelled_batches(encoder, split, batch_size)):
    if augmented is None:
      feats.append(encoder.embed(images))
    else:
      padded = np.concatenate([images, np.zeros((batch_size - len(images), *images.shape[1:]), np.uint8)])
      f = augmented(encoder.params, encoder.batch_stats, padded, jax.random.fold_in(key, i))
      feats.append(np.asarray(f)[:len(images)])
    labels.append(y)
  if not feats:
    raise UserError(f'split {split!r} of {encoder.config.data.name} has no labelled example; choose a '
                    'labelled split with --config.train_split / --config.eval_split')
  return np.concatenate(feats), np.concatenate(labels)


# ----------------------------------------------------------------------------------------------- the run
def _check(cfg) -> None:
  _check_choice('protocol', cfg.protocol, PROTOCOLS)
  if cfg.preset:
    _check_choice('preset', cfg.preset, tuple(PRESETS))
  _check_choice('optimizer', cfg.optimizer, OPTIMIZERS)
  if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.embed_batch_size < 1:
    raise UserError('epochs, batch_size and embed_batch_size must be positive')


def merge_results(workdir, key: str, results: dict) -> pathlib.Path:
  """Writes `results` under `key` into `<workdir>/results.json`, keeping every other key there."""
  path = pathlib.Path(workdir) / 'results.json'
  merged = json.loads(path.read_text()) if path.exists() else {}
  merged[key] = results
  path.write_text(json.dumps(merged, indent=2))
  return path


def _probe_data(encoder, cfg, train_split: str, eval_split: str):
  """(train features or epoch -> features, train labels, test features, test labels) of one encoder."""
  test_x, test_y = split_features(encoder, eval_split, cfg.embed_batch_size)
  train_x, train_y = split_features(encoder, train_split, cfg.embed_batch_size)
  features = train_x
  if cfg.protocol == 'augmented':
    fn, key = _augmented_fn(encoder, cfg), jax.random.key(cfg.seed + 1)
    features = lambda epoch: split_features(encoder, train_split, cfg.embed_batch_size, fn,
                                            jax.random.fold_in(key, epoch))[0]
  return features, train_y, test_x, test_y


def _exit_classifiers(probe_data: dict, *, num_classes: int, cfg) -> dict:
  """A classifier per exit and the ensemble: the backbone's scores, flat `<exit>_top1`... keys and `exits`."""
  _, train_y, _, test_y = probe_data['backbone']
  per_exit = exits.probe_exits({n: d[0] for n, d in probe_data.items()}, train_y,
                               {n: d[2] for n, d in probe_data.items()}, test_y, num_classes=num_classes,
                               epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, optimizer=cfg.optimizer, momentum=cfg.momentum,
                               seed=cfg.seed, standardize=cfg.standardize)
  return {**per_exit['backbone'], **exits.flat_scores(per_exit), 'exits': per_exit}


def evaluate_linear(workdir, cfg=None, *, encoder=None) -> dict:
  """Linear evaluation of the encoder of `workdir`; the results are merged into its results.json.

  Args:
    workdir: a training run's workdir (its newest checkpoint is evaluated) or one of its checkpoints/<step>
      directories; relative, absolute or with `~`. results.json is written in the workdir.
    cfg: `default_config()` with any changes; the defaults when None.
    encoder: an already loaded `ssl_jax.load_encoder(workdir)` (it is only read, never changed).

  Returns:
    {'top1', 'top5', 'best_top1', 'best_top5', 'best_epoch', 'top1_per_epoch', 'protocol', ...}; for a
    multi-exit model these are the backbone's, beside '<exit>_top1', '<exit>_best_top1' for every other exit
    and 'ensemble', and 'exits' ({exit or 'ensemble': the same keys as the backbone's}).
  """
  from ssl_jax.encoder import load_encoder  # pylint: disable=g-import-not-at-top  (keeps flag errors fast)
  cfg = cfg or default_config()
  _check(cfg)
  progress.note(f'linear evaluation of {paths.user_path(workdir)}: loading the encoder')
  encoder = encoder or load_encoder(workdir, batch_size=cfg.embed_batch_size)
  cfg = apply_preset(cfg, encoder.config)
  run_data = encoder.config.data
  train_split, eval_split = cfg.train_split or run_data.train_split, cfg.eval_split or run_data.eval_split
  num_classes = data.get_source(run_data, split=eval_split, train=False).num_classes
  # Multi-exit models (SelfCon) get a probe per exit and on the exits' ensemble; others just the backbone's.
  probe_data = {name: _probe_data(e, cfg, train_split, eval_split)
                for name, e in encoder.exits().items()}
  features, train_y, test_x, test_y = probe_data['backbone']
  if len(probe_data) == 1:
    scores = train_classifier(features, train_y, test_x, test_y, num_classes=num_classes, cfg=cfg)
  else:
    scores = _exit_classifiers(probe_data, num_classes=num_classes, cfg=cfg)
  views = ' (random-resized crop + flip, recomputed every epoch)' if cfg.protocol == 'augmented' else ''
  preset = f'{cfg.preset} preset, ' if cfg.preset else ''
  protocol = (f'{preset}{cfg.protocol}: linear classifier ({cfg.optimizer}, lr {cfg.lr}, cosine, '
              f'{cfg.epochs} epochs, batch {cfg.batch_size}) on {"standardised " if cfg.standardize else ""}'
              f'features of {len(train_y)} {train_split!r} images{views}, scored on {len(test_y)} '
              f'{eval_split!r} images; encoder frozen, in inference mode')
  if len(probe_data) > 1:
    protocol += (f'; one classifier per exit ({", ".join(probe_data)}) and their ensemble (mean of the '
                 'logits), under `exits`; top1/top5 are the backbone\'s')
  results = {**scores, 'protocol': protocol, 'config': cfg.to_dict()}
  merge_results(paths.workdir_of(workdir), 'linear_eval', results)
  return results


def run_cli(default, evaluate, key: str) -> None:
  """The shared command line of the evaluation CLIs: --workdir DIR [--config.a=b ...]; exit 2 on bad input."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  bad_flag = (flags.Error, ValueError, TypeError, AttributeError, KeyError)

  def fail(message):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)

  try:  # the config flag reads its --config.a=b overrides from sys.argv as soon as it is defined
    config = config_flags.DEFINE_config_dict('config', default(), 'Evaluation settings.')
  except bad_flag as e:
    fail(f'unknown --config field {str(e).strip().splitlines()[-1]}; the fields are {", ".join(default())}')
  workdir = flags.DEFINE_string('workdir', None, 'The training run to evaluate: its workdir (the newest '
                                'checkpoint) or one of its checkpoints/<step> directories.')
  verbose = flags.DEFINE_bool('verbose', False, 'Show the INFO logs of TensorFlow, tfds and orbax.')

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except bad_flag as e:
      fail(f'{str(e).strip().splitlines()[-1]} (see --helpfull)')

  def main(argv):
    del argv
    progress.set_verbosity(verbose.value)
    if not workdir.value:
      fail('--workdir is required: the directory of a training run')
    try:
      results = evaluate(workdir.value, config.value)
    except UserError as e:
      fail(str(e))
    shown = {k: v for k, v in results.items() if isinstance(v, (int, float, str))}
    shown = [f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}' for k, v in shown.items()]
    print(f'{key}: ' + ', '.join(shown))

  app.run(main, flags_parser=parse)


if __name__ == '__main__':
  run_cli(default_config, evaluate_linear, 'linear_eval')
