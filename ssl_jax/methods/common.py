"""Building blocks shared by the methods: the encoder + projector model and view generation."""
from flax import nnx
import jax
import jax.numpy as jnp

from ssl_jax import data, losses
from ssl_jax.data import augment
from ssl_jax.errors import UserError
from ssl_jax.models import EncoderProjector, MLPHead, compute_dtype, create_encoder


def build_encoder(config, *, in_channels: int, rngs: nnx.Rngs):
  m = config.model
  return create_encoder(m.name, stem=m.stem, width=m.width, num_stages=m.num_stages or None,
                        in_channels=in_channels, bn_group_size=m.bn_group_size, bn_momentum=m.bn_momentum,
                        dtype=compute_dtype(m.dtype), rngs=rngs, patch_size=m.patch_size, num_heads=m.num_heads,
                        pos_embed=m.pos_embed, freeze_patch_embed=m.freeze_patch_embed, pool=m.pool,
                        image_size=config.data.image_size)


def build_head(head_cfg, in_dim: int, *, config, rngs: nnx.Rngs):
  # hidden_dim 0: the input's width (MoCo's official builder: dim_mlp = the encoder's output width).
  return MLPHead(in_dim, hidden_dim=head_cfg.hidden_dim or in_dim, out_dim=head_cfg.out_dim,
                 num_layers=head_cfg.num_layers, use_bn=head_cfg.use_bn, last_bn=head_cfg.last_bn,
                 activation=head_cfg.activation, bn_group_size=config.model.bn_group_size,
                 bn_momentum=config.model.bn_momentum, rngs=rngs)


def build_encoder_projector(config, *, in_channels: int, rngs: nnx.Rngs) -> EncoderProjector:
  encoder = build_encoder(config, in_channels=in_channels, rngs=rngs)
  projector = build_head(config.model.head, encoder.out_dim, config=config, rngs=rngs)
  mean, std = data.image_stats(config.data.name, in_channels)
  return EncoderProjector(encoder, projector, mean, std)


def make_views(key, batch, ctx):
  """`config.num_views` augmented views (B, V, R, R, C) in [0, 1]; view i from `augment{i}`, else `augment`."""
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


class CollapseMonitor:
  """Reads the logged collapse monitors and says once when the projections look collapsed.

  `z_std` (contrastive_metrics) is the per-dimension std over the batch of the L2-normalised projections:
  about 1/sqrt(P) for P-dim projections spread over the sphere, 0 when they all point one way. The rule:
  z_std·sqrt(P) below RATIO at PATIENCE logs in a row. Healthy runs stay near 1 (SupCon on the digits with a
  BatchNorm-ended head: 0.8-1.0); the collapsed SupCon/SelfCon digits runs sat near 0.16.
  `pos_cosine` near 1 alone is no sign (supervised losses pull views of a class together), so it is only
  reported in the message.
  """
  RATIO, PATIENCE = 0.25, 3

  def __init__(self, out_dim: int):
    self.out_dim = out_dim
    self.streak = 0
    self.warned = False

  def update(self, metrics: dict) -> str | None:
    """The warning to log for this log step's mean metrics, or None (at most one warning per run)."""
    if 'z_std' not in metrics:
      return None
    ratio = metrics['z_std'] * self.out_dim ** 0.5
    self.streak = self.streak + 1 if ratio < self.RATIO else 0
    if self.warned or self.streak < self.PATIENCE:
      return None
    self.warned = True
    cosine = f', pos_cosine {metrics["pos_cosine"]:.3f}' if 'pos_cosine' in metrics else ''
    return (f'the projections look collapsed: z_std {metrics["z_std"]:.4f} is {ratio:.2f} x '
            f'1/sqrt({self.out_dim}) (below {self.RATIO}) for {self.PATIENCE} logs in a row{cosine}; the '
            'encoder may be learning little. A BatchNorm at the end of the projection head often helps '
            '(--config.model.head.last_bn=True)')


LOSS_REDUCTIONS = ('mean_of_log', 'log_of_mean')


def check_contrastive(config, *, use_labels: bool) -> None:
  """The cross-field rule of `contrastive_objective`: the log_of_mean form takes two views and no labels."""
  if config.loss.reduction == 'log_of_mean' and (use_labels or config.num_views != 2):
    raise UserError("loss.reduction='log_of_mean' takes two views and no labels; use it with simclr or "
                    "repmix and num_views=2, or set loss.reduction='mean_of_log'")


def contrastive_objective(z, labels, loss_cfg):
  """The contrastive loss `config.loss` names, on projections z (B, V, P) and optional labels (B,).

  `loss_cfg.reduction` 'mean_of_log' is `losses.contrastive_loss` (NT-Xent, or SupCon with labels);
  'log_of_mean' is `losses.nt_xent_log_of_mean`, the RepMix code's form (two views, no labels).
  `loss_cfg.chunk_size` > 0 computes either in chunks of that many anchors (same value, O(N·C) memory).
  'mean_of_log' also reads `supcon_form` ('out' | 'in') and `no_positive` ('exclude' | 'zero'), see
  `losses.contrastive_loss`.
  """
  if loss_cfg.reduction == 'mean_of_log':
    return losses.contrastive_loss(z, labels, temperature=loss_cfg.temperature, chunk_size=loss_cfg.chunk_size,
                                   form=loss_cfg.supcon_form, no_positive=loss_cfg.no_positive)
  return losses.nt_xent_log_of_mean(z, temperature=loss_cfg.temperature, chunk_size=loss_cfg.chunk_size)


def contrastive_loss_fn(model, views, batch, key, ctx, *, use_labels: bool):
  """The SimCLR / SupCon step: all views in one forward pass -> `contrastive_objective`."""
  z, h = project_views(model, views, ctx.after_stem)
  labels = batch['label'] if use_labels else None
  loss = contrastive_objective(z, labels, ctx.config.loss)
  return loss, (contrastive_metrics(z), ctx.extra, h[:, 0])
