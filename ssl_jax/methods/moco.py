"""MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv 2003.04297): a momentum key encoder and a queue of keys.

Queries come from the online encoder + MLP projector on view 1, keys from the momentum (EMA) encoder on
view 2; InfoNCE with temperature `config.loss.temperature` against the positive key and the
`config.moco.queue_size` queued keys (MoCo v2's asymmetric loss). The queue (K, D) of L2-normalised keys and
its pointer live in `extra`, beside the key encoder's params and batch statistics (`extra['target']`), so they
are checkpointed and resumed exactly. After each step the keys of the whole global batch replace the oldest
queue entries (FIFO), so K must be a multiple of the batch size, as in MoCo's code.

`config.moco.symmetric` (solo-learn's MoCo v2+): both views are queries and keys, and the loss is the mean
of q1·k2 against the queue of past view-2 keys and q2·k1 against a second queue, of past view-1 keys
(`extra['queue_view1']`, same size and pointer), as solo-learn's code keeps one queue per view. Each view
goes through the online and the key encoder on its own, as in solo-learn (BatchNorm sees one view at a
time). A step then costs two online and two key-encoder passes instead of one each.

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

from ssl_jax import losses, methods
from ssl_jax.errors import UserError
from ssl_jax.methods import _momentum, common

CAPABILITIES = methods.Capabilities(addons=('rotation', 'fusion'), stem_hook=True,
                                    backbones=('resnet', 'vit'),
                                    config_blocks=('ema', 'moco'))


def check_config(config) -> None:
  """The queue takes whole global batches of keys; the key encoder's EMA rates are ordered."""
  _momentum.check_ema(config)
  queue, batch = config.moco.queue_size, config.batch_size
  if queue % batch:
    raise UserError(f'moco.queue_size={queue} must be a multiple of batch_size={batch} (the queue takes whole '
                    f'global batches of keys); e.g. set --config.moco.queue_size={max(batch, queue // batch * batch)}')


def build_model(config, *, in_channels, rngs):
  """The query encoder + projector (a TwoBranchModel without predictor)."""
  return _momentum.build_two_branch(config, in_channels=in_channels, rngs=rngs, predictor=False)


host_crops = _momentum.host_crops


def init_extra(model, config):
  """The key encoder (a copy of the online one), a queue of random unit keys (as MoCo) and its pointer."""
  key = jax.random.fold_in(jax.random.key(config.seed), 0x4D6F436F)  # a stream of its own for the queue
  shape = (config.moco.queue_size, config.model.head.out_dim)
  extra = {'target': _momentum.init_target(model.online),
           'queue': losses.l2_normalize(jax.random.normal(key, shape, jnp.float32)),
           'queue_ptr': jnp.zeros((), jnp.int32)}
  if config.moco.symmetric:
    extra['queue_view1'] = losses.l2_normalize(jax.random.normal(jax.random.fold_in(key, 1), shape))
  return extra


def enqueue(queue, ptr, keys):
  """The queue with `keys` (B, D) written over rows ptr..ptr+B-1 (the oldest), and the next pointer.

  Requires K % B == 0 (checked in build_model), so a write never wraps around.
  """
  queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (ptr, jnp.zeros_like(ptr)))
  return queue, (ptr + keys.shape[0]) % queue.shape[0]


def make_views(key, batch, ctx):
  """The two views, from the first half of the step key (the second shuffles the key batch)."""
  return _momentum.two_views(jax.random.split(key)[0], batch, ctx)


def _symmetric_loss_fn(model, views, shuffle_key, ctx):
  """Both views as queries and keys, one pass per view and encoder; both queues updated (module docstring)."""
  config, extra = ctx.config, ctx.extra
  hook = lambda view: None if ctx.after_stem is None else functools.partial(ctx.after_stem, first_view=view)
  q1, h = model.online(views[:, 0], train=True, return_features=True, after_stem=hook(0))
  q2 = model.online(views[:, 1], train=True, after_stem=hook(1))
  target, k = extra['target'], []
  for view, view_key in enumerate(jax.random.split(shuffle_key)):
    permutation = jax.random.permutation(view_key, views.shape[0]) if config.moco.shuffle_bn else None
    k_view, target = _momentum.run_target(model.online, target, views[:, view], permutation=permutation,
                                          after_stem=hook(view))
    k.append(losses.l2_normalize(k_view))
  q, k = jnp.stack([q1, q2], axis=1), jnp.stack(k, axis=1)
  loss = losses.moco_symmetric_infonce(q, k, extra['queue_view1'], extra['queue'],
                                       temperature=config.loss.temperature)
  logits = losses.moco_logits(q1, k[:, 1], extra['queue'], temperature=config.loss.temperature)
  queue, ptr = enqueue(extra['queue'], extra['queue_ptr'], k[:, 1])
  queue_view1, _ = enqueue(extra['queue_view1'], extra['queue_ptr'], k[:, 0])
  new_extra = {'target': target, 'queue': queue, 'queue_view1': queue_view1, 'queue_ptr': ptr}
  return loss, (_metrics(jnp.stack([q1, k[:, 1]], axis=1), logits, ctx), new_extra, h)


def loss_fn(model, views, batch, key, ctx):
  """Queries of view 1, keys of view 2 from the key encoder (shuffled BN), InfoNCE, then the enqueue.

  With `moco.symmetric`, `_symmetric_loss_fn` (both directions) instead.
  """
  config, extra = ctx.config, ctx.extra
  shuffle_key = jax.random.split(key)[1]
  if config.moco.symmetric:
    return _symmetric_loss_fn(model, views, shuffle_key, ctx)
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
  return loss, (_metrics(jnp.stack([q, k], axis=1), logits, ctx), {'target': target, 'queue': queue,
                                                                     'queue_ptr': ptr}, h)


def _metrics(pair, logits, ctx) -> dict:
  """Collapse monitors of (query, positive key) pairs (B, 2, D), the view-1 queries' top-1 and the EMA rate."""
  return {**common.contrastive_metrics(pair),
          'moco_top1': jnp.mean((jnp.argmax(logits, axis=1) == 0).astype(jnp.float32)),
          'ema_tau': _momentum.ema_rate(ctx.config.ema, ctx.step, ctx.total_steps)}


def after_update(extra, params, ctx):
  """The target's params moved towards the updated online params with this step's EMA rate."""
  tau = _momentum.ema_rate(ctx.config.ema, ctx.step, ctx.total_steps)
  return {**extra, 'target': _momentum.ema_update(extra['target'], params['online'], tau)}
