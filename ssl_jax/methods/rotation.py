"""Rotation prediction as an auxiliary task (Addepalli et al., ECCV 2022), an add-on for every framework.

"Towards Efficient and Effective Self-Supervised Learning of Visual Representations": besides its own loss,
the framework learns to predict by how much a copy of each of its two main views was rotated, a well-posed
task that converges fast. Switched on by `--config.rotation.enabled=True` for every framework that declares
the add-on (`CAPABILITIES.addons`):

  * for each of views[:, 0] and views[:, 1] (with multi-crop: the first two global crops; local crops are
    never rotated, as in the official SwAV + rotation code), a rotated copy: image b of view m is turned
    counter-clockwise by k·360/`num_angles` degrees, k drawn uniformly per copy (0 included, so a quarter of
    the 4-angle copies are not turned), from a key stream of its own: the framework's views and randomness
    are those of a run without the add-on. 90-degree multiples are exact; the 45/30/60-degree turns of the
    8- and 12-angle sets are bilinear with black (0) corners (our choice: the paper does not say how it made
    them);
  * each copy goes through the encoder (+ projector) in a forward pass of its own, after the framework's, so
    it has its own BatchNorm batch statistics (as the official code's separate calls) and never enters the
    framework's loss; the encoder's running statistics are updated by these passes too, as in the code;
  * the head `model.rotation_head` (Linear -> BN -> ReLU -> Linear to one logit per angle) reads the projector
    output (`head_on='projector'`, the paper's text, figure and its best ablation; for BYOL / SimSiam the
    projection before the predictor) or the backbone feature (`'backbone'`, the official SwAV code). For the
    two-branch methods the online network is used; the BYOL / MoCo target never sees a rotated copy;
  * loss = framework loss + `weight`·(CE_1 + CE_2), each CE a batch mean (the official code's
    `rot_wt·(CE1 + CE2)`; the paper's tuned "2λ" values are this weight, e.g. BYOL on CIFAR 0.2).

With `weight=0` the framework's gradients are bit-identical to the framework alone's (tested), so are its
parameters; only the encoder's BatchNorm running statistics (used by evaluation) also see the rotated copies.

Logged: `ssl_loss` (the framework's loss alone), `rotation_loss` ((CE_1 + CE_2)/2, log(num_angles) at
chance) and `rotation_top1` (the head's accuracy on the rotated copies of the batch).
"""
import dataclasses

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.data import augment, multicrop
from ssl_jax.errors import UserError
from ssl_jax.models import MLPHead

ANGLE_SETS = (2, 4, 8, 12)   # {0, 180}, quarter turns, 45-degree and 30-degree steps (the paper's ablation)
HEAD_INPUTS = ('projector', 'backbone')
_ANGLE_STREAM = 0x526F74  # 'Rot': a key stream of its own, so the framework's randomness is unchanged


def enabled(config) -> bool:
  """True when the config switches the rotation task on."""
  return bool(config.rotation.enabled)


def check_config(config, method) -> None:
  """Raises UserError when `method` makes fewer than the two views the task rotates (the schema checks the
  `config.rotation` fields, `methods.check_config` that the framework accepts the add-on; both run in
  train.check_run)."""
  num_views = sum(crop.size is None for crop in method.host_crops(config))   # views at the step's resolution
  if num_views < 2:
    raise UserError(f'rotation needs two views per image (it rotates copies of views 1 and 2) but '
                    f'{config.method} makes {num_views}; set --config.num_views=2')


def build_head(config, in_dim: int, *, rngs) -> MLPHead:
  """The rotation head: Linear(in_dim -> hidden) -> BN -> ReLU -> Linear(hidden -> num_angles)."""
  r, m = config.rotation, config.model
  return MLPHead(in_dim, hidden_dim=r.hidden_dim or in_dim, out_dim=r.num_angles, num_layers=2, use_bn=True,
                 activation='relu', bn_group_size=m.bn_group_size, bn_momentum=m.bn_momentum, rngs=rngs)


def draw_labels(key: jax.Array, batch_size: int, num_angles: int) -> jax.Array:
  """The angle labels of one step: int32 (B, 2), one per rotated copy of views 1 and 2, uniform.

  Args:
    key: the step key (the one `make_views` and `loss_fn` get); a stream of its own is folded out of it.
    batch_size: B, the global batch size.
    num_angles: size of the angle set.

  Returns:
    (B, 2) int32 in [0, num_angles).
  """
  return jax.random.randint(jax.random.fold_in(key, _ANGLE_STREAM), (batch_size, 2), 0, num_angles)


def rotation_terms(model, rotated: jax.Array, labels: jax.Array, config) -> tuple[jax.Array, dict]:
  """Each rotated view through the model in its own forward pass, then the head; its CE and accuracy.

  Args:
    model: the framework's model with `rotation_head` attached; called as `model(x, train=True)` for
      projections and `model.features(x, train=True)` for backbone features.
    rotated: (B, 2, R, R, C) rotated copies of views 1 and 2, float in [0, 1].
    labels: (B, 2) their angle labels.
    config: the run's config (`rotation.head_on`).

  Returns:
    (CE_1 + CE_2, {'rotation_loss': (CE_1 + CE_2)/2, 'rotation_top1': accuracy over the 2B copies}).
  """
  ces, hits = [], []
  for m in range(rotated.shape[1]):
    x = rotated[:, m]
    rep = model(x, train=True) if config.rotation.head_on == 'projector' else model.features(x, train=True)
    logits = model.rotation_head(rep, train=True)
    ces.append(losses.rotation_cross_entropy(logits, labels[:, m]))
    hits.append(jnp.mean((jnp.argmax(logits, axis=-1) == labels[:, m]).astype(jnp.float32)))
  total = sum(ces)
  return total, {'rotation_loss': total / len(ces), 'rotation_top1': sum(hits) / len(hits)}


def combined_loss(loss_fn, model, views, rotated, labels, batch, key, ctx):
  """The framework's loss on `views` plus weight·(CE_1 + CE_2) on the rotated copies.

  The framework runs first, on the un-rotated views only; the rotated copies follow in their own passes, so
  nothing of them (not even BatchNorm statistics) reaches the framework's loss.

  Args:
    loss_fn: the framework's `loss_fn(model, views, batch, key, ctx)`.
    model: the model with `rotation_head`.
    views: the framework's views ((B, V, R, R, C), or multicrop.MultiCropViews).
    rotated: (B, 2, R, R, C) rotated copies of views 1 and 2; labels: (B, 2) their angle labels.
    batch, key, ctx: as for `loss_fn`.

  Returns:
    (loss, (metrics, extra, features)) as a method's `loss_fn`; metrics gain `ssl_loss`, `rotation_loss`
    and `rotation_top1`.
  """
  ssl_loss, (metrics, extra, features) = loss_fn(model, views, batch, key, ctx)
  rot_loss, rot_metrics = rotation_terms(model, rotated, labels, ctx.config)
  loss = ssl_loss + ctx.config.rotation.weight * rot_loss
  metrics = {**metrics, 'ssl_loss': ssl_loss, **jax.lax.stop_gradient(rot_metrics)}
  return loss, (metrics, extra, features)


def apply(method, config):
  """`method` with the rotation head attached to its model and the rotation loss added to its loss.

  Args:
    method: the framework (a Method).
    config: the run's config, checked by `check_config`.

  Returns:
    The extended Method.
  """
  num_angles = config.rotation.num_angles

  def build_model(config, *, in_channels, rngs):
    model = method.build_model(config, in_channels=in_channels, rngs=rngs)
    in_dim = config.model.head.out_dim if config.rotation.head_on == 'projector' else model.encoder.out_dim
    # Built after the framework's model, so the framework's initial weights equal those of a run without it.
    model.rotation_head = build_head(config, in_dim, rngs=rngs)
    return model

  def loss_fn(model, views, batch, key, ctx):
    main = multicrop.global_views(views)   # with multi-crop, only the first two global crops are rotated
    labels = draw_labels(key, main.shape[0], num_angles)
    rotated = augment.rotate_by_label(main[:, :2], labels, num_angles)
    return combined_loss(method.loss_fn, model, views, rotated, labels, batch, key, ctx)

  return dataclasses.replace(method, build_model=build_model, loss_fn=loss_fn)
