"""Multi-crop views (Caron et al., SwAV, NeurIPS 2020): V global crops and M smaller local crops per image.

`config.multicrop` (a framework that declares `Capabilities.multi_crop` reads it):
  num_global    V crops at the step's resolution (`data.image_size` or the stage's), view i (1-based) drawn
                from `augment{i}` or `augment` (`augment.view_config`), crop scale included;
  num_local     M crops at `local_size` px; local crop j is view V + j and follows the same rule, except that
                its crop scale is `local_crop_scale` (SwAV ImageNet: 2 x 224 px at (0.14, 1) and 6 x 96 px at
                (0.05, 0.14)); 0 = no local crops.
The views are a `MultiCropViews` pair, one array per resolution, because the crops of one resolution go
through the encoder together (`encode`): one forward pass per resolution, so BatchNorm statistics are per
resolution group, as in SwAV's code. The local size is static, so the trainer's one compiled step per view
resolution is one step per set of resolutions.

Fixed-size data are cropped here, on the device. Variable-size data are cropped on the host (`host_crops`,
RandomResizedCrop per crop size as in SwAV's code): the batch then carries the global crops as 'image'
(B, V, R, R, 3) and the local ones as 'local_image' (B, M, r, r, 3), and `make_views` applies the rest of each
view's augment block to them, so the views have the same shapes either way.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssl_jax import data
from ssl_jax.data import augment
from ssl_jax.errors import UserError

_LOCAL_STREAM = 0x4C6F63  # 'Loc': the local crops' own key stream, so the global crops equal a run without them


class MultiCropViews(NamedTuple):
  """The views of one step, one array per resolution (a pytree)."""
  global_views: jax.Array        # (B, V, R, R, C) float in [0, 1]
  local_views: jax.Array | None  # (B, M, r, r, C), or None without local crops


def global_views(views) -> jax.Array:
  """The global (full-resolution) views (B, V, R, R, C) of `views`: a MultiCropViews or a plain array."""
  return views.global_views if isinstance(views, MultiCropViews) else views


def check_config(config) -> None:
  """Raises UserError for a multi-crop setting the views cannot be made for."""
  mc = config.multicrop
  if mc.num_local and mc.local_size > config.data.image_size:
    raise UserError(f'multicrop.local_size={mc.local_size} is larger than data.image_size='
                    f'{config.data.image_size}; local crops are the smaller ones')


def _local_config(config, view: int):
  cfg = augment.view_config(config, view).copy_and_resolve_references()
  cfg.crop_scale = tuple(config.multicrop.local_crop_scale)
  return cfg


def host_crops(config) -> tuple[data.HostCrop, ...]:
  """The host crops of variable-size data: the V global crops (view i's crop fields, `augment.host_crops`),
  then the M local crops at `local_size` px with `local_crop_scale` (and view V + j's crop ratio)."""
  mc = config.multicrop
  views = range(mc.num_global + 1, mc.num_global + mc.num_local + 1)
  local = tuple(data.HostCrop(mc.local_size, tuple(mc.local_crop_scale),
                              tuple(augment.view_config(config, v).crop_ratio)) for v in views)
  return augment.host_crops(config, mc.num_global) + local


def make_views(key: jax.Array, batch: dict, config, resolution: int) -> MultiCropViews:
  """The V global and M local views of every image, each with its own key and augment block.

  Args:
    key: the step key (the global crops use it as `augment.make_views` would, so they are the views of a
      run without local crops).
    batch: 'image', uint8 (B, H, W, C) fixed-size images, or the host crops (B, V, S, S, C) of variable-size
      data with the local ones in 'local_image' (B, M, s, s, C) (`host_crops`): then only the rest of each
      view's augment block applies.
    config: the run's config (`multicrop`, `augment`, `augment{i}`).
    resolution: side of the global crops.

  Returns:
    MultiCropViews, float32 in [0, 1], under stop_gradient.
  """
  mc, images = config.multicrop, batch['image']
  views = augment.make_views(key, images, augment.view_configs(config, mc.num_global), resolution)
  local = None
  if mc.num_local:
    local_images = images
    if images.ndim == 5:
      if 'local_image' not in batch:
        raise ValueError('host-cropped images come without their local crops: give the source the crops of '
                         '`host_crops(config)`')
      local_images = batch['local_image']
    cfgs = [_local_config(config, mc.num_global + j) for j in range(1, mc.num_local + 1)]
    local = augment.make_views(jax.random.fold_in(key, _LOCAL_STREAM), local_images, cfgs, mc.local_size)
  return MultiCropViews(views, local)


def encode(fn, views: MultiCropViews) -> jax.Array:
  """`fn` over the rows of each resolution group in one call per group; (B, V + M, D), globals first.

  Args:
    fn: (N, S, S, C) -> (N, D), e.g. the encoder in train mode; each call uses its own BatchNorm statistics.
    views: the step's views.

  Returns:
    (B, V + M, D): the outputs of every view of every example. Rows go through `fn` example-major, which keeps
    each device's rows on that device and ghost BatchNorm groups independent of the device count.
  """
  out = []
  for group in views:
    if group is not None:
      b, v = group.shape[:2]
      out.append(fn(group.reshape(b * v, *group.shape[2:])).reshape(b, v, -1))
  return jnp.concatenate(out, axis=1)
