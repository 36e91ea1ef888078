"""Optimizers and learning-rate schedules from `config.optimizer`.

The peak learning rate follows the scaling rule the config states:
  linear: base_lr · batch_size / base_batch_size   (Goyal et al.; SimCLR's LARS recipe)
  sqrt:   base_lr · sqrt(batch_size / base_batch_size)   (SimCLR's small-batch recipe)
  none:   base_lr
The schedule is a linear warmup from 0 followed by a cosine decay to `end_lr_factor · peak`.
"""
import math

import jax
import optax

from ssl_jax.errors import UserError

OPTIMIZERS = ('sgd', 'lars', 'adamw')
LR_SCALING = ('linear', 'sqrt', 'none')


def peak_learning_rate(cfg, batch_size: int) -> float:
  """The learning rate after warmup, from `base_lr` and the scaling rule."""
  ratio = batch_size / cfg.base_batch_size
  if cfg.lr_scaling == 'linear':
    return cfg.base_lr * ratio
  if cfg.lr_scaling == 'sqrt':
    return cfg.base_lr * math.sqrt(ratio)
  if cfg.lr_scaling == 'none':
    return cfg.base_lr
  raise UserError(f'optimizer.lr_scaling={cfg.lr_scaling!r} is unknown; use one of {", ".join(LR_SCALING)}')


def create_schedule(cfg, *, batch_size: int, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup over `warmup_epochs`, then cosine decay over the remaining steps."""
  peak = peak_learning_rate(cfg, batch_size)
  warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=peak * cfg.end_lr_factor)


def _decay_mask(cfg):
  """Weight decay (and LARS adaptation) only on kernels when `exclude_bias_and_norm` is set.

  Biases and BatchNorm scales are the only parameters with fewer than two dimensions in our models, so the
  rank identifies them without relying on parameter names.
  """
  if not cfg.exclude_bias_and_norm:
    return None
  return lambda params: jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(cfg, *, batch_size: int, total_steps: int, steps_per_epoch: int):
  """Builds the optax transformation named by `cfg.name`.

  Args:
    cfg: the `config.optimizer` block.
    batch_size: global batch size (for the scaling rule).
    total_steps: steps of the whole run (for the schedule).
    steps_per_epoch: to convert `warmup_epochs` into steps.

  Returns:
    (tx, schedule): the gradient transformation and the learning-rate schedule it follows.
  """
  schedule = create_schedule(cfg, batch_size=batch_size, total_steps=total_steps,
                             steps_per_epoch=steps_per_epoch)
  mask = _decay_mask(cfg)
  if cfg.name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=mask),
                     optax.sgd(schedule, momentum=cfg.momentum, nesterov=cfg.nesterov))
  elif cfg.name == 'lars':
    tx = optax.lars(schedule, weight_decay=cfg.weight_decay, weight_decay_mask=mask or True,
                    trust_coefficient=cfg.trust_coefficient, trust_ratio_mask=mask or True,
                    momentum=cfg.momentum, nesterov=cfg.nesterov)
  elif cfg.name == 'adamw':
    tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=mask)
  else:
    raise UserError(f'optimizer.name={cfg.name!r} is unknown; use one of {", ".join(OPTIMIZERS)}')
  return tx, schedule
