"""MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv 2003.04297): a momentum key encoder and a queue of keys.

Queries come from the online encoder + MLP projector on view 1, keys from the momentum (EMA) encoder on
view 2; InfoNCE with temperature `config.loss.temperature` against the positive key and the
`config.moco.queue_size` queued keys (MoCo v2's asymmetric loss). The queue (K, D) of L2-normalised keys and
its pointer live in `extra`, beside the key encoder's params and batch statistics (`extra['target']`), so they
are checkpointed and resumed exactly. After each step the keys of the whole global batch replace the oldest
queue entries (FIFO), so K must be a multiple of the batch size, as in MoCo's code.

Shuffle-BN: MoCo computes BatchNorm per GPU and shuffles the key batch across GPUs, so the BN statistics a
query is normalised with come from a different subset of images than those of its positive key (otherwise
the pair can "communicate" through the batch statistics and the task gets easier). Here BatchNorm runs in
ghost groups of `config.model.bn_group_size` examples (the per-GPU batch of the reference, e.g. 32) and, with
`config.moco.shuffle_bn`, the key batch goes through the key encoder in a random order and is put back after
it: the same effect on any number of devices. The key encoder's momentum follows `config.ema` (MoCo: a
constant 0.999).
"""
import functools

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.errors import UserError
from ssl_jax.methods import _momentum, common


def build_model(config, *, in_channels, rngs):
  """The query encoder + projector (a TwoBranchModel without predictor); checks the queue size first."""
  _momentum.require_blocks(config, 'augment2', 'ema', 'moco')
  queue, batch = config.moco.queue_size, config.batch_size
  if queue <= 0 or queue % batch:
    raise UserError(f'moco.queue_size={queue} must be a positive multiple of batch_size={batch} (the queue '
                    'takes whole global batches of keys); e.g. set --config.moco.queue_size='
                    f'{max(batch, queue // batch * batch)}')
  _momentum.check_ema(config.ema)
  return _momentum.build_two_branch(config, in_channels=in_channels, rngs=rngs, predictor=False)


def num_views(config):
  """Two views per image (cropped on the host for variable-size data)."""
  return 2


def init_extra(model, config):
  """The key encoder (a copy of the online one), a queue of random unit keys (as MoCo) and its pointer."""
  key = jax.random.fold_in(jax.random.key(config.seed), 0x4D6F436F)  # a stream of its own for the queue
  queue = jax.random.normal(key, (config.moco.queue_size, config.model.head.out_dim), jnp.float32)
  return {'target': _momentum.init_target(model.online), 'queue': losses.l2_normalize(queue),
          'queue_ptr': jnp.zeros((), jnp.int32)}


def enqueue(queue, ptr, keys):
  """The queue with `keys` (B, D) written over rows ptr..ptr+B-1 (the oldest), and the next pointer.

  Requires K % B == 0 (checked in build_model), so a write never wraps around.
  """
  queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (ptr, jnp.zeros_like(ptr)))
  return queue, (ptr + keys.shape[0]) % queue.shape[0]


def make_views(key, batch, ctx):
  """The two views, from the first half of the step key (the second shuffles the key batch)."""
  return _momentum.two_views(jax.random.split(key)[0], batch, ctx)


def loss_fn(model, views, batch, key, ctx):
  """Queries of view 1, keys of view 2 from the key encoder (shuffled BN), InfoNCE, then the enqueue."""
  config, extra = ctx.config, ctx.extra
  shuffle_key = jax.random.split(key)[1]
  q, h = model.online(views[:, 0], train=True, return_features=True, after_stem=ctx.after_stem)
  permutation = None
  if config.moco.shuffle_bn:
    permutation = jax.random.permutation(shuffle_key, views.shape[0])
  key_hook = None if ctx.after_stem is None else functools.partial(ctx.after_stem, first_view=1)
  k, target = _momentum.run_target(model.online, extra['target'], views[:, 1], permutation=permutation,
                                   after_stem=key_hook)
  k = losses.l2_normalize(k)
  logits = losses.moco_logits(q, k, extra['queue'], temperature=config.loss.temperature)
  # The same logits again: XLA computes the matmul once.
  loss = losses.moco_infonce(q, k, extra['queue'], temperature=config.loss.temperature)
  queue, ptr = enqueue(extra['queue'], extra['queue_ptr'], k)
  metrics = {**common.contrastive_metrics(jnp.stack([q, k], axis=1)),
             'moco_top1': jnp.mean((jnp.argmax(logits, axis=1) == 0).astype(jnp.float32)),
             'ema_tau': _momentum.ema_rate(config.ema, ctx.step, ctx.total_steps)}
  return loss, (metrics, {'target': target, 'queue': queue, 'queue_ptr': ptr}, h)


def after_update(extra, params, ctx):
  """The target's params moved towards the updated online params with this step's EMA rate."""
  tau = _momentum.ema_rate(ctx.config.ema, ctx.step, ctx.total_steps)
  return {**extra, 'target': _momentum.ema_update(extra['target'], params['online'], tau)}
