"""Optimizers and learning-rate schedules from `config.optimizer`.

The peak learning rate follows the scaling rule the config states:
  linear: base_lr · batch_size / base_batch_size   (Goyal et al.; SimCLR's LARS recipe)
  sqrt:   base_lr · sqrt(batch_size / base_batch_size)   (SimCLR's small-batch recipe)
  none:   base_lr
The schedule (`schedule`) is
  warmup_cosine:   a linear warmup from 0 over `warmup_epochs`, then one cosine decay to
                   `end_lr_factor · peak` at the last step (the usual one);
  periodic_cosine: lr(t) = end + (peak - end) · (1 + cos(π t / T)) / 2 at every step t (0-based), T =
                   `cosine_t_max_steps`, or the run's number of epochs when that is 0; no warmup. It keeps
                   oscillating with period 2T. This is what the RepMix code does: PyTorch's
                   CosineAnnealingLR(T_max=max_epochs) stepped after every optimizer step (Lightning's
                   interval 'step'), so at CIFAR-10 batch 1024 for 200 epochs the rate reaches 0 at step 200
                   (about epoch 4) and repeats every 400 steps, about 24.5 cycles in the run.

Runs in stages (`config.stages`, ssl_jax/stages.py) get one optimizer per *segment*: a stage that restarts
the optimizer opens a segment, a stage that continues joins the previous one. `create_staged_optimizer`
builds each segment's optimizer over the segment's own length and switches between them by step (`staged`):
a segment's state starts from its init at the segment's first step (fresh momentum, step count 0, so its
schedule starts over) and the states of the other segments are kept as they are. This is what S3L's code
does between its resolution stages (stage 2 loads the stage-1 weights, builds a new SGD optimizer and a new
cosine schedule).
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('sgd', 'lars', 'adamw')
SCHEDULES = ('warmup_cosine', 'periodic_cosine')
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
  raise ValueError(f'lr_scaling={cfg.lr_scaling!r} is not one of {LR_SCALING}')


def create_schedule(cfg, *, batch_size: int, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate at each step: `cfg.schedule` (see the module docstring) from the scaled peak."""
  peak = peak_learning_rate(cfg, batch_size)
  if cfg.schedule == 'periodic_cosine':
    t_max = cfg.cosine_t_max_steps or max(round(total_steps / steps_per_epoch), 1)
    end = peak * cfg.end_lr_factor
    return lambda step: end + (peak - end) * 0.5 * (1 + jnp.cos(jnp.pi * step / t_max))
  if cfg.schedule != 'warmup_cosine':
    raise ValueError(f'schedule={cfg.schedule!r} is not one of {SCHEDULES}')
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
    raise ValueError(f'name={cfg.name!r} is not one of {OPTIMIZERS}')
  return tx, schedule


class StagedState(NamedTuple):
  """The state of `staged`: steps taken, and each segment's own optimizer state."""
  count: jax.Array          # int32 scalar
  segments: tuple


def staged(txs, boundaries) -> optax.GradientTransformation:
  """Optimizer `txs[i]` from step `boundaries[i - 1]` on; each one keeps its own state (see module docstring).

  Args:
    txs: the segments' gradient transformations, in step order.
    boundaries: the first step of every segment but the first, increasing (len(txs) - 1 ints).

  Returns:
    A gradient transformation with state `StagedState`. Only the active segment's state changes in a step.
  """
  txs, boundaries = tuple(txs), tuple(int(b) for b in boundaries)
  if len(boundaries) != len(txs) - 1:
    raise ValueError(f'{len(txs)} optimizers need {len(txs) - 1} boundaries, got {boundaries}')

  def init_fn(params):
    return StagedState(jnp.zeros((), jnp.int32), tuple(tx.init(params) for tx in txs))

  def branch(i):
    def update(operands):
      grads, states, params = operands
      updates, state = txs[i].update(grads, states[i], params)
      return updates, states[:i] + (state,) + states[i + 1:]
    return update

  def update_fn(grads, state, params=None):
    index = jnp.sum(state.count >= jnp.asarray(boundaries, jnp.int32))
    updates, segments = jax.lax.switch(index, [branch(i) for i in range(len(txs))],
                                       (grads, state.segments, params))
    return updates, StagedState(state.count + 1, segments)

  return optax.GradientTransformation(init_fn, update_fn)


def create_staged_optimizer(segments, *, batch_size: int, steps_per_epoch: int):
  """One optimizer per segment of a staged run, each with its own schedule over its own steps.

  Args:
    segments: ((first_step, num_steps, optimizer_cfg), ...) in step order, the first at step 0.
    batch_size: global batch size (for the scaling rule).
    steps_per_epoch: to convert `warmup_epochs` into steps.

  Returns:
    (tx, schedule): with one segment, exactly `create_optimizer`'s; otherwise `staged` over the segments'
    optimizers and their schedules joined (`optax.join_schedules`): schedule(step) is the learning rate the
    step uses, restarting at every segment's first step.
  """
  built = [create_optimizer(cfg, batch_size=batch_size, total_steps=num_steps,
                            steps_per_epoch=steps_per_epoch) for _, num_steps, cfg in segments]
  if len(built) == 1:
    return built[0]
  boundaries = [first for first, _, _ in segments[1:]]
  return staged([tx for tx, _ in built], boundaries), optax.join_schedules([s for _, s in built], boundaries)
