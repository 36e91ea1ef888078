"""Batch fusion add-on (BA-SSL, Zhang, Shen & Liu, arXiv 2311.09974): each view's batch fused pre-encoder.

OUR READING of the paper, whose full text and code were not available (see ssl_jax/models/fusion.py for
what is known and which choices are guesses). Switched on by `--config.fusion.enabled=True` for every
framework that declares the add-on (`CAPABILITIES.addons`):

  * the model gets a `BatchFusion` layer as its attribute `fusion`, so the framework's own parameter paths do
    not change (a BYOL / MoCo target copies `online` only and never contains the fusion layer);
  * in the training loss, each view's image batch views[:, v] (B, R, R, C) in [0, 1] goes through the layer
    before the framework's loss runs: x + α·fuse(x) (not clipped; the encoder's input normalisation comes
    after it), with groups of `fusion.group_size` consecutive samples of the GLOBAL batch (example-major),
    so the groups and the results do not depend on the device count;
  * the two views use independent group partners (`fusion.share_groups=False`, the default: each view is
    permuted by its own permutation drawn from the step key before grouping, and put back after) or the
    same ones (True: samples b..b+G-1 form a group in both views, the literal batch order). With shared
    partners the two views of an image both carry the content of the same partners, so the loss can be
    solved through the partners rather than the image: on the embedded digits (SimCLR, 30 steps) α rose to
    8 while the loss fell far below the framework's and the online probe stayed at chance (10%); with
    independent partners α stayed within ±0.6 and loss and probe followed the framework alone;
  * evaluation, the online probe's inference and `load_encoder` read `model.features`, which never applies
    the layer: the fusion exists during pre-training only.

`fusion.num_layers = 0` means no embedding layer: nothing is fused and the run is exactly the framework alone
(the baseline row of the number-of-layers ablation). α is logged as `fusion_alpha`.

Placement (`fusion.placement`): 'input' (the default) fuses the views' images as above. 'stem' fuses the
output of the encoder's stem instead (after its first conv, BN, ReLU and, with the ImageNet stem, max-pool:
C = the stem's channels, side R/4 or R), through `StepContext.after_stem`, a hook every framework passes to
each encoder call of its training step. The hook regroups the rows it gets (views first_view.. of every
example, example-major) by view, exactly as the input placement does, so an image's two views are never
in one group; a momentum target (BYOL, MoCo keys) applies the ONLINE fusion layer after its own stem,
under its stop-gradient, as it sees online-fused images with the input placement. MoCo's keys are view 2
(`first_view=1`): they draw their own partners, and with shuffle-BN they are grouped in the shuffled order.
The rotation add-on's rotated copies are not fused at the stem (they run outside the framework's calls).
Frameworks that pass the hook declare `stem_hook` in their CAPABILITIES; the others refuse the 'stem' placement.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from ssl_jax import stages
from ssl_jax.errors import UserError
from ssl_jax.models import compute_dtype, resnet
from ssl_jax.models.fusion import BatchFusion, check_options

PLACEMENTS = ('input', 'stem')

_PERMUTATION_STREAM = 0x46757365  # 'Fuse': a key stream of its own; the framework's randomness is unchanged


def enabled(config) -> bool:
  """True when the config switches batch fusion on."""
  return 'fusion' in config and bool(config.fusion.enabled)


def check_config(config, method) -> None:
  """Raises UserError for a `config.fusion` block the run cannot use with `method` (before any compute)."""
  f = config.fusion
  check_options(patch_size=f.patch_size, group_size=f.group_size, num_layers=f.num_layers, width=f.width,
                kernel_size=f.kernel_size, norm=f.norm, activation=f.activation, gate=f.gate)
  if f.placement not in PLACEMENTS:
    raise UserError(f'fusion.placement={f.placement!r} is unknown; use one of {", ".join(PLACEMENTS)}')
  if f.placement == 'stem' and not method.capabilities.stem_hook:
    raise UserError(f'fusion.placement="stem" is not available with method={config.method!r} (it does not '
                    'pass the stem hook); use placement="input" or a framework that declares stem_hook')
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
  stem = config.model.stem or resnet.default_stem(config.model.name)
  return 4 if stem == 'imagenet' else 1


def build_layer(config, *, in_channels: int, rngs) -> BatchFusion:
  """The `BatchFusion` layer of `config.fusion` for inputs (images or stem outputs) of `in_channels`."""
  f = config.fusion
  return BatchFusion(in_channels, patch_size=f.patch_size, group_size=f.group_size, num_layers=f.num_layers,
                     width=f.width, kernel_size=f.kernel_size, norm=f.norm, activation=f.activation,
                     gate=f.gate, gate_init=f.gate_init, gate_max=f.gate_max,
                     dtype=compute_dtype(config.model.dtype), rngs=rngs)


def fuse_views(layer: BatchFusion, views: jax.Array, key: jax.Array, *, progress, share_groups: bool,
               first_view: int = 0):
  """Every view's batch fused by `layer`, each view on its own.

  Args:
    layer: the fusion layer.
    views: (B, V, R, R, C) views (images or stem outputs), example-major; B a multiple of the group size.
    key: the step key; with `share_groups=False` it draws one permutation of the B samples per view.
    progress: training progress in [0, 1] (for the scheduled gate).
    share_groups: True: samples b..b+G-1 form a group in every view. False: each view is grouped after its
      own random permutation (independent partners) and put back in order after the fusion.
    first_view: the index of views[:, 0] among the step's views (its permutation depends on it).

  Returns:
    (B, V, R, R, C) fused views, in the same order as `views`.
  """
  b, v = views.shape[:2]
  x = jnp.swapaxes(views, 0, 1)  # view-major: a group never holds two views (B % G == 0)
  if not share_groups:
    stream = jax.random.fold_in(key, _PERMUTATION_STREAM)
    keys = jax.vmap(lambda i: jax.random.fold_in(stream, i))(first_view + jnp.arange(v))
    perms = jax.vmap(lambda k: jax.random.permutation(k, b))(keys)
    x = jax.vmap(lambda xv, p: xv[p])(x, perms)
  y = layer(x.reshape(v * b, *x.shape[2:]), progress=progress).reshape(x.shape)
  if not share_groups:
    y = jax.vmap(lambda yv, p: yv[jnp.argsort(p)])(y, perms)
  return jnp.swapaxes(y, 0, 1)


def apply(method, config):
  """`method` with a batch-fusion layer in front of its encoder during pre-training.

  Args:
    method: the framework (possibly already extended by earlier add-ons).
    config: the run's config; `config.fusion` is checked here.

  Returns:
    The extended Method (the same one when `fusion.num_layers` is 0).
  """
  check_config(config, method)
  if not config.fusion.num_layers:
    return method
  share, at_stem = bool(config.fusion.share_groups), config.fusion.placement == 'stem'

  def build_model(config, *, in_channels, rngs):
    model = method.build_model(config, in_channels=in_channels, rngs=rngs)
    # Built after the framework's model, so the framework's initial weights equal those of a run without it.
    channels = model.encoder.stem_dim if at_stem else in_channels
    model.fusion = build_layer(config, in_channels=channels, rngs=rngs)
    return model

  def loss_fn(model, views, batch, key, ctx):
    progress = jnp.asarray(ctx.step, jnp.float32) / max(ctx.total_steps, 1)
    fuse = functools.partial(fuse_views, model.fusion, key=key, progress=progress, share_groups=share)
    if at_stem:
      b = views.shape[0]

      def after_stem(rows, first_view=0):
        return fuse(rows.reshape(b, -1, *rows.shape[1:]), first_view=first_view).reshape(rows.shape)

      ctx = dataclasses.replace(ctx, after_stem=after_stem)
    else:
      views = fuse(views)
    loss, (metrics, extra, features) = method.loss_fn(model, views, batch, key, ctx)
    metrics = {**metrics, 'fusion_alpha': jax.lax.stop_gradient(model.fusion.alpha_at(progress))}
    return loss, (metrics, extra, features)

  return dataclasses.replace(method, build_model=build_model, loss_fn=loss_fn)
