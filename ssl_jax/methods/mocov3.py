"""MoCo v3 (Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021).

What facebookresearch/moco-v3 (`moco/builder.py`, `main_moco.py`) does, and this module with it:
  * model: the base encoder + a projector (`config.model.head`: 3 layers for a ViT, 2 for a ResNet; hidden
    4096, output 256; BatchNorm + ReLU after the hidden Linears and a final BatchNorm without affine
    parameters) + a predictor (`config.model.predictor`: 2 layers, hidden 4096; the official MoCo_ViT ends it
    in the same affine-free BN, MoCo_ResNet does not: `last_bn` in the recipes). Every Linear of both heads is
    bias-free, as in the official `_build_mlp`.
  * momentum encoder: a copy of base encoder + projector (`extra['target']`: params and its own batch
    statistics), m·momentum + (1 - m)·base after each optimizer step, m rising from `ema.base` (0.99) to
    `ema.final` (1) on a half cosine over the run (`--moco-m-cos`). The official code makes this update at
    the start of the next step with that step's m, so here step t's update uses m(t + 1): the same weights
    produce the same keys.
  * loss: each view through the base encoder, projector and predictor (q1, q2) and through the momentum
    encoder (k1, k2); InfoNCE of q1 against k2 and of q2 against k1, each with the keys of the whole global
    batch as negatives and scaled by 2T (`mocov3_infonce`). No queue, no shuffle-BN.
  * the views go through the networks one at a time, so BatchNorm statistics (SyncBN over all GPUs in the
    official code; the global batch or `model.bn_group_size` ghost groups here) never mix the two views.
  * view 1 from `config.augment`, view 2 from `config.augment2` (BYOL's asymmetric blur / solarize).
Not reproduced: the official ResNet is built with zero_init_residual=True (the last BN scale of every
block starts at 0); ssl_jax's ResNet starts it at 1.
"""
import functools

import jax
import jax.numpy as jnp

from ssl_jax import data, losses, methods, models
from ssl_jax.methods import _momentum, common
from ssl_jax.models import MLPHead

CAPABILITIES = methods.Capabilities(addons=('rotation', 'fusion'), stem_hook=True, backbones=('resnet', 'vit'),
                                    config_blocks=('ema', 'model.predictor'))


def check_config(config) -> None:
  """The momentum rates are ordered; the prediction has the projection's width (it is compared with keys)."""
  _momentum.check_ema(config)
  _momentum.check_predictor(config)


def mocov3_infonce(q, k, *, temperature: float):
  """MoCo v3's `contrastive_loss`: 2T · mean_i CE(softmax(q̂_i·k̂_j / T over j), i).

  Args:
    q: (N, D) queries (predictions of one view), any scale; normalised here.
    k: (N, D) keys (momentum projections of the other view); row i is query i's positive, every other row a
      negative. N is the global batch: the official code gathers the keys of all GPUs.
    temperature: T.

  Returns:
    float32 scalar.
  """
  q, k = losses.l2_normalize(q), losses.l2_normalize(k)
  logits = q @ k.T / temperature
  log_probs = jnp.diagonal(logits) - jax.nn.logsumexp(logits, axis=1)
  return -jnp.mean(log_probs) * (2.0 * temperature)


def _head(head_cfg, in_dim: int, config, rngs):
  return MLPHead(in_dim, hidden_dim=head_cfg.hidden_dim or in_dim, out_dim=head_cfg.out_dim,
                 num_layers=head_cfg.num_layers, use_bn=head_cfg.use_bn, last_bn=head_cfg.last_bn,
                 activation=head_cfg.activation, bn_group_size=config.model.bn_group_size,
                 bn_momentum=config.model.bn_momentum, out_bias=False, rngs=rngs)


def build_model(config, *, in_channels, rngs):
  """The base encoder + projector and the predictor (a TwoBranchModel), all heads bias-free."""
  encoder = common.build_encoder(config, in_channels=in_channels, rngs=rngs)
  projector = _head(config.model.head, encoder.out_dim, config, rngs)
  mean, std = data.image_stats(config.data.name, in_channels)
  online = models.EncoderProjector(encoder, projector, mean, std)
  return models.TwoBranchModel(online, _head(config.model.predictor, config.model.head.out_dim, config, rngs))


host_crops = _momentum.host_crops


init_extra = _momentum.init_target_extra  # the momentum encoder: a copy of the base encoder + projector


make_views = _momentum.two_views


def loss_fn(model, views, batch, key, ctx):
  """q1, q2 (base encoder, projector, predictor) and k1, k2 (momentum encoder), one view per pass each;
  the loss is mocov3_infonce(q1, k2) + mocov3_infonce(q2, k1)."""
  config, target = ctx.config, ctx.extra['target']
  q, k, h = [], [], []
  for view in range(2):
    hook = None if ctx.after_stem is None else functools.partial(ctx.after_stem, first_view=view)
    z, features = model.online(views[:, view], train=True, return_features=True, after_stem=hook)
    q.append(model.predictor(z, train=True))
    h.append(features)
    keys, target = _momentum.run_target(model.online, target, views[:, view], after_stem=hook)
    k.append(keys)
  temperature = config.loss.temperature
  loss = (mocov3_infonce(q[0], k[1], temperature=temperature) +
          mocov3_infonce(q[1], k[0], temperature=temperature))
  metrics = {**common.contrastive_metrics(jnp.stack([q[0], k[1]], axis=1)), 'ema_tau': _tau(ctx)}
  return loss, (metrics, {**ctx.extra, 'target': target}, h[0])


def _tau(ctx):
  """The momentum of the update after this step: the official code's m at the next step."""
  return _momentum.ema_rate(ctx.config.ema, ctx.step + 1, ctx.total_steps)


def after_update(extra, params, ctx):
  """The momentum encoder moved towards the updated base encoder + projector (rate m(step + 1))."""
  return {**extra, 'target': _momentum.ema_update(extra['target'], params['online'], _tau(ctx))}
