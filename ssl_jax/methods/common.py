"""Building blocks shared by the methods: the encoder + projector model and view generation."""
from flax import nnx
import jax
import jax.numpy as jnp

from ssl_jax import data, losses
from ssl_jax.data import augment
from ssl_jax.errors import UserError
from ssl_jax.models import MLPHead, compute_dtype, create_encoder


class EncoderProjector(nnx.Module):
  """An encoder, its projection head, and the input normalisation of the dataset it trains on."""

  def __init__(self, encoder, projector, mean, std):
    self.encoder = encoder
    self.projector = projector
    # Static tuples: part of the graph definition, so a restored model normalises exactly as it trained.
    self.mean, self.std = tuple(mean), tuple(std)

  def features(self, images, *, train: bool, after_stem=None):
    """Encoder features (N, D) of float images in [0, 1], shape (N, H, W, C) (`after_stem`: see ResNet)."""
    return self.encoder(augment.normalize(images, self.mean, self.std), train=train, after_stem=after_stem)

  def __call__(self, images, *, train: bool, return_features: bool = False, after_stem=None):
    """Projections (N, P) of float images in [0, 1]; with `return_features`, also the encoder features."""
    h = self.features(images, train=train, after_stem=after_stem)
    z = self.projector(h, train=train)
    return (z, h) if return_features else z


def build_encoder(config, *, in_channels: int, rngs: nnx.Rngs):
  m = config.model
  return create_encoder(m.name, stem=m.stem, width=m.width, num_stages=m.num_stages or None,
                        in_channels=in_channels, bn_group_size=m.bn_group_size, bn_momentum=m.bn_momentum,
                        dtype=compute_dtype(m.dtype), rngs=rngs)


def build_head(head_cfg, in_dim: int, *, config, rngs: nnx.Rngs):
  return MLPHead(in_dim, hidden_dim=head_cfg.hidden_dim, out_dim=head_cfg.out_dim,
                 num_layers=head_cfg.num_layers, use_bn=head_cfg.use_bn, last_bn=head_cfg.last_bn,
                 activation=head_cfg.activation, bn_group_size=config.model.bn_group_size,
                 bn_momentum=config.model.bn_momentum, rngs=rngs)


def build_encoder_projector(config, *, in_channels: int, rngs: nnx.Rngs) -> EncoderProjector:
  encoder = build_encoder(config, in_channels=in_channels, rngs=rngs)
  projector = build_head(config.model.head, encoder.out_dim, config=config, rngs=rngs)
  mean, std = data.image_stats(config.data.name, in_channels)
  return EncoderProjector(encoder, projector, mean, std)


def make_views(key, batch, ctx):
  """`config.num_views` augmented views (B, V, R, R, C) in [0, 1], all drawn from `config.augment`."""
  config = ctx.config
  return augment.make_views(key, batch['image'], augment.view_configs(config, config.num_views), ctx.resolution)


def project_views(model, views, after_stem=None):
  """Projections (B, V, P) and encoder features (B, V, D) of all views in ONE forward pass.

  One pass, so BatchNorm sees every view of the batch. Rows are flattened example-major (B·V), which keeps
  each device's rows on that device and keeps ghost BatchNorm groups independent of the device count.
  `after_stem`: the step context's hook (`StepContext.after_stem`), or None.
  """
  b, v = views.shape[:2]
  z, h = model(views.reshape(b * v, *views.shape[2:]), train=True, return_features=True,
               after_stem=after_stem)
  return z.reshape(b, v, -1), h.reshape(b, v, -1)


def contrastive_metrics(z) -> dict:
  """Cheap collapse monitors: the mean cosine between views and the per-dimension std of normalised z."""
  zn = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)
  metrics = {'z_std': jnp.mean(jnp.std(zn[:, 0], axis=0))}
  if z.shape[1] > 1:
    metrics['pos_cosine'] = jnp.mean(jnp.sum(zn[:, 0] * zn[:, 1], axis=-1))
  return jax.tree.map(lambda x: x.astype(jnp.float32), metrics)


LOSS_REDUCTIONS = ('mean_of_log', 'log_of_mean')


def chunk_size(loss_cfg) -> int:
  """`loss.chunk_size` (0 for configs saved before the field existed); UserError unless an integer >= 0."""
  size = loss_cfg.get('chunk_size', 0)
  if isinstance(size, bool) or not isinstance(size, int) or size < 0:
    raise UserError(f'loss.chunk_size={size!r} must be an integer >= 0 (0: all logits at once; C: C anchors '
                    'at a time, memory O(N·C) instead of O(N²))')
  return size


def build_contrastive_model(config, *, in_channels: int, rngs: nnx.Rngs) -> EncoderProjector:
  """`build_encoder_projector` after checking the `config.loss` fields the contrastive loss reads."""
  chunk_size(config.loss)
  return build_encoder_projector(config, in_channels=in_channels, rngs=rngs)


def contrastive_objective(z, labels, loss_cfg):
  """The contrastive loss `config.loss` names, on projections z (B, V, P) and optional labels (B,).

  `loss_cfg.reduction` 'mean_of_log' is `losses.contrastive_loss` (NT-Xent, or SupCon with labels);
  'log_of_mean' is `losses.nt_xent_log_of_mean`, the RepMix code's form (two views, no labels).
  `loss_cfg.chunk_size` > 0 computes either in chunks of that many anchors (same value, O(N·C) memory).
  """
  if loss_cfg.reduction not in LOSS_REDUCTIONS:
    raise UserError(f'loss.reduction={loss_cfg.reduction!r} is unknown; '
                    f'use one of {", ".join(LOSS_REDUCTIONS)}')
  if loss_cfg.reduction == 'mean_of_log':
    return losses.contrastive_loss(z, labels, temperature=loss_cfg.temperature,
                                   chunk_size=chunk_size(loss_cfg))
  if labels is not None or z.shape[1] != 2:
    raise UserError("loss.reduction='log_of_mean' takes two views and no labels; use it with simclr or "
                    "repmix and num_views=2, or set loss.reduction='mean_of_log'")
  return losses.nt_xent_log_of_mean(z, temperature=loss_cfg.temperature, chunk_size=chunk_size(loss_cfg))


def contrastive_loss_fn(model, views, batch, key, ctx, *, use_labels: bool):
  """The SimCLR / SupCon step: all views in one forward pass -> `contrastive_objective`."""
  z, h = project_views(model, views, ctx.after_stem)
  labels = batch['label'] if use_labels else None
  loss = contrastive_objective(z, labels, ctx.config.loss)
  return loss, (contrastive_metrics(z), ctx.extra, h[:, 0])
