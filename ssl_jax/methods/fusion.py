"""Batch fusion add-on (BA-SSL, Zhang, Shen & Liu, arXiv 2311.09974): each view's batch fused pre-encoder.

OUR READING of the paper, whose full text and code were not available (see ssl_jax/models/fusion.py for
what is known and which choices are guesses). Switched on for any framework (simclr, supcon, byol, simsiam,
moco) by `--config.fusion.enabled=True`:

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

Placement: only on the input images (`fusion.placement='input'`). 'stem' (after the encoder's stem) is
refused: each framework lays out the rows its encoder sees differently (SimCLR / SupCon / BYOL / SimSiam run
both views example-major in one pass, so G consecutive rows after the stem would put an image's two views in
one group; MoCo runs the views separately and its key encoder sees a shuffled batch), and the BYOL / MoCo
target is a copy of the online encoder's graph, so a hook inside the encoder would also run, with the
online fusion weights, inside the target. Doing it right needs a layout-aware hook passed through every
framework's forward calls.
"""
import dataclasses

import jax
import jax.numpy as jnp

from ssl_jax import stages
from ssl_jax.errors import UserError
from ssl_jax.models.fusion import BatchFusion, check_options

_PERMUTATION_STREAM = 0x46757365  # 'Fuse': a key stream of its own; the framework's randomness is unchanged


def enabled(config) -> bool:
  """True when the config switches batch fusion on."""
  return 'fusion' in config and bool(config.fusion.enabled)


def check_config(config) -> None:
  """Raises UserError for a `config.fusion` block the run cannot use (before any compute)."""
  f = config.fusion
  check_options(patch_size=f.patch_size, group_size=f.group_size, num_layers=f.num_layers, width=f.width,
                kernel_size=f.kernel_size, norm=f.norm, activation=f.activation, gate=f.gate)
  if f.placement != 'input':
    raise UserError(f'fusion.placement={f.placement!r} is not available; use "input" (fusion after the stem '
                    'would need a layout-aware hook in every framework: see ssl_jax/methods/fusion.py)')
  if config.batch_size % f.group_size:
    raise UserError(f'batch_size={config.batch_size} is not divisible by fusion.group_size={f.group_size}; '
                    'pick a group size that divides the global batch')
  sizes = stages.image_sizes(config)
  bad = [s for s in sizes if s % f.patch_size]
  if bad:
    raise UserError(f'fusion.patch_size={f.patch_size} does not divide the view size {bad[0]}; use a '
                    'patch size that divides data.image_size and every image_size of config.stages')


def build_layer(config, *, in_channels: int, rngs) -> BatchFusion:
  """The `BatchFusion` layer of `config.fusion` for images with `in_channels` channels."""
  f = config.fusion
  return BatchFusion(in_channels, patch_size=f.patch_size, group_size=f.group_size, num_layers=f.num_layers,
                     width=f.width, kernel_size=f.kernel_size, norm=f.norm, activation=f.activation,
                     gate=f.gate, gate_init=f.gate_init, gate_max=f.gate_max,
                     dtype=jnp.dtype(config.model.dtype), rngs=rngs)


def fuse_views(layer: BatchFusion, views: jax.Array, key: jax.Array, *, progress, share_groups: bool):
  """Every view's batch fused by `layer`, each view on its own.

  Args:
    layer: the fusion layer.
    views: (B, V, R, R, C) views, example-major; B a multiple of the layer's group size.
    key: the step key; with `share_groups=False` it draws one permutation of the B samples per view.
    progress: training progress in [0, 1] (for the scheduled gate).
    share_groups: True: samples b..b+G-1 form a group in every view. False: each view is grouped after its
      own random permutation (independent partners) and put back in order after the fusion.

  Returns:
    (B, V, R, R, C) fused views, in the same order as `views`.
  """
  b, v = views.shape[:2]
  x = jnp.swapaxes(views, 0, 1)  # view-major: a group never holds two views (B % G == 0)
  if not share_groups:
    keys = jax.random.split(jax.random.fold_in(key, _PERMUTATION_STREAM), v)
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
  check_config(config)
  if not config.fusion.num_layers:
    return method
  share = bool(config.fusion.share_groups)

  def build_model(config, *, in_channels, rngs):
    model = method.build_model(config, in_channels=in_channels, rngs=rngs)
    # Built after the framework's model, so the framework's initial weights equal those of a run without it.
    model.fusion = build_layer(config, in_channels=in_channels, rngs=rngs)
    return model

  def loss_fn(model, views, batch, key, ctx):
    progress = jnp.asarray(ctx.step, jnp.float32) / max(ctx.total_steps, 1)
    fused = fuse_views(model.fusion, views, key, progress=progress, share_groups=share)
    loss, (metrics, extra, features) = method.loss_fn(model, fused, batch, key, ctx)
    metrics = {**metrics, 'fusion_alpha': jax.lax.stop_gradient(model.fusion.alpha_at(progress))}
    return loss, (metrics, extra, features)

  return dataclasses.replace(method, build_model=build_model, loss_fn=loss_fn)
