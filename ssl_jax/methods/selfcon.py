"""SelfCon (Bae et al., AAAI 2023): single-view supervised contrastive learning over the exits of one network.

A sub-network branches off the backbone ResNet after stage `selfcon.exit_stage` (default 2); each exit has
its own projection head (Linear(d, d) -> ReLU -> Linear(d, 128), no BatchNorm, L2-normalised in the loss).
The two exits of one image are two "views" of it, so a single augmented view per image suffices: the
backbone runs once per image instead of twice, which is the method's saving in memory and time.

Sub-networks (`selfcon.sub_net`), as in the official code (networks/resnet_big.py):
  fc     global average pool of the exit stage's output, then Linear(stage width -> backbone feature width)
  small  an unshared copy of the remaining stages with half the blocks (rounded down, at least 1), then pool
  same   an unshared copy of the remaining stages, then pool
The sub-network never shares parameters with the backbone's later stages; the stem and the stages up to the
exit are shared and get gradients from both exits (no stop-gradient anywhere).

Variants (`selfcon.variant`); every one goes through `objective`, with `losses.selfcon_loss`:
  selfcon     one view, labels: every other vector with the same label is a positive, the image's other exit
              included (so no anchor is ever without a positive)
  selfcon_m   two views, labels (4 vectors per image)
  selfcon_su  one view, no labels: the positives are the image's other exits
  selfcon_mu  two views, no labels: official code: each view is its own instance, so the positives are the
              other exits of the same view and the image's other view is a negative; with
              `selfcon.mu_other_view_positive` (the issue's and, as far as we know, the paper's reading) every
              other exit of either view is a positive (the code's alpha variant of MU already does this)
  supcon      the baseline: two views, backbone only (no sub-network), SupCon's L_out
  supcon_s    the single-view baseline: one view, backbone only; anchors whose label appears once in the batch
              have no positive and are left out (the official code's `supcon_s` filter)
`selfcon.alpha` > 0 gives the official "*" variants (SelfCon-S*, -M*, -SU*, -MU*): a contrastive loss on
the backbone vectors alone (SupCon-S, SupCon or SimCLR; none for SelfCon-SU*, as in the official code)
plus alpha times the SelfCon term in which only sub-network vectors are anchors (backbone vectors stay in
every denominator). With `selfcon.official_temperature_scaling` (on in the recipes, as in the official code
inherited from SupContrast) every loss term is multiplied by τ / 0.07; off gives the plain loss.
`selfcon.view_major_bn` (on in the recipes, as the official code) puts the rows of the two-view variants in
view-major order for the model, so each ghost BatchNorm group (`model.bn_group_size`) holds one view, as
each GPU's BatchNorm does under the official nn.DataParallel; off, groups hold whole examples with both
views (`project`). Single-view variants are the same either way.

The number of views comes from the variant (`config.num_views` is not read). Evaluation reads the backbone
exit (`features`, `encoder`); `exit_features` gives every exit, and the linear-evaluation CLI and the
trainer's final evaluation score a linear probe on each exit and on their ensemble (mean of the probes'
logits), as the official `main_linear.py --subnet` does.
"""
import dataclasses
import functools

from flax import nnx
import jax.numpy as jnp

from ssl_jax import data, losses, methods
from ssl_jax.data import augment
from ssl_jax.errors import UserError
from ssl_jax.methods import common
from ssl_jax.models import MLPHead, multi_exit, resnet


@dataclasses.dataclass(frozen=True)
class Variant:
  """What a `selfcon.variant` name means for the views, the model and the positives."""
  views: int           # augmented views per image
  sub_network: bool    # SelfCon (two exits) or a backbone-only baseline
  labels: bool         # supervised positives


VARIANTS = {
    'selfcon': Variant(views=1, sub_network=True, labels=True),
    'selfcon_m': Variant(views=2, sub_network=True, labels=True),
    'selfcon_su': Variant(views=1, sub_network=True, labels=False),
    'selfcon_mu': Variant(views=2, sub_network=True, labels=False),
    'supcon': Variant(views=2, sub_network=False, labels=True),
    'supcon_s': Variant(views=1, sub_network=False, labels=True),
}
SUB_NETS = ('fc', 'small', 'same')
BASE_TEMPERATURE = 0.07  # SupContrast's base_temperature, hard-coded in SelfCon's ConLoss


def variant(config) -> Variant:
  """The `config.selfcon.variant` entry of VARIANTS (a name the schema has checked)."""
  return VARIANTS[config.selfcon.variant]


CAPABILITIES = methods.Capabilities(needs_labels=lambda config: variant(config).labels, addons=('fusion',),
                                    config_blocks=('selfcon',))


def check_config(config) -> None:
  """Raises UserError for an alpha the variant cannot use, or an exit stage the backbone does not have."""
  cfg = config.selfcon
  if cfg.alpha and not variant(config).sub_network:
    raise UserError(f'selfcon.alpha={cfg.alpha} must be 0 for the baseline {cfg.variant!r} (alpha weighs the '
                    'sub-network term of the SelfCon "*" variants)')
  stages = resnet.stages_kept(config)
  if variant(config).sub_network and not 1 <= cfg.exit_stage < stages:
    raise UserError(f'selfcon.exit_stage={cfg.exit_stage} must lie in 1..{stages - 1}: the sub-network branches '
                    f'off after a stage of the {stages}-stage backbone and replaces the ones after it')


# ----------------------------------------------------------------------------------------------- model
def _head(model_cfg, in_dim: int, *, rngs: nnx.Rngs) -> MLPHead:
  h = model_cfg.head
  # hidden_dim 0 = the exit's own width: SelfCon's head is d -> d -> ReLU -> out_dim.
  return MLPHead(in_dim, hidden_dim=h.hidden_dim or in_dim, out_dim=h.out_dim, num_layers=h.num_layers,
                 use_bn=h.use_bn, last_bn=h.last_bn, activation=h.activation,
                 bn_group_size=model_cfg.bn_group_size, bn_momentum=model_cfg.bn_momentum, rngs=rngs)


def build_model(config, *, in_channels, rngs):
  """The backbone of `config.model`, its head and, for the SelfCon variants, the sub-network and its head."""
  encoder = common.build_encoder(config, in_channels=in_channels, rngs=rngs)
  head = _head(config.model, encoder.out_dim, rngs=rngs)
  sub_network = sub_head = None
  k = config.selfcon.exit_stage
  if variant(config).sub_network:
    sub_network = multi_exit.SubNetwork(encoder, k, config.selfcon.sub_net, model_cfg=config.model, rngs=rngs)
    sub_head = _head(config.model, sub_network.out_dim, rngs=rngs)
  mean, std = data.image_stats(config.data.name, in_channels)
  return multi_exit.SelfConModel(encoder, head, sub_network, sub_head, exit_stage=k, mean=mean, std=std)


# ----------------------------------------------------------------------------------------------- step
def host_crops(config):
  """The variant's views per image (1: SelfCon, SelfCon-SU, SupCon-S; or 2), view i with augment{i}'s crop."""
  return augment.host_crops(config, variant(config).views)


def make_views(key, batch, ctx):
  """The variant's augmented views (B, V, R, R, C) in [0, 1]; view i from `augment{i}`, else `augment`."""
  config = ctx.config
  views = augment.view_configs(config, variant(config).views)
  return augment.make_views(key, batch['image'], views, ctx.resolution)


def objective(z, labels, *, name: str, alpha: float, temperature: float, base_temperature: float | None,
              mu_other_view_positive: bool = False, chunk_size: int = 0):
  """The loss of variant `name` on projections of every view and exit (official `main_represent._train`).

  Args:
    z: (B, V, E, P) projections: V views, E exits (sub-network first, backbone last; E = 1 for baselines).
    labels: (B,) integer labels; ignored by the unsupervised variants.
    name: a key of VARIANTS.
    alpha: 0 for the plain variants; > 0 for the "*" variants (sub-network anchors only, times alpha, plus
      the backbone-only term).
    temperature: τ.
    base_temperature: scale every term by τ / base_temperature (official: 0.07); None for no scaling.
    mu_other_view_positive: SelfCon-MU: the image's other view is a positive (else, as the official code,
      each view is its own instance).
    chunk_size: anchors per chunk of every `losses.selfcon_loss` term (0: all at once).

  Returns:
    Scalar float32 loss.
  """
  v = VARIANTS[name]
  b, views, exits, p = z.shape
  labels = labels if v.labels else None
  loss = functools.partial(losses.selfcon_loss, temperature=temperature, base_temperature=base_temperature,
                           chunk_size=chunk_size)
  if not alpha:
    if name == 'selfcon_mu' and not mu_other_view_positive:
      return loss(z.reshape(b * views, exits, p))
    return loss(z.reshape(b, views * exits, p), labels)
  sub_anchors = tuple(i * exits + e for i in range(views) for e in range(exits - 1))
  total = alpha * loss(z.reshape(b, views * exits, p), labels, anchor_views=sub_anchors)
  if views > 1 or labels is not None:  # single-view SelfCon-SU* has no backbone term (official code)
    total = total + loss(z[:, :, -1], labels)
  return total


def project(model, views, *, view_major: bool):
  """Projections (B, V, E, P) and backbone features (B, V, D) of all views in one pass of the model.

  The rows go through the model example-major (all views of example 0, then of example 1, ...), so each
  device keeps its own rows and a ghost BatchNorm group of G rows holds G / V examples with all their views;
  or, with `view_major`, all first views, then all second views, so that each group of G <= B rows
  (B % G == 0) holds one view only, as in the official code, whose nn.DataParallel splits its view-major
  batch into one chunk per GPU. Either way the groups are fixed rows of the global batch, so results do not
  depend on the device count; view-major moves rows between devices (an all-to-all on the mesh).
  """
  b, n = views.shape[:2]
  if view_major:
    z, h = model(jnp.swapaxes(views, 0, 1).reshape(n * b, *views.shape[2:]), train=True)
    return jnp.swapaxes(z.reshape(n, b, *z.shape[1:]), 0, 1), jnp.swapaxes(h.reshape(n, b, -1), 0, 1)
  z, h = model(views.reshape(b * n, *views.shape[2:]), train=True)
  return z.reshape(b, n, *z.shape[1:]), h.reshape(b, n, -1)


def loss_fn(model, views, batch, key, ctx):
  """All views through the multi-exit model in one pass (`project`) -> `objective`."""
  del key
  config = ctx.config
  b, n = views.shape[:2]
  cfg = config.selfcon
  z, h = project(model, views, view_major=cfg.view_major_bn)
  loss = objective(z, batch['label'], name=cfg.variant, alpha=cfg.alpha, temperature=config.loss.temperature,
                   base_temperature=BASE_TEMPERATURE if cfg.official_temperature_scaling else None,
                   mu_other_view_positive=cfg.mu_other_view_positive,
                   chunk_size=config.loss.chunk_size)
  metrics = common.contrastive_metrics(z.reshape(b, n * z.shape[2], -1))
  return loss, (metrics, ctx.extra, h[:, 0])
