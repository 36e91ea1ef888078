r"""Fine-tuning of a trained encoder: `python -m ssl_jax.evaluate.finetune_cli --workdir DIR [--config.a=b ...]`.

The pretrained model is rebuilt from the checkpoint, a new linear head is put on its features, and the encoder
and head are trained together with SGD + momentum on a cosine schedule, on random-resized crops and flips of
the train split, optionally with mixup (`mixup_alpha` > 0). The projector and any other pretraining head are
not used and not updated. `frozen_stages` = k >= 0 freezes the stem and the first k stages of the encoder:
their weights get zero updates and their BatchNorm running statistics are kept at the pretrained values (in
the forward pass of training they still normalise with batch statistics, like every BatchNorm here); -1 trains
all.

It runs on the same mesh as the trainer: parameters replicated, batches split over the `data` axis. After each
epoch the model (inference mode) is scored on the eval split; the last and the best epoch's top-1 / top-5 and
the protocol are printed and merged into `<workdir>/results.json` under 'finetune'.

Transfer and warm-up (S3L's small architecture, Cao & Wu, arXiv 2103.13559): `num_stages` = 0 fine-tunes the
architecture with every stage although the pretraining kept fewer (`model.num_stages`): the model is rebuilt
with all stages, every pretrained encoder variable (stem and the pretrained stages, params and BatchNorm
statistics) is copied to the same place, and the stages the pretraining did not have keep their new random
initialisation (`transfer`). Then, with `warmup_epochs` > 0, the "conv5 warm-up" of S3L's main_freeze.py
trains only the new stages and a new head with labels (stem and pretrained stages frozen: zero updates; their
BatchNorm running statistics still update, `warmup_frozen_bn_stats='update'`, as PyTorch's train mode does in
that code) at a constant `warmup_lr`, without mixup; the full fine-tuning follows with a newly initialised
head, as S3L's main.py drops the warm-up's fc. All in one command. `bn_group_size` rebuilds the model with
other ghost-BatchNorm groups (S3L fine-tunes batch 64 on 4 GPUs: 16 per group).

Presets (`--config.preset=NAME`, PRESETS; fields given on the command line keep the given value): `s3l`, the
fine-tuning of S3L's main.py / main_train_mixup.sh: 224 px, batch 64 (BatchNorm groups of 16), SGD momentum
0.9, lr 0.1 with a per-step cosine to 0, weight decay 5e-4 on every parameter, 120 epochs, mixup alpha 1,
Resize(256) + RandomCrop(224) + flip (`crop='resize_crop'`), best and last epoch's top-1; the full
ResNet with the 10-epoch conv5 warm-up at lr 0.1 when the pretraining dropped the last stage.
Exit codes: 0 done; 2 bad input (one line on stderr).
"""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from ssl_jax import data, methods, models, paths, progress, sharding
from ssl_jax.data import augment
from ssl_jax.errors import UserError
from ssl_jax.evaluate import linear_cli
from ssl_jax.evaluate.linear_probe import topk_accuracy

_CROP_FRACTION = 0.875  # 'resize_crop': the crop is 0.875 of the resized shorter side (224 of 256)


SCHEDULES = ('cosine', 'constant')
FROZEN_BN_STATS = ('update', 'keep')
# Published protocols (module docstring).
PRESETS = {
    's3l': dict(image_size=224, batch_size=64, lr=0.1, momentum=0.9, weight_decay=5e-4, epochs=120,
                schedule='cosine', mixup_alpha=1.0, crop='resize_crop', flip_prob=0.5,
                exclude_bias_and_norm=False, bn_group_size=16, num_stages=0, warmup_epochs=10, warmup_lr=0.1),
}


def default_config() -> ml_collections.ConfigDict:
  """Fine-tuning defaults.

  Returns:
    ConfigDict: epochs, batch_size (global), lr (peak), schedule ('cosine' per step to 0 | 'constant'),
    momentum, weight_decay, exclude_bias_and_norm (decay kernels only), mixup_alpha (0 = off), frozen_stages
    (-1 = none, k = stem + first k stages), image_size (0 = the run's data.image_size), crop
    ('random_resized' with crop_scale | 'resize_crop': shorter side to S / 0.875, random S x S), flip_prob
    (-1 = the run's augment.flip_prob), num_stages (-1 = as pretrained, 0 = every stage of the architecture,
    k = the first k; stages the pretraining lacked are newly initialised), bn_group_size (-1 = the run's),
    warmup_epochs / warmup_lr / warmup_frozen_bn_stats (the conv5 warm-up after a transfer that added
    stages), use_subset (the run's data.subset_* apply to the train split), train_split / eval_split
    ('' = the run's), eval_batch_size, seed and preset ('' or a name of PRESETS).
  """
  return ml_collections.ConfigDict(dict(  # noqa: C408  (keyword style reads like a config)
      epochs=30, batch_size=128, lr=0.05, schedule='cosine', momentum=0.9, weight_decay=5e-4,
      exclude_bias_and_norm=True, mixup_alpha=0.0, frozen_stages=-1, image_size=0, crop='random_resized',
      crop_scale=(0.08, 1.0), flip_prob=-1.0, num_stages=-1, bn_group_size=-1, warmup_epochs=0,
      warmup_lr=0.1, warmup_frozen_bn_stats='update', use_subset=True, train_split='', eval_split='',
      eval_batch_size=256, seed=0, preset=''))


def apply_preset(cfg) -> ml_collections.ConfigDict:
  """`cfg` with `cfg.preset`'s values in every field it names that is still at its default (a copy)."""
  return linear_cli.apply_preset(cfg, None, presets=PRESETS, default=default_config)


class Classifier(nnx.Module):
  """A pretrained model's features followed by a new linear head."""

  def __init__(self, backbone, num_classes: int, *, rngs: nnx.Rngs):
    self.backbone = backbone
    self.head = nnx.Linear(backbone.encoder.out_dim, num_classes, rngs=rngs)

  def __call__(self, images, *, train: bool):
    """Logits (N, C) of float images in [0, 1]."""
    return self.head(self.backbone.features(images, train=train))


def _frozen(path, frozen_stages: int) -> bool:
  """Whether the variable at `path` (keys of the Classifier's state) stays at its pretrained value."""
  keys = [str(getattr(k, 'key', k)) for k in path]
  if keys[0] == 'head':
    return False
  if 'encoder' not in keys:
    return True  # projector and other pretraining heads: unused here
  # The encoder sits at backbone.encoder (SimCLR, SupCon) or backbone.online.encoder (BYOL, SimSiam, MoCo).
  inside = keys[keys.index('encoder') + 1:]
  part = inside[0]
  in_frozen_stage = part == 'stages' and int(inside[1]) < frozen_stages
  return frozen_stages >= 0 and (part.startswith('stem') or in_frozen_stage)


def _labels(tree, frozen_stages: int):
  label = lambda path, _: 'frozen' if _frozen(path, frozen_stages) else 'train'
  return jax.tree_util.tree_map_with_path(label, tree)


def make_optimizer(params, cfg, total_steps: int) -> optax.GradientTransformation:
  """SGD + momentum on `cfg.schedule` for the trained variables, zero updates for the frozen ones."""
  # Kernels only, or every parameter (PyTorch's SGD weight_decay, as S3L's code).
  decay = jax.tree.map(lambda p: p.ndim > 1 or not cfg.exclude_bias_and_norm, params)
  schedule = cfg.lr
  if cfg.schedule == 'cosine':
    schedule = optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1))
  sgd = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay),
                    optax.sgd(schedule, momentum=cfg.momentum))
  return optax.multi_transform({'train': sgd, 'frozen': optax.set_to_zero()},
                               _labels(params, cfg.frozen_stages))


def _train_step(graphdef, tx, cfg, run_config, frozen_stats, image_size: int):
  views = augment.default_config()
  views.update(crop_scale=tuple(cfg.crop_scale), flip_prob=linear_cli.run_flip_prob(cfg, run_config),
               jitter_prob=0.0, grayscale_prob=0.0)
  if cfg.crop == 'resize_crop':  # fixed-size data: a random square of 0.875 of the side (exact for squares)
    views.update(crop_scale=(_CROP_FRACTION**2,) * 2, crop_ratio=(1.0, 1.0))

  def step(params, batch_stats, opt_state, batch, key):
    k_view, k_mix, k_perm = jax.random.split(key, 3)
    x = augment.make_views(k_view, batch['image'], [views], image_size)[:, 0]
    y, valid = jnp.maximum(batch['label'], 0), batch['label'] >= 0
    lam, perm = 1.0, jnp.arange(x.shape[0])
    if cfg.mixup_alpha > 0:
      lam = jax.random.beta(k_mix, cfg.mixup_alpha, cfg.mixup_alpha)
      perm = jax.random.permutation(k_perm, x.shape[0])
      x = lam * x + (1 - lam) * x[perm]

    def loss_fn(params):
      model = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, batch_stats))
      logits = model(x, train=True)
      ce = lambda t: optax.softmax_cross_entropy_with_integer_labels(logits, t)
      loss = lam * ce(y) + (1 - lam) * ce(y[perm])
      return jnp.where(valid, loss, 0.0).sum() / jnp.maximum(valid.sum(), 1), nnx.state(model, nnx.BatchStat)

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    # Frozen parts keep their pretrained running statistics.
    keep = lambda frozen, old, new: old if frozen else new
    new_stats = jax.tree.map(keep, frozen_stats, batch_stats, new_stats)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1, 2))


def _evaluate(graphdef, params, batch_stats, source, cfg, image_size: int, mesh) -> dict:
  """Top-1 / top-5 of the model in inference mode on the labelled examples of `source`."""

  @jax.jit
  def logits_of(params, batch_stats, images):
    x = jax.vmap(lambda im: augment.center_crop_resize(im, image_size))(images.astype(jnp.float32) / 255.0)
    return nnx.merge(graphdef, params, batch_stats)(x, train=False)

  logits, labels = [], []
  for batch in source.eval_batches(global_batch_size=cfg.eval_batch_size):
    keep = np.asarray(batch['mask'], bool) & (np.asarray(batch['label']) >= 0)
    out = logits_of(params, batch_stats, sharding.global_batch({'image': batch['image']}, mesh)['image'])
    logits.append(np.asarray(out)[keep])
    labels.append(np.asarray(batch['label'])[keep])
  if not sum(len(y) for y in labels):
    raise UserError('the eval split has no labelled example; choose one with --config.eval_split')
  return topk_accuracy(np.concatenate(logits), np.concatenate(labels))


def _sources(run_config, cfg, size: int):
  """The train source (crops of `cfg.crop` at `size`) and the eval source of the fine-tuning."""
  run_data = ml_collections.ConfigDict(run_config.data.to_dict())
  run_data.update(image_size=size)
  if not cfg.use_subset:
    run_data.update(subset_num=0, subset_per_class=0)
  train = data.get_source(run_data, split=cfg.train_split or run_data.train_split, train=True,
                          crops=(data.HostCrop(scale=tuple(cfg.crop_scale)),), crop=cfg.crop)
  test = data.get_source(run_data, split=cfg.eval_split or run_data.eval_split, train=False)
  return train, test


def fine_tune(run_config, backbone, cfg, *, devices=None, update_frozen_stats: bool = False,
              what: str = 'fine-tuning'):
  """Fine-tunes `backbone` (a pretrained method model) with a new head on the run's labelled data.

  Args:
    run_config: the pretraining run's ConfigDict (data and resolution).
    backbone: the method's nnx model with `features(images, *, train)` and `encoder`.
    cfg: `default_config()` with any changes (its preset already applied).
    devices: the devices of the mesh; all by default.
    update_frozen_stats: the frozen parts' BatchNorm running statistics follow the batches (PyTorch's
      train mode) instead of keeping their pretrained values.
    what: names the phase in the progress lines.

  Returns:
    (scores, model): scores has 'top1', 'top5' (last epoch), 'best_top1', 'best_top5', 'best_epoch' and
    'top1_per_epoch'; model is the fine-tuned Classifier.
  """
  mesh = sharding.make_mesh(devices)
  sharding.check_batch_size(cfg.batch_size, mesh)
  sharding.check_batch_size(cfg.eval_batch_size, mesh, what='eval_batch_size')
  size = int(cfg.image_size or run_config.data.image_size)
  train, test = _sources(run_config, cfg, size)
  model = Classifier(backbone, test.num_classes, rngs=nnx.Rngs(cfg.seed))
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  steps_per_epoch = train.steps_per_epoch(cfg.batch_size)
  tx = make_optimizer(params, cfg, cfg.epochs * steps_per_epoch)
  frozen_stats = jax.tree.map(lambda label: label == 'frozen' and not update_frozen_stats,
                              _labels(batch_stats, cfg.frozen_stages))
  state = jax.device_put((params, batch_stats, tx.init(params)), sharding.replicated(mesh))
  step = _train_step(graphdef, tx, cfg, run_config, frozen_stats, size)
  batches = train.train_batches(global_batch_size=cfg.batch_size, seed=cfg.seed)
  key, history = jax.random.key(cfg.seed), []
  progress.note(f'{what}: {cfg.epochs} epochs of {steps_per_epoch} steps at {size} px (compiling the step)')
  epochs = progress.Progress(f'{what}: epoch', cfg.epochs, every=0)  # a line per epoch, with its scores
  for epoch in range(cfg.epochs):
    for i in range(steps_per_epoch):
      batch = sharding.global_batch(next(batches), mesh)
      *state, loss = step(*state, batch, jax.random.fold_in(key, epoch * steps_per_epoch + i))
    history.append(_evaluate(graphdef, state[0], state[1], test, cfg, size, mesh))
    epochs.update(epoch + 1, f'loss {float(loss):.4f} | top1 {history[-1]["top1"]:.4f}')
  best = max(range(len(history)), key=lambda i: history[i]['top1'])
  scores = {**history[-1], 'best_top1': history[best]['top1'], 'best_top5': history[best]['top5'],
            'best_epoch': best + 1, 'top1_per_epoch': [h['top1'] for h in history]}
  nnx.update(model, state[0], state[1])
  return scores, model


def _copy_encoder(source, target) -> None:
  """Copies every variable of encoder `source` into the same place of encoder `target` (in place).

  Stages of `source` beyond those of `target` are left out; everything else must exist in `target` with the
  same shape.
  """
  target_state = nnx.state(target, (nnx.Param, nnx.BatchStat))
  into = dict(nnx.to_flat_state(target_state))
  for path, variable in nnx.to_flat_state(nnx.state(source, (nnx.Param, nnx.BatchStat))):
    if path[0] == 'stages' and path[1] >= len(target.stages):
      continue
    if path not in into or into[path][...].shape != variable[...].shape:
      name = '/'.join(map(str, path))
      raise UserError(f'the pretrained encoder variable {name} has no place of that shape in the fine-tuned '
                      'encoder; num_stages and bn_group_size are the only model changes fine-tuning can make')
    into[path][...] = variable[...]
  nnx.update(target, target_state)


def transfer(run_config, pretrained, *, num_stages: int = -1, bn_group_size: int = -1, seed: int = 0):
  """The model to fine-tune: `pretrained`, or its method's model rebuilt with other stages / BatchNorm groups.

  Args:
    run_config: the pretraining run's ConfigDict.
    pretrained: the method's model holding the pretrained weights.
    num_stages: encoder stages to fine-tune: -1 as pretrained, 0 every stage of the architecture, k the
      first k. Stages the pretraining lacked start from a new random initialisation (from `seed`).
    bn_group_size: ghost BatchNorm group of the fine-tuning: -1 the run's, 0 the whole batch.
    seed: initialises whatever is not copied from `pretrained`.

  Returns:
    (config, model): the run's config with the new model fields, and the model (`pretrained` itself when
    nothing changes). Every variable of the pretrained encoder that the new one has is copied to the same
    place (`_copy_encoder`); the projector and other pretraining heads are not (fine-tuning never uses them).
  """
  model_cfg = run_config.model
  stages = model_cfg.num_stages if num_stages < 0 else num_stages
  group = model_cfg.bn_group_size if bn_group_size < 0 else bn_group_size
  if (stages, group) == (model_cfg.num_stages, model_cfg.bn_group_size):
    return run_config, pretrained
  config = ml_collections.ConfigDict(run_config.to_dict())
  config.model.update(num_stages=stages, bn_group_size=group)
  in_channels = int(pretrained.encoder.stem_conv.kernel.shape[-2])
  model = models.build_compiled(
      lambda: methods.get_method(config).build_model(config, in_channels=in_channels, rngs=nnx.Rngs(seed)))
  _copy_encoder(pretrained.encoder, model.encoder)
  return config, model


def _check(cfg) -> None:
  numbers = dict(epochs=cfg.epochs, mixup_alpha=cfg.mixup_alpha, frozen_stages=cfg.frozen_stages,
                 image_size=cfg.image_size, num_stages=cfg.num_stages, bn_group_size=cfg.bn_group_size,
                 warmup_epochs=cfg.warmup_epochs)
  lowest = dict(epochs=1, mixup_alpha=0, frozen_stages=-1, image_size=0, num_stages=-1, bn_group_size=-1,
                warmup_epochs=0)
  bad = [f'{k}={v} (at least {lowest[k]})' for k, v in numbers.items() if v < lowest[k]]
  if bad:
    raise UserError(f'fine-tuning settings out of range: {", ".join(bad)}')
  for field, options in (('schedule', SCHEDULES), ('crop', data.HOST_CROPS),
                         ('warmup_frozen_bn_stats', FROZEN_BN_STATS)):
    if cfg[field] not in options:
      raise UserError(f'unknown {field} {cfg[field]!r}; use --config.{field}= one of {", ".join(options)}')


def _warm_up(run_config, backbone, cfg, pretrained_stages: int):
  """S3L's conv5 warm-up: only the new stages and a new head train (constant lr, no mixup)."""
  warm = ml_collections.ConfigDict(cfg.to_dict())
  warm.update(epochs=cfg.warmup_epochs, lr=cfg.warmup_lr, schedule='constant', mixup_alpha=0.0,
              frozen_stages=pretrained_stages)
  scores, model = fine_tune(run_config, backbone, warm,
                            update_frozen_stats=cfg.warmup_frozen_bn_stats == 'update', what='conv5 warm-up')
  return scores, model.backbone  # its head is dropped: fine-tuning starts with a new one, as S3L's main.py


def evaluate_finetune(workdir, cfg=None) -> dict:
  """Fine-tunes the encoder of `workdir` and merges the scores into its results.json under 'finetune'.

  Args:
    workdir: a training run's workdir (its newest checkpoint is fine-tuned; the checkpoint is not changed).
    cfg: `default_config()` with any changes; the defaults when None.

  Returns:
    The scores of `fine_tune` plus 'protocol' and 'config', and 'warmup' (the warm-up's scores) when the
    conv5 warm-up ran.
  """
  from ssl_jax.encoder import build_from_checkpoint  # pylint: disable=g-import-not-at-top
  cfg = apply_preset(cfg or default_config())
  _check(cfg)
  progress.note(f'fine-tuning {paths.user_path(workdir)}: loading the model')
  run_config, pretrained = build_from_checkpoint(workdir)
  pretrained_stages = len(pretrained.encoder.stages)
  config, backbone = transfer(run_config, pretrained, num_stages=cfg.num_stages,
                              bn_group_size=cfg.bn_group_size, seed=cfg.seed)
  if cfg.frozen_stages > len(backbone.encoder.stages):
    raise UserError(f'frozen_stages={cfg.frozen_stages} but the encoder has {len(backbone.encoder.stages)} '
                    'stages; use -1 .. that number')
  warmup = None
  if len(backbone.encoder.stages) > pretrained_stages and cfg.warmup_epochs > 0:
    warmup, backbone = _warm_up(config, backbone, cfg, pretrained_stages)
  scores, _ = fine_tune(config, backbone, cfg)
  results = {**scores, 'protocol': _protocol(cfg, config, run_config, warmup is not None),
             'config': json.loads(cfg.to_json())}
  if warmup is not None:
    results['warmup'] = warmup
  linear_cli.merge_results(paths.workdir_of(workdir), 'finetune', results)
  return results


def _protocol(cfg, config, run_config, warmed: bool) -> str:
  """One line saying how the scores were produced."""
  frozen = 'none' if cfg.frozen_stages < 0 else f'stem + first {cfg.frozen_stages} stages'
  crop = (f'random-resized crop {tuple(cfg.crop_scale)}' if cfg.crop == 'random_resized'
          else 'resize to S/0.875 + random crop')
  decay = 'kernels' if cfg.exclude_bias_and_norm else 'all parameters'
  text = (f'fine-tuning: encoder + new linear head, SGD momentum {cfg.momentum}, lr {cfg.lr} {cfg.schedule}, '
          f'weight decay {cfg.weight_decay} on {decay}, {cfg.epochs} epochs of batch {cfg.batch_size}, '
          f'{int(cfg.image_size or run_config.data.image_size)} px, {crop} + flip '
          f'{linear_cli.run_flip_prob(cfg, run_config)}, mixup alpha {cfg.mixup_alpha}, frozen: {frozen}; '
          'scored in inference mode')
  if config is not run_config:
    text += (f'; model rebuilt with num_stages={config.model.num_stages} (pretrained: '
             f'{run_config.model.num_stages}), bn_group_size={config.model.bn_group_size}')
  if warmed:
    text += (f'; after a {cfg.warmup_epochs}-epoch warm-up of the new stages and a head (lr {cfg.warmup_lr} '
             f'constant, BatchNorm statistics of the frozen part: {cfg.warmup_frozen_bn_stats})')
  return text


if __name__ == '__main__':
  linear_cli.run_cli(default_config, evaluate_finetune, 'finetune')
