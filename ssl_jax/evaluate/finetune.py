r"""Fine-tuning of a trained encoder: `python -m ssl_jax.evaluate.finetune --workdir DIR [--config.a=b ...]`.

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
Exit codes: 0 done; 2 bad input (one line on stderr).
"""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from ssl_jax import data, sharding
from ssl_jax.data import augment
from ssl_jax.errors import UserError
from ssl_jax.evaluate import linear
from ssl_jax.evaluate.linear_probe import topk_accuracy


def default_config() -> ml_collections.ConfigDict:
  """Fine-tuning defaults.

  Returns:
    ConfigDict: epochs, batch_size (global), lr (peak, cosine to 0), momentum, weight_decay (on kernels),
    mixup_alpha (0 = off), frozen_stages (-1 = none, k = stem + first k stages), crop_scale,
    flip_prob (-1 = the run's augment.flip_prob),
    train_split / eval_split ('' = the run's), eval_batch_size and seed.
  """
  return ml_collections.ConfigDict(dict(  # noqa: C408  (keyword style reads like a config)
      epochs=30, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4, mixup_alpha=0.0, frozen_stages=-1,
      crop_scale=(0.08, 1.0), flip_prob=-1.0, train_split='', eval_split='', eval_batch_size=256, seed=0))


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
  if keys[:2] != ['backbone', 'encoder']:
    return True  # projector and other pretraining heads: unused here
  part = keys[2]
  in_frozen_stage = part == 'stages' and int(keys[3]) < frozen_stages
  return frozen_stages >= 0 and (part.startswith('stem') or in_frozen_stage)


def _labels(tree, frozen_stages: int):
  label = lambda path, _: 'frozen' if _frozen(path, frozen_stages) else 'train'
  return jax.tree_util.tree_map_with_path(label, tree)


def make_optimizer(params, cfg, total_steps: int) -> optax.GradientTransformation:
  """SGD + momentum on a cosine schedule for the trained variables, zero updates for the frozen ones."""
  decay = jax.tree.map(lambda p: p.ndim > 1, params)  # kernels only: no decay on biases and norms
  schedule = optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1))
  sgd = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay),
                    optax.sgd(schedule, momentum=cfg.momentum))
  return optax.multi_transform({'train': sgd, 'frozen': optax.set_to_zero()},
                               _labels(params, cfg.frozen_stages))


def _train_step(graphdef, tx, cfg, run_config, frozen_stats):
  views = augment.default_config()
  views.update(crop_scale=tuple(cfg.crop_scale), flip_prob=linear.run_flip_prob(cfg, run_config),
               jitter_prob=0.0, grayscale_prob=0.0)
  image_size = run_config.data.image_size

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


def fine_tune(run_config, backbone, cfg, *, devices=None):
  """Fine-tunes `backbone` (a pretrained method model) with a new head on the run's labelled data.

  Args:
    run_config: the pretraining run's ConfigDict (data and resolution).
    backbone: the method's nnx model with `features(images, *, train)` and `encoder`.
    cfg: `default_config()` with any changes.
    devices: the devices of the mesh; all by default.

  Returns:
    (scores, model): scores has 'top1', 'top5' (last epoch), 'best_top1', 'best_top5', 'best_epoch' and
    'top1_per_epoch'; model is the fine-tuned Classifier.
  """
  mesh = sharding.make_mesh(devices)
  sharding.check_batch_size(cfg.batch_size, mesh)
  sharding.check_batch_size(cfg.eval_batch_size, mesh, what='eval_batch_size')
  run_data, size = run_config.data, run_config.data.image_size
  train = data.get_source(run_data, split=cfg.train_split or run_data.train_split, train=True)
  test = data.get_source(run_data, split=cfg.eval_split or run_data.eval_split, train=False)
  model = Classifier(backbone, test.num_classes, rngs=nnx.Rngs(cfg.seed))
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  steps_per_epoch = train.steps_per_epoch(cfg.batch_size)
  tx = make_optimizer(params, cfg, cfg.epochs * steps_per_epoch)
  frozen_stats = jax.tree.map(lambda label: label == 'frozen', _labels(batch_stats, cfg.frozen_stages))
  state = jax.device_put((params, batch_stats, tx.init(params)), sharding.replicated(mesh))
  step = _train_step(graphdef, tx, cfg, run_config, frozen_stats)
  batches = train.train_batches(global_batch_size=cfg.batch_size, seed=cfg.seed)
  key, history = jax.random.key(cfg.seed), []
  for epoch in range(cfg.epochs):
    for i in range(steps_per_epoch):
      batch = sharding.global_batch(next(batches), mesh)
      *state, _ = step(*state, batch, jax.random.fold_in(key, epoch * steps_per_epoch + i))
    history.append(_evaluate(graphdef, state[0], state[1], test, cfg, size, mesh))
  best = max(range(len(history)), key=lambda i: history[i]['top1'])
  scores = {**history[-1], 'best_top1': history[best]['top1'], 'best_top5': history[best]['top5'],
            'best_epoch': best + 1, 'top1_per_epoch': [h['top1'] for h in history]}
  nnx.update(model, state[0], state[1])
  return scores, model


def evaluate_finetune(workdir, cfg=None) -> dict:
  """Fine-tunes the encoder of `workdir` and merges the scores into its results.json under 'finetune'.

  Args:
    workdir: a training run's workdir (its newest checkpoint is fine-tuned; the checkpoint is not changed).
    cfg: `default_config()` with any changes; the defaults when None.

  Returns:
    The scores of `fine_tune` plus 'protocol' and 'config'.
  """
  from ssl_jax.encoder import build_from_checkpoint  # pylint: disable=g-import-not-at-top
  cfg = cfg or default_config()
  if cfg.epochs < 1 or cfg.mixup_alpha < 0 or cfg.frozen_stages < -1:
    raise UserError(f'epochs={cfg.epochs}, mixup_alpha={cfg.mixup_alpha}, frozen_stages={cfg.frozen_stages}: '
                    'need epochs >= 1, mixup_alpha >= 0 and frozen_stages >= -1')
  run_config, backbone = build_from_checkpoint(workdir)
  if cfg.frozen_stages > len(backbone.encoder.stages):
    raise UserError(f'frozen_stages={cfg.frozen_stages} but the encoder has {len(backbone.encoder.stages)} '
                    'stages; use -1 .. that number')
  scores, _ = fine_tune(run_config, backbone, cfg)
  frozen = 'none' if cfg.frozen_stages < 0 else f'stem + first {cfg.frozen_stages} stages'
  protocol = (f'fine-tuning: encoder + new linear head, SGD momentum {cfg.momentum}, lr {cfg.lr} cosine, '
              f'{cfg.epochs} epochs of batch {cfg.batch_size}, random-resized crop {tuple(cfg.crop_scale)} + '
              f'flip {linear.run_flip_prob(cfg, run_config)}, mixup alpha {cfg.mixup_alpha}, '
              f'frozen: {frozen}; '
              'scored in inference mode')
  results = {**scores, 'protocol': protocol, 'config': json.loads(cfg.to_json())}
  linear.merge_results(workdir, 'finetune', results)
  return results


if __name__ == '__main__':
  linear.run_cli(default_config, evaluate_finetune, 'finetune')
