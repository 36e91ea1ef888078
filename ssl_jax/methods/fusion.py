"""Batch fusion add-on (BA-SSL / CDOA, Zhang et al.): a view's batch fused in front of the encoder.

Switched on by `--config.fusion.enabled=True` for every framework that declares the add-on
(`CAPABILITIES.addons`). The module is ssl_jax/models/fusion.py: the released code's (`fusion.variant=
'released'`, the default) or our earlier gated reading ('gated'). What the add-on does, and where it follows
the released code (CDOA's `MoCo.forward` and training loop, read in JsongZhang/US-MTD120K-Benchmarking-Test):

  * [faithful] which view: only view 2 (`fusion.views='second'`); view 1 is untouched, so the module gets
    its gradient through view 2's online branch only. `views='both'` (a switch: whether the arXiv paper
    fuses one view or both is unknown) fuses every view of the step, each view on its own;
  * [faithful] where: after the augmentation and the input normalisation, in front of the encoder, during
    pre-training only. The frameworks normalise inside the model, so the released variant fuses the
    normalised view n = (x - mean)/std and hands the framework n' · std + mean, which the model normalises
    back to n' (float32 rounding apart). The gated variant fuses the [0, 1] images, as it was measured;
  * [faithful] the momentum target: the views are fused before the framework's loss runs, so a momentum
    encoder (BYOL's target, MoCo's keys) sees the same fused tensor as the online one, under its
    stop-gradient (no gradient reaches the module through it). With MoCo v2's asymmetric loss view 2 feeds
    ONLY the key encoder, so with views='second' the module would never get a gradient: use the symmetric
    loss (`moco.symmetric=True`, as the released MoCo v3) or views='both' (configs/fusion_imagenet100.py does);
  * [switch of form] groups: `fusion.group_size` consecutive examples of the GLOBAL batch (the code: the
    per-GPU batch of 128), so groups and results do not depend on the device count. With views='both' the
    two views use independent partners (`share_groups=False`, the default: each view is permuted by its own
    permutation drawn from the step key before grouping and put back after) or the same ones (True). Shared
    partners let the loss be solved through the partners' content (seen with the gated variant on the
    digits), so independent ones are the default; with one fused view there are no partners to share;
  * evaluation, the online probe's inference and `load_encoder` read `model.features`, which never applies
    the layer: the model holds it as its attribute `fusion`, outside the framework's own parameter paths (a
    momentum target copies `online` only and never contains it).

`fusion.num_blocks = 0` means no module: the run is exactly the framework alone (the ablation's baseline
row). Logged: `fusion_change`, rms(fused - input)/rms(input) over the fused normalised views (released), or
`fusion_alpha`, the gate (gated).

Placement (`fusion.placement`): 'input' (the default, the code's) fuses the views' images as above. 'stem'
(ours) fuses the output of a ResNet's stem instead (C = the stem's channels, side R/4 or R), through
`StepContext.after_stem`, a hook every framework declaring `stem_hook` passes to each encoder call of its
training step, the momentum target's included; the target applies the ONLINE fusion layer under its
stop-gradient. The hook fuses the rows of the chosen views only, grouped per view as with the input
placement. The rotation add-on's rotated copies are not fused at the stem.
"""
import dataclasses

import jax
import jax.numpy as jnp

from ssl_jax import data, models, stages
from ssl_jax.errors import UserError
from ssl_jax.models import compute_dtype
from ssl_jax.models.fusion import BatchFusion, GatedBatchFusion

PLACEMENTS = ('input', 'stem')
VIEWS = ('second', 'both')

_PERMUTATION_STREAM = 0x46757365  # 'Fuse': a key stream of its own; the framework's randomness is unchanged


def enabled(config) -> bool:
  """True when the config switches batch fusion on."""
  return bool(config.fusion.enabled)


def check_config(config, method) -> None:
  """Raises UserError for a `config.fusion` block the run cannot use with `method`: the add-on's cross-field
  rules (train.check_run calls it; config_schema has checked each field)."""
  f = config.fusion
  if f.placement == 'stem' and not method.capabilities.stem_hook:
    raise UserError(f'fusion.placement="stem" is not available with method={config.method!r} (it does not '
                    'pass the stem hook); use placement="input" or a framework that declares stem_hook')
  # At the stem it fuses ResNet stem outputs (the patch rule below reads the ResNet stem's stride).
  if f.placement == 'stem' and models.family(config.model.name) == 'vit':
    raise UserError('fusion.placement="stem" needs a ResNet encoder; with a ViT use fusion.placement="input"')
  if config.batch_size % f.group_size:
    raise UserError(f'batch_size={config.batch_size} is not divisible by fusion.group_size={f.group_size}; '
                    'pick a group size that divides the global batch')
  stride = _stem_stride(config) if f.placement == 'stem' else 1
  bad = [s for s in stages.image_sizes(config) if s % (f.patch_size * stride)]
  if bad:
    where = f'the view size {bad[0]}' + (f' / the stem stride {stride}' if stride > 1 else '')
    raise UserError(f'fusion.patch_size={f.patch_size} does not divide {where}; use a patch size that '
                    'divides it at data.image_size and every image_size of config.stages')


def _stem_stride(config) -> int:
  """The encoder stem's stride: 4 for the ImageNet stem (conv and max-pool), 1 for the CIFAR stem."""
  return 4 if config.model.stem == 'imagenet' else 1


def build_layer(config, *, in_channels: int, rngs):
  """The fusion layer of `config.fusion` for inputs (images or stem outputs) of `in_channels`."""
  f = config.fusion
  dtype = compute_dtype(config.model.dtype)
  if f.variant == 'released':
    return BatchFusion(in_channels, patch_size=f.patch_size, group_size=f.group_size, num_blocks=f.num_blocks,
                       width=f.width, dtype=dtype, rngs=rngs)
  return GatedBatchFusion(in_channels, patch_size=f.patch_size, group_size=f.group_size,
                          num_blocks=f.num_blocks, width=f.width, kernel_size=f.kernel_size, norm=f.norm,
                          activation=f.activation, gate=f.gate, gate_init=f.gate_init, gate_max=f.gate_max,
                          dtype=dtype, rngs=rngs)


def fuse_views(layer, views: jax.Array, key: jax.Array, *, progress, permute: bool, first_view: int = 0):
  """Every view of `views` fused by `layer`, each view's batch on its own.

  Args:
    layer: the fusion layer.
    views: (B, V, R, R, C) views (images or stem outputs), example-major; B a multiple of the group size.
    key: the step key; with `permute` it draws one permutation of the B examples per view.
    progress: training progress in [0, 1] (the gated variant's scheduled gate).
    permute: False: examples b..b+G-1 form a group in every view. True: each view is grouped after its own
      random permutation (independent partners) and put back in order after the fusion.
    first_view: the step's index of views[:, 0] (each view's permutation depends on its index).

  Returns:
    (B, V, R, R, C) float32 fused views, in the order of `views`.
  """
  b, v = views.shape[:2]
  x = jnp.swapaxes(views, 0, 1)  # view-major: a group never holds two views (B % G == 0)
  if permute:
    stream = jax.random.fold_in(key, _PERMUTATION_STREAM)
    keys = jax.vmap(lambda i: jax.random.fold_in(stream, i))(first_view + jnp.arange(v))
    perms = jax.vmap(lambda k: jax.random.permutation(k, b))(keys)
    x = jax.vmap(lambda xv, p: xv[p])(x, perms)
  y = layer(x.reshape(v * b, *x.shape[2:]), progress=progress).astype(jnp.float32).reshape(x.shape)
  if permute:
    y = jax.vmap(lambda yv, p: yv[jnp.argsort(p)])(y, perms)
  return jnp.swapaxes(y, 0, 1)


def _fused_indices(views_setting: str, first_view: int, count: int) -> list[int]:
  """Positions (0..count-1) of the fused views among views first_view..first_view+count-1."""
  return [i for i in range(count) if views_setting == 'both' or first_view + i == 1]


def _relative_change(before, after) -> jax.Array:
  """rms(after - before) / rms(before), a float32 scalar under stop_gradient."""
  before, after = jax.lax.stop_gradient(before), jax.lax.stop_gradient(after)
  return jnp.sqrt(jnp.mean(jnp.square(after - before)) / jnp.maximum(jnp.mean(jnp.square(before)), 1e-12))


def apply(method, config):
  """`method` with a batch-fusion layer in front of its encoder during pre-training.

  Args:
    method: the framework (possibly already extended by earlier add-ons).
    config: the run's config, checked by `check_config`.

  Returns:
    The extended Method (the same one when `fusion.num_blocks` is 0).
  """
  f = config.fusion
  if not f.num_blocks:
    return method
  at_stem, released = f.placement == 'stem', f.variant == 'released'
  permute = f.views == 'both' and not f.share_groups

  def build_model(config, *, in_channels, rngs):
    model = method.build_model(config, in_channels=in_channels, rngs=rngs)
    # Built after the framework's model, so the framework's initial weights equal those of a run without it.
    channels = model.encoder.stem_dim if at_stem else in_channels
    model.fusion = build_layer(config, in_channels=channels, rngs=rngs)
    return model

  def fuse_some(model, x, key, progress, first_view):
    """x (B, V', ...) holds views first_view..; the chosen ones fused: (new x, (before, after) or None)."""
    picked = _fused_indices(f.views, first_view, x.shape[1])
    if not picked:
      return x, None
    sel = jnp.asarray(picked)
    before = x[:, sel]
    if released and not at_stem:  # the code fuses the normalised view
      mean, std = data.image_stats(config.data.name, x.shape[-1])
      mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
      before = (before.astype(jnp.float32) - mean) / std
    after = fuse_views(model.fusion, before, key, progress=progress, permute=permute,
                       first_view=first_view + picked[0] if len(picked) == 1 else first_view)
    out = after * std + mean if released and not at_stem else after
    return x.at[:, sel].set(out.astype(x.dtype)), (before, after)

  def loss_fn(model, views, batch, key, ctx):
    progress = jnp.asarray(ctx.step, jnp.float32) / max(ctx.total_steps, 1)
    change = None
    if at_stem:
      b = views.shape[0]

      def after_stem(rows, first_view=0):
        x = rows.reshape(b, -1, *rows.shape[1:])
        return fuse_some(model, x, key, progress, first_view)[0].reshape(rows.shape)

      ctx = dataclasses.replace(ctx, after_stem=after_stem)
    else:
      views, pair = fuse_some(model, views, key, progress, 0)
      change = None if pair is None else _relative_change(*pair)
    loss, (metrics, extra, features) = method.loss_fn(model, views, batch, key, ctx)
    if not released:
      metrics = {**metrics, 'fusion_alpha': jax.lax.stop_gradient(model.fusion.alpha_at(progress))}
    elif change is not None:
      metrics = {**metrics, 'fusion_change': change}
    return loss, (metrics, extra, features)

  return dataclasses.replace(method, build_model=build_model, loss_fn=loss_fn)
