"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of online cluster assignments, with multi-crop.

Faithful to the official code (facebookresearch/swav `main_swav.py`, `src/resnet50.py`) and to the copy the
rotation paper's authors trained (val-iisc/EffSSL `main_swav_rotnet.py`):

  * model: encoder -> projector (`config.model.head`: Linear 2048 -> BN -> ReLU -> Linear 128) -> L2
    normalisation -> prototypes, a bias-free Linear(128 -> `swav.num_prototypes`) whose weight rows
    (one per prototype) are L2-normalised before every step (`prepare_params`, as the code does in place
    before each forward pass; the optimizer then updates the normalised weights);
  * views: `config.multicrop` (ssl_jax/data/multicrop.py): V global crops and M local crops; the crops of one
    resolution go through the encoder in one pass (BatchNorm statistics per resolution group), the projector
    sees all crops in one pass (the code's `forward_head` on the concatenated features);
  * codes: Sinkhorn-Knopp (`losses.sinkhorn_knopp`, ε = `swav.epsilon`, `swav.sinkhorn_iters` rounds) on the
    prototype scores of each view of `swav.crops_for_assign` (the two global crops), over the GLOBAL batch
    (the code's all-reduced sums), without gradient;
  * loss: `losses.swapped_prediction_loss`, the cross-entropy of every other view's softmax(scores / τ)
    against those codes, τ = `swav.temperature`;
  * the prototypes get no gradient in the first `swav.freeze_prototypes_steps` steps (the code sets their
    .grad to None; here it is zero, so weight decay still shrinks them, which the next normalisation undoes);
  * queue (`swav.queue_length` > 0): the projections of the assignment views of past batches, newest first,
    kept in `extra['queue']` (checkpointed). From epoch `swav.queue_start_epoch` on, each step pushes the
    batch in; once the queue is full its scores against the current prototypes join the Sinkhorn input
    (only the batch's codes are used), as the code does once the queue's last row is non-zero. The queue
    holds the newest `queue_length` rows of the global batches: the code keeps queue_length / world_size per
    GPU and first rounds queue_length down to a multiple of the global batch, which at a length below the
    batch turns the queue off; here any length keeps that many rows.

Our choices: the scores and the loss are computed in float32; the queue is global (the code's per-GPU queues
hold the same rows for lengths that are multiples of the batch). The online probe reads the backbone feature
of global crop 1.
"""
from flax import nnx
import jax
import jax.numpy as jnp

from ssl_jax import losses, methods, models
from ssl_jax.data import multicrop
from ssl_jax.errors import UserError
from ssl_jax.methods import common

CAPABILITIES = methods.Capabilities(addons=('rotation',), config_blocks=('swav', 'multicrop'), multi_crop=True)


def check_config(config) -> None:
  """The assignment views exist among the global crops; the multi-crop setting is one the data allow."""
  s, mc = config.swav, config.multicrop
  if not s.crops_for_assign or any(not 0 <= v < mc.num_global for v in s.crops_for_assign):
    raise UserError(f'swav.crops_for_assign={tuple(s.crops_for_assign)} must name global crops, indices in '
                    f'[0, multicrop.num_global={mc.num_global}); SwAV uses (0, 1)')
  if mc.num_global + mc.num_local < 2:
    raise UserError('SwAV needs at least two views to swap predictions between; set '
                    '--config.multicrop.num_global=2')
  multicrop.check_config(config)


def build_model(config, *, in_channels, rngs):
  """Encoder + projector (`model.head`) + bias-free prototypes (`swav.num_prototypes` rows)."""
  base = common.build_encoder_projector(config, in_channels=in_channels, rngs=rngs)
  prototypes = nnx.Linear(config.model.head.out_dim, config.swav.num_prototypes, use_bias=False, rngs=rngs)
  return models.SwAVModel(base.encoder, base.projector, prototypes, base.mean, base.std)


host_crops = multicrop.host_crops


def init_extra(model, config):
  """An empty queue (A, L, P) of past projections of the assignment views and its fill count."""
  s = config.swav
  if not s.queue_length:
    return {}
  shape = (len(s.crops_for_assign), s.queue_length, config.model.head.out_dim)
  return {'queue': jnp.zeros(shape, jnp.float32), 'queue_filled': jnp.zeros((), jnp.int32)}


def prepare_params(params, config):
  """The params with every prototype (a column of the (P, K) kernel) scaled to unit L2 norm."""
  kernel = params['prototypes']['kernel']
  normalised = losses.l2_normalize(kernel[...], axis=0)
  return _replace_kernel(params, normalised)


def _replace_kernel(params, value):
  params = jax.tree.map(lambda x: x, params)   # a copy: the caller's state is left as it was
  params['prototypes']['kernel'] = params['prototypes']['kernel'].replace(value)
  return params


def make_views(key, batch, ctx):
  """The global and local crops (`multicrop.make_views`)."""
  return multicrop.make_views(key, batch, ctx.config, ctx.resolution)


def _codes(scores, z, kernel, ctx):
  """The codes (A, B, K) of the assignment views, and the method state after this step's queue update."""
  s = ctx.config.swav
  assign = tuple(s.crops_for_assign)
  sinkhorn = lambda x: losses.sinkhorn_knopp(x, epsilon=s.epsilon, num_iters=s.sinkhorn_iters)
  if not s.queue_length:
    return jnp.stack([sinkhorn(scores[:, v]) for v in assign]), ctx.extra
  queue, filled = ctx.extra['queue'], ctx.extra['queue_filled']
  started = ctx.step >= round(s.queue_start_epoch * ctx.steps_per_epoch)
  use = started & (filled >= s.queue_length)
  codes, pushed, b = [], [], scores.shape[0]
  for i, v in enumerate(assign):
    with_queue = sinkhorn(jnp.concatenate([queue[i] @ jax.lax.stop_gradient(kernel), scores[:, v]]))[-b:]
    codes.append(jnp.where(use, with_queue, sinkhorn(scores[:, v])))
    pushed.append(jnp.concatenate([jax.lax.stop_gradient(z[:, v]), queue[i]])[:s.queue_length])
  new_queue = jnp.where(started, jnp.stack(pushed), queue)
  new_filled = jnp.where(started, jnp.minimum(filled + z.shape[0], s.queue_length), filled)
  return jnp.stack(codes), {**ctx.extra, 'queue': new_queue, 'queue_filled': new_filled}


def loss_fn(model, views, batch, key, ctx):
  """One encoder pass per resolution, one projector pass over all crops; the swapped-prediction loss."""
  s = ctx.config.swav
  h = multicrop.encode(lambda x: model.features(x, train=True, after_stem=ctx.after_stem), views)
  b, n, d = h.shape
  z = losses.l2_normalize(model.projector(h.reshape(b * n, d), train=True)).reshape(b, n, -1)
  kernel = model.prototypes.kernel[...]
  # Frozen prototypes: the scores carry no gradient to them (the code drops their .grad).
  kernel = jnp.where(ctx.step < s.freeze_prototypes_steps, jax.lax.stop_gradient(kernel), kernel)
  scores = z @ kernel                                                             # (B, V + M, K)
  codes, extra = _codes(scores, z, kernel, ctx)
  loss = losses.swapped_prediction_loss(scores, codes, tuple(s.crops_for_assign), temperature=s.temperature)
  metrics = {**common.contrastive_metrics(z),
             # How many prototypes the codes of the first assignment view use: K at a uniform split.
             'codes_perplexity': jnp.exp(_entropy(jnp.mean(codes[0], axis=0)))}
  if s.queue_length:
    metrics['queue_filled'] = extra['queue_filled'].astype(jnp.float32)
  return loss, (jax.lax.stop_gradient(metrics), extra, h[:, 0])


def _entropy(p):
  return -jnp.sum(p * jnp.log(jnp.clip(p, 1e-12)))
