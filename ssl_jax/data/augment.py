"""On-device image augmentation in pure JAX, one image and one key at a time.

Every op takes a single float32 HWC image in [0, 1] (C = 3 for RGB, C = 1 for grayscale data such as the
digits) and, if it is random, a single key. Batches go through `jax.vmap` over `jax.random.split(key, B)`, so
every example draws its own randomness; `augment_batch` and `make_views` do that for a whole config. All
shapes are static and all randomness comes from the key, so everything here runs inside the jitted train step.

Probabilities and strengths given as Python numbers are static: an op whose probability or strength is 0 is
skipped at trace time, which makes it the exact identity and costs nothing. Probabilities may also be traced
scalars. The definitions follow torchvision's (RandomResizedCrop, ColorJitter, RandomGrayscale, GaussianBlur,
RandomSolarize), as used by SimCLR, BYOL and their successors.
"""
from collections.abc import Sequence
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import ml_collections

from ssl_jax import data
from ssl_jax.errors import UserError

# ITU-R 601 luma weights, the ones torchvision's rgb_to_grayscale uses.
_LUMA = (0.299, 0.587, 0.114)
# torchvision's RandomResizedCrop tries this many boxes before falling back to a central crop.
_CROP_TRIES = 10


def default_config() -> ml_collections.ConfigDict:
  """SimCLR's augmentation recipe (Chen et al., 2020), the starting point for every view config.

  Returns:
    ConfigDict with the fields `augment_image` reads: crop, crop_scale, crop_ratio, flip_prob, jitter_prob,
    brightness, contrast, saturation, hue, grayscale_prob, blur_prob, blur_sigma, blur_kernel_frac,
    fixed_blur_sigma, solarize_prob, solarize_threshold.
  """
  return ml_collections.ConfigDict(dict(
      crop=True, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3),
      flip_prob=0.5,
      jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
      grayscale_prob=0.2,
      blur_prob=0.0, blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1,
      fixed_blur_sigma=(0.0, 0.0),  # (vertical, horizontal) sigma of an always-on blur; 0 = none (RepMix)
      solarize_prob=0.0, solarize_threshold=0.5,
  ))


def _never(prob) -> bool:
  """True when `prob` is a static zero, so the op can be left out of the graph."""
  return isinstance(prob, (int, float)) and prob == 0


def _coin(key: jax.Array, prob) -> jax.Array:
  """A boolean scalar that is True with probability `prob` (exactly never at 0, always at 1)."""
  return jax.random.uniform(key) < prob


# ----------------------------------------------------------------------------------------------- geometry


def _resize_box(image: jax.Array, box: Sequence, out_size: int) -> jax.Array:
  """Resizes the window box = (top, left, height, width) of `image` to (out_size, out_size), bilinearly.

  The window may be traced, so instead of slicing it out, the whole image goes through one affine resample
  that maps the window onto the output grid. The triangle kernel is widened when shrinking (antialias), as
  torchvision's tensor resize does by default; unlike torchvision, which crops first, pixels just outside
  the window then carry a little weight at its border.
  """
  top, left, height, width = (jnp.asarray(v, jnp.float32) for v in box)
  scale = jnp.stack([out_size / height, out_size / width])
  translation = -jnp.stack([top, left]) * scale
  out = jax.image.scale_and_translate(
      image, (out_size, out_size, image.shape[-1]), (0, 1), scale, translation, method="linear",
      antialias=True, precision=jax.lax.Precision.HIGHEST)
  return out.astype(image.dtype)


def _uniform_int(u: jax.Array, most: jax.Array) -> jax.Array:
  """Maps u uniform in [0, 1) to an integer uniform in {0, ..., most}."""
  # The product can round up to most + 1 in float32, hence the clamp.
  return jnp.minimum(jnp.floor(u * (most + 1)).astype(jnp.int32), most)


def random_crop_box(key: jax.Array, height: int, width: int, scale: Sequence[float] = (0.08, 1.0),
                    ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
  """Samples a RandomResizedCrop window with torchvision's rule, as fixed-shape array code.

  Ten candidate boxes are drawn at once: area fraction uniform in `scale`, log aspect ratio (width / height)
  uniform in log(`ratio`), sides rounded to integers. The first candidate that fits in the image wins, at a
  uniformly random integer position. If none fits, the box is the central crop of the whole image with its
  aspect ratio clamped into `ratio`.

  Args:
    key: PRNG key.
    height: image height H (static).
    width: image width W (static).
    scale: (min, max) fraction of the image area.
    ratio: (min, max) aspect ratio width / height.

  Returns:
    (4,) int32 array [top, left, box_height, box_width], always inside the image.
  """
  s_lo, s_hi = map(float, scale)
  r_lo, r_hi = map(float, ratio)
  # One draw for everything: each extra random call inlines another hash into the step's graph.
  u = jax.random.uniform(key, (2 * _CROP_TRIES + 2,))
  area = height * width * (s_lo + (s_hi - s_lo) * u[:_CROP_TRIES])
  aspect = jnp.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * u[_CROP_TRIES:2 * _CROP_TRIES])
  box_w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  box_h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
  first = jnp.argmax(fits)  # index of the first True; 0 if there is none, caught by `found`.
  found = fits[first]

  # The fallback only depends on static shapes, so it is plain Python.
  if width / height < r_lo:
    fb_w, fb_h = width, int(round(width / r_lo))
  elif width / height > r_hi:
    fb_w, fb_h = int(round(height * r_hi)), height
  else:
    fb_w, fb_h = width, height
  box_h = jnp.where(found, box_h[first], fb_h)
  box_w = jnp.where(found, box_w[first], fb_w)
  top = jnp.where(found, _uniform_int(u[-2], height - box_h), (height - fb_h) // 2)
  left = jnp.where(found, _uniform_int(u[-1], width - box_w), (width - fb_w) // 2)
  return jnp.stack([top, left, box_h, box_w]).astype(jnp.int32)


def random_resized_crop(key: jax.Array, image: jax.Array, out_size: int, scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
  """torchvision's RandomResizedCrop: a random box (see `random_crop_box`) resized bilinearly to a square.

  Args:
    key: PRNG key.
    image: (H, W, C) float image.
    out_size: output side length (static).
    scale: (min, max) fraction of the image area the box covers.
    ratio: (min, max) aspect ratio width / height of the box.

  Returns:
    (out_size, out_size, C) image.
  """
  box = random_crop_box(key, image.shape[0], image.shape[1], scale, ratio)
  return _resize_box(image, box, out_size)


def center_crop_resize(image: jax.Array, out_size: int) -> jax.Array:
  """Deterministic eval transform: the largest central square, resized bilinearly to out_size.

  For a square image this is a plain resize of the whole image; a square of the right size is returned as is.

  Args:
    image: (H, W, C) float image.
    out_size: output side length (static).

  Returns:
    (out_size, out_size, C) image.
  """
  height, width = image.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  image = image[top:top + side, left:left + side]
  if side == out_size:
    return image
  return _resize_box(image, (0, 0, side, side), out_size)


def random_flip(key: jax.Array, image: jax.Array, prob) -> jax.Array:
  """Mirrors the image left-right with probability `prob`.

  Args:
    key: PRNG key.
    image: (H, W, C) image.
    prob: probability of flipping, in [0, 1].

  Returns:
    (H, W, C) image.
  """
  if _never(prob):
    return image
  return jnp.where(_coin(key, prob), image[:, ::-1], image)


# ----------------------------------------------------------------------------------------------- colour


def _luma(image: jax.Array) -> jax.Array:
  """(H, W, 1) grayscale version of an (H, W, C) image; a 1-channel image is its own grayscale."""
  if image.shape[-1] == 1:
    return image
  return jnp.tensordot(image, jnp.asarray(_LUMA, image.dtype), axes=([-1], [0]),
                       precision=jax.lax.Precision.HIGHEST)[..., None]


def _blend(image: jax.Array, other: jax.Array, factor) -> jax.Array:
  """factor * image + (1 - factor) * other, clipped to [0, 1] (torchvision's _blend)."""
  return jnp.clip(factor * image + (1 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor) -> jax.Array:
  """Multiplies every pixel by `factor` (>= 0) and clips to [0, 1].

  Args:
    image: (H, W, C) image in [0, 1].
    factor: brightness factor; 1 is the identity, 0 gives black.

  Returns:
    (H, W, C) image.
  """
  return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor) -> jax.Array:
  """Blends the image with the mean of its grayscale version; result clipped to [0, 1].

  Args:
    image: (H, W, C) image in [0, 1].
    factor: contrast factor; 1 is the identity, 0 gives a flat gray image.

  Returns:
    (H, W, C) image.
  """
  return _blend(image, jnp.mean(_luma(image)), factor)


def adjust_saturation(image: jax.Array, factor) -> jax.Array:
  """Blends the image with its grayscale version per pixel; the identity for 1-channel images.

  Args:
    image: (H, W, C) image in [0, 1].
    factor: saturation factor; 1 is the identity, 0 gives the grayscale image.

  Returns:
    (H, W, C) image.
  """
  if image.shape[-1] == 1:
    return image
  return _blend(image, _luma(image), factor)


def _rgb_to_hsv(rgb: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = jnp.max(rgb, axis=-1)
  chroma = value - jnp.min(rgb, axis=-1)
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  # Gray pixels have no hue; a safe divisor keeps the unused branches finite.
  safe = jnp.where(chroma > 0, chroma, 1.0)
  sector = jnp.where(value == r, (g - b) / safe,
                     jnp.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  hue = jnp.where(chroma > 0, (sector / 6.0) % 1.0, 0.0)
  return hue, saturation, value


def _hsv_to_rgb(hue: jax.Array, saturation: jax.Array, value: jax.Array) -> jax.Array:
  # Closed form of the six-sector HSV cone: channel n (R=5, G=3, B=1) dips by v*s on its own 120° arc.
  k = (jnp.asarray([5.0, 3.0, 1.0], hue.dtype) + hue[..., None] * 6.0) % 6.0
  dip = jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return value[..., None] * (1.0 - saturation[..., None] * dip)


def adjust_hue(image: jax.Array, delta) -> jax.Array:
  """Rotates the hue in HSV space by `delta` turns; the identity for 1-channel images.

  Args:
    image: (H, W, C) image in [0, 1].
    delta: hue shift in [-0.5, 0.5] turns (1/3 maps pure red to pure green).

  Returns:
    (H, W, C) image, clipped to [0, 1].
  """
  if image.shape[-1] == 1:
    return image
  hue, saturation, value = _rgb_to_hsv(image)
  return jnp.clip(_hsv_to_rgb((hue + delta) % 1.0, saturation, value), 0.0, 1.0)


def color_jitter(key: jax.Array, image: jax.Array, brightness: float, contrast: float, saturation: float,
                 hue: float, prob) -> jax.Array:
  """torchvision's ColorJitter, applied with probability `prob` (SimCLR's RandomApply(ColorJitter, p)).

  Brightness, contrast and saturation factors are drawn uniformly from [max(0, 1 - s), 1 + s], the hue shift
  from [-hue, hue]; the four adjustments run in a random order drawn per call (so per example under vmap).
  The strengths are static Python numbers: an op with strength 0 is left out, so all-zero strengths are the
  exact identity.

  Args:
    key: PRNG key.
    image: (H, W, C) image in [0, 1].
    brightness: brightness strength s >= 0.
    contrast: contrast strength s >= 0.
    saturation: saturation strength s >= 0.
    hue: hue strength in [0, 0.5].
    prob: probability of jittering at all.

  Returns:
    (H, W, C) image in [0, 1].
  """
  if image.shape[-1] == 1:
    # Saturation and hue leave gray pixels as they are; dropping them shrinks the graph.
    saturation, hue = 0.0, 0.0
  # One draw: [apply, four factors, four sort keys for the order]; fewer random calls, smaller graph.
  u = jax.random.uniform(key, (9,))
  ops = []
  for i, (adjust, s) in enumerate(((adjust_brightness, brightness), (adjust_contrast, contrast),
                                   (adjust_saturation, saturation))):
    if s > 0:
      lo = max(0.0, 1.0 - s)
      ops.append(functools.partial(adjust, factor=lo + (1.0 + s - lo) * u[1 + i]))
  if hue > 0:
    ops.append(functools.partial(adjust_hue, delta=hue * (2.0 * u[4] - 1.0)))
  if not ops or _never(prob):
    return image

  # Sorting i.i.d. uniforms gives a uniformly random permutation.
  order = jnp.argsort(u[5:5 + len(ops)])

  def step(i, x):
    # Every op is evaluated and one result picked, which is what a vmapped lax.switch does anyway; switch
    # itself fails to vmap inside a loop over a batch sharded on an explicit mesh.
    return jnp.stack([op(x) for op in ops])[order[i]]

  # A loop keeps one copy of each op in the compiled graph instead of one per position.
  jittered = jax.lax.fori_loop(0, len(ops), step, image)
  return jnp.where(u[0] < prob, jittered, image)


def random_grayscale(key: jax.Array, image: jax.Array, prob) -> jax.Array:
  """Replaces the image by its luma (0.299 R + 0.587 G + 0.114 B) in every channel, with probability `prob`.

  Args:
    key: PRNG key.
    image: (H, W, C) image; a 1-channel image is returned unchanged.
    prob: probability of converting.

  Returns:
    (H, W, C) image.
  """
  if image.shape[-1] == 1 or _never(prob):
    return image
  gray = jnp.broadcast_to(_luma(image), image.shape)
  return jnp.where(_coin(key, prob), gray, image)


def _correlate_axis(image: jax.Array, weights: jax.Array, axis: int) -> jax.Array:
  """Correlates every channel of `image` with the odd-length 1-D `weights` along `axis`, reflect-padded."""
  radius = weights.shape[0] // 2
  pad = [(0, 0)] * image.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(image, pad, mode="reflect")
  size = image.shape[axis]
  # A handful of shifted slices: vmaps and shards trivially, and the kernel is at most a few dozen taps.
  return sum(weights[t] * jax.lax.slice_in_dim(padded, t, t + size, axis=axis)
             for t in range(weights.shape[0]))


def gaussian_blur(key: jax.Array, image: jax.Array, prob, sigma: Sequence[float] = (0.1, 2.0), *,
                  kernel_size: int) -> jax.Array:
  """Separable Gaussian blur with a random sigma, with probability `prob` (torchvision's GaussianBlur).

  Args:
    key: PRNG key.
    image: (H, W, C) image.
    prob: probability of blurring.
    sigma: (min, max); the standard deviation in pixels is drawn uniformly from it.
    kernel_size: odd static kernel width; the border is reflect-padded.

  Returns:
    (H, W, C) image.
  """
  if kernel_size % 2 != 1:  # an even kernel would silently shift the image by half a pixel
    raise ValueError(f"kernel_size={kernel_size} must be odd")
  sigma_lo, sigma_hi = map(float, sigma)
  if _never(prob):
    return image
  k_apply, k_sigma = jax.random.split(key)
  std = jax.random.uniform(k_sigma, minval=sigma_lo, maxval=sigma_hi)
  taps = jnp.arange(kernel_size, dtype=jnp.float32) - kernel_size // 2
  weights = jnp.exp(-0.5 * jnp.square(taps / std))
  weights = (weights / jnp.sum(weights)).astype(image.dtype)
  blurred = _correlate_axis(_correlate_axis(image, weights, 0), weights, 1)
  return jnp.where(_coin(k_apply, prob), blurred, image)


def _gaussian_taps(sigma: float, kernel_size: int) -> jax.Array:
  taps = jnp.arange(kernel_size, dtype=jnp.float32) - kernel_size // 2
  weights = jnp.exp(-0.5 * jnp.square(taps / sigma))
  return weights / jnp.sum(weights)


def fixed_gaussian_blur(image: jax.Array, sigma: Sequence[float], *, kernel_size: int) -> jax.Array:
  """A deterministic, always-applied separable Gaussian blur with its own sigma per axis.

  kornia's `GaussianBlur2d((k, k), (sigma_y, sigma_x))`, border 'reflect', which the RepMix code applies to
  every augmented view with sigma (0.1, 2.0): a horizontal-only blur (at sigma 0.1 the vertical kernel's side
  taps are below 1e-21). A sigma of 0 leaves that axis alone.

  Args:
    image: (H, W, C) image.
    sigma: (vertical, horizontal) standard deviations in pixels, >= 0.
    kernel_size: odd static kernel width of both axes; 1 is the identity.

  Returns:
    (H, W, C) image.
  """
  if kernel_size % 2 != 1:  # an even kernel would silently shift the image by half a pixel
    raise ValueError(f"kernel_size={kernel_size} must be odd")
  for axis, s in enumerate(sigma):
    if s > 0 and kernel_size > 1:
      image = _correlate_axis(image, _gaussian_taps(float(s), kernel_size).astype(image.dtype), axis)
  return image


def solarize(key: jax.Array, image: jax.Array, prob, threshold=0.5) -> jax.Array:
  """Inverts every pixel >= threshold (x -> 1 - x), with probability `prob`.

  Args:
    key: PRNG key.
    image: (H, W, C) image in [0, 1].
    prob: probability of solarizing.
    threshold: pixels at or above it are inverted.

  Returns:
    (H, W, C) image.
  """
  if _never(prob):
    return image
  solarized = jnp.where(image >= threshold, 1.0 - image, image)
  return jnp.where(_coin(key, prob), solarized, image)


# ----------------------------------------------------------------------------------------------- recipes


def blur_kernel_size(kernel_frac: float, out_size: int) -> int:
  """The odd integer nearest to kernel_frac * out_size, at least 3 (SimCLR: 10% of the image side)."""
  return max(3, 2 * round((kernel_frac * out_size - 1) / 2) + 1)


def fixed_blur_kernel_size(kernel_frac: float, out_size: int) -> int:
  """int(kernel_frac * out_size), minus 1 when even, at least 1: the RepMix code's rule (1 = none below 30 px
  at 0.1; 3 at 32 px, 9 at 96, 21 at 224)."""
  size = int(kernel_frac * out_size)
  return max(1, size - 1 if size % 2 == 0 else size)


def _augment(key: jax.Array, image: jax.Array, cfg: Any, out_size: int, crop: bool) -> jax.Array:
  k_crop, k_flip, k_jitter, k_gray, k_blur, k_solarize = jax.random.split(key, 6)
  if crop:
    image = random_resized_crop(k_crop, image, out_size, tuple(cfg.crop_scale), tuple(cfg.crop_ratio))
  else:
    image = center_crop_resize(image, out_size)
  image = random_flip(k_flip, image, cfg.flip_prob)
  image = color_jitter(k_jitter, image, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue,
                       cfg.jitter_prob)
  image = random_grayscale(k_gray, image, cfg.grayscale_prob)
  image = gaussian_blur(k_blur, image, cfg.blur_prob, tuple(cfg.blur_sigma),
                        kernel_size=blur_kernel_size(cfg.blur_kernel_frac, out_size))
  if any(s > 0 for s in cfg.fixed_blur_sigma):
    image = fixed_gaussian_blur(image, tuple(cfg.fixed_blur_sigma),
                                kernel_size=fixed_blur_kernel_size(cfg.blur_kernel_frac, out_size))
  return solarize(k_solarize, image, cfg.solarize_prob, cfg.solarize_threshold)


def augment_image(key: jax.Array, image: jax.Array, cfg: Any, out_size: int) -> jax.Array:
  """One view of one image: crop -> flip -> colour jitter -> grayscale -> blur -> fixed blur -> solarize.

  Args:
    key: PRNG key.
    image: (H, W, C) float image in [0, 1], C in {1, 3}.
    cfg: augment config (see `default_config` for the fields); read at trace time, so its values are static.
    out_size: output side length. Without `cfg.crop` the image is resized by `center_crop_resize`.

  Returns:
    (out_size, out_size, C) float image in [0, 1].
  """
  return _augment(key, image, cfg, out_size, crop=bool(cfg.crop))


def _to_float(images: jax.Array) -> jax.Array:
  """uint8 (B, H, W, C) -> float32 in [0, 1]; float input is taken to be in [0, 1] already."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise UserError(f"augmentation wants images of shape (B, H, W, C) with C in {{1, 3}}, got "
                    f"{images.shape}; check the dataset's image shape")
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise UserError(f"augmentation wants uint8 or float images, got {images.dtype}; "
                    "cast them in the input pipeline")
  return images.astype(jnp.float32)


def _example_keys(key: jax.Array, images: jax.Array) -> jax.Array:
  """One key per example, sharded like the batch axis of `images`.

  Under a mesh with explicit axes, vmap refuses to pair replicated keys with a batch-sharded image array.
  """
  keys = jax.random.split(key, images.shape[0])
  sharding = jax.typeof(images).sharding
  if sharding.spec and sharding.spec[0] is not None:
    keys = jax.sharding.reshard(keys, NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0])))
  return keys


def _augment_batch(key: jax.Array, images: jax.Array, cfg: Any, out_size: int, crop: bool) -> jax.Array:
  images = _to_float(images)
  keys = _example_keys(key, images)
  views = jax.vmap(lambda k, x: _augment(k, x, cfg, out_size, crop))(keys, images)
  # Views are inputs, never something to differentiate through (BYOL's targets depend on them).
  return jax.lax.stop_gradient(views)


def augment_batch(key: jax.Array, images: jax.Array, cfg: Any, out_size: int) -> jax.Array:
  """`augment_image` over a batch, one independent key per example.

  Args:
    key: PRNG key for the whole batch.
    images: (B, H, W, C) uint8 images (float images are taken to be in [0, 1] already).
    cfg: augment config (see `default_config`).
    out_size: output side length.

  Returns:
    (B, out_size, out_size, C) float32 in [0, 1], under stop_gradient.
  """
  return _augment_batch(key, images, cfg, out_size, crop=bool(cfg.crop))


def view_config(config, view: int):
  """The augment block of view `view` (1-based): `config.augment{view}`, or `config.augment` without one.

  The one rule every framework follows, so e.g. BYOL's asymmetric second view is `augment2` and any
  framework's view 3 can be given its own `augment3`.
  """
  return config.get(f'augment{view}', config.augment)


def view_configs(config, num_views: int) -> list:
  """`view_config` of views 1..num_views."""
  return [view_config(config, v) for v in range(1, num_views + 1)]


def host_crops(config, num_views: int) -> tuple:
  """The host crops (`data.HostCrop`) of views 1..num_views of variable-size data: at the step's resolution,
  view v's with view v's `crop_scale` and `crop_ratio`, as the device crop of fixed-size data reads them."""
  return tuple(data.HostCrop(None, tuple(c.crop_scale), tuple(c.crop_ratio))
               for c in view_configs(config, num_views))


def make_views(key: jax.Array, images: jax.Array, cfgs: Sequence[Any], out_size: int) -> jax.Array:
  """V augmented views of every image, view v drawn with its own config `cfgs[v]` and its own key.

  Args:
    key: PRNG key for the whole batch.
    images: uint8 (B, H, W, C) images, or (B, V, h, w, C) views already cropped on the host (variable-size
      datasets, `host_crops`): then view v starts from images[:, v], the crop is skipped (only resized if
      h != out_size) and the rest of cfgs[v] applies.
    cfgs: one augment config per view (asymmetric recipes such as BYOL's give different ones).
    out_size: output side length.

  Returns:
    (B, V, out_size, out_size, C) float32 in [0, 1], under stop_gradient.
  """
  cfgs = list(cfgs)
  if not cfgs:
    raise UserError("make_views needs at least one augment config; list one per view")
  keys = jax.random.split(key, len(cfgs))
  if images.ndim == 5:
    if images.shape[1] != len(cfgs):
      raise UserError(f"the host produced {images.shape[1]} views but {len(cfgs)} augment configs are given; "
                      "make the number of views and of view configs agree")
    views = [_augment_batch(k, images[:, v], c, out_size, crop=False)
             for v, (k, c) in enumerate(zip(keys, cfgs))]
  else:
    views = [_augment_batch(k, images, c, out_size, crop=bool(c.crop)) for k, c in zip(keys, cfgs)]
  return jnp.stack(views, axis=1)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """(images - mean) / std over the last (channel) axis.

  Args:
    images: (..., C) float images.
    mean: C per-channel means.
    std: C per-channel standard deviations.

  Returns:
    Array of the same shape, float32.
  """
  channels = images.shape[-1]
  if len(mean) != channels or len(std) != channels:
    raise UserError(f"normalize got mean {tuple(mean)} and std {tuple(std)} for {channels}-channel images; "
                    f"give {channels} values each")
  return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def rotate90(image: jax.Array, quarter_turns: jax.Array) -> jax.Array:
  """`image` turned counter-clockwise by `quarter_turns` x 90 degrees, exactly as `np.rot90(image, k)`.

  Unlike `jnp.rot90`, the number of turns may be traced (one per example under vmap): the result is chosen
  elementwise from a transpose and two flips, so no branch is materialised four times.

  Args:
    image: (S, S, C) square image.
    quarter_turns: int scalar (taken modulo 4).

  Returns:
    (S, S, C) image, a permutation of the input pixels.
  """
  k = jnp.asarray(quarter_turns, jnp.int32) % 4
  # np.rot90: k=1 is transpose then flip rows, k=2 flips rows and columns, k=3 is transpose then flip columns.
  out = jnp.where(k % 2 == 1, jnp.swapaxes(image, 0, 1), image)
  out = jnp.where((k == 1) | (k == 2), out[::-1], out)
  return jnp.where(k >= 2, out[:, ::-1], out)


def rotate_bilinear(image: jax.Array, degrees: jax.Array, fill: float = 0.0) -> jax.Array:
  """`image` rotated counter-clockwise by `degrees` about its centre, bilinear, `fill` outside the source.

  The same as `scipy.ndimage.rotate(image, degrees, reshape=False, order=1, mode='grid-constant', cval=fill)`.

  Args:
    image: (S, S, C) float image.
    degrees: float scalar (may be traced).
    fill: value of output pixels whose source lies outside the image (the corners of a 45-degree turn).

  Returns:
    (S, S, C) float32 image.
  """
  size, _, channels = image.shape
  theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  centre = (size - 1) / 2.0
  rows, cols, chans = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32),
                                   jnp.arange(channels, dtype=jnp.float32), indexing='ij')
  dr, dc = rows - centre, cols - centre
  # The output pixel at offset (dr, dc) from the centre samples the source at that offset turned back by θ.
  src_r = jnp.cos(theta) * dr + jnp.sin(theta) * dc + centre
  src_c = -jnp.sin(theta) * dr + jnp.cos(theta) * dc + centre
  return jax.scipy.ndimage.map_coordinates(image.astype(jnp.float32), [src_r, src_c, chans], order=1,
                                           mode='constant', cval=fill)


def rotate_by_label(images: jax.Array, labels: jax.Array, num_angles: int, fill: float = 0.0) -> jax.Array:
  """Every image turned counter-clockwise by its label's angle, labels[...] x 360 / num_angles degrees.

  Multiples of 90 degrees are exact pixel permutations (`rotate90`); the other angles of the 8- and 12-angle
  sets (45, 30, 60 degrees past a quarter turn) add a bilinear rotation with `fill` in the corners, which
  is only traced when the angle set needs it.

  Args:
    images: (*L, S, S, C) square images, where L = labels.shape (e.g. (B,) or (B, V)).
    labels: int array of shape L, in [0, num_angles).
    num_angles: size of the angle set; a divisor of 360.
    fill: value of pixels a non-quarter turn brings in from outside the image.

  Returns:
    Array of the shape of `images`, float32 when a bilinear turn is needed, else the input dtype.
  """
  step = 360 // num_angles

  def one(image, label):
    degrees = label * step
    out = rotate90(image, degrees // 90)
    if step % 90:
      out = rotate_bilinear(out, degrees % 90, fill)
    return out

  fn = one
  for _ in range(labels.ndim):
    fn = jax.vmap(fn)
  return fn(images, labels)
