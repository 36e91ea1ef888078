"""Contracts of the on-device augmentation ops: shapes, ranges, probabilities, statistics, identities."""
import colorsys
import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import ml_collections
import numpy as np
from scipy import ndimage

from configs import simclr_cifar10
from ssl_jax import config_schema
from ssl_jax.data import augment as aug
from ssl_jax.errors import UserError

N = 2000
KEYS = jax.random.split(jax.random.key(0), N)
# Random pixels: no flip, grayscale or blur of it can equal it by accident.
IMG = jax.random.uniform(jax.random.key(1), (8, 8, 3))


def _over_keys(op):
  """op(key, image, prob) vmapped over keys, one compile shared by every probability."""
  return jax.jit(jax.vmap(op, in_axes=(0, None, None)))


PROB_OPS = {
    "flip": _over_keys(aug.random_flip),
    "grayscale": _over_keys(aug.random_grayscale),
    "solarize": _over_keys(aug.solarize),
    # Sigma >= 1 so that every blurred image visibly differs from the original.
    "blur": _over_keys(functools.partial(aug.gaussian_blur, sigma=(1.0, 2.0), kernel_size=3)),
    # Strong jitter, which must still stay in [0, 1].
    "jitter": _over_keys(lambda k, x, p: aug.color_jitter(k, x, 0.9, 0.9, 0.9, 0.5, p)),
}


@functools.partial(jax.jit, static_argnames=("strengths",))
def _jitter(keys, image, prob, strengths):
  return jax.vmap(lambda k: aug.color_jitter(k, image, *strengths, prob))(keys)


_hue = jax.jit(aug.adjust_hue)


@functools.partial(jax.jit, static_argnames=("height", "width", "scale", "ratio"))
def _boxes(keys, height, width, scale, ratio):
  return jax.vmap(lambda k: aug.random_crop_box(k, height, width, scale, ratio))(keys)


@functools.partial(jax.jit, static_argnames=("out_size", "scale", "ratio"))
def _crops(keys, image, out_size, scale, ratio):
  return jax.vmap(lambda k: aug.random_resized_crop(k, image, out_size, scale, ratio))(keys)


def _cfg(**overrides):
  cfg = aug.default_config()
  cfg.update(overrides)
  return cfg


FULL = _cfg(blur_prob=0.5, solarize_prob=0.2)
OFF = ml_collections.ConfigDict(dict(
    crop=False, crop_scale=(0.08, 1.0), crop_ratio=(0.75, 1.25), flip_prob=0.0, jitter_prob=0.0,
    brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_prob=0.0, blur_prob=0.0,
    blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1, fixed_blur_sigma=(0.0, 0.0), solarize_prob=0.0,
    solarize_threshold=0.5))
CROP_ONLY = _cfg(**{k: v for k, v in OFF.items() if k != "crop"})
CROP_FLIP = _cfg(**{k: v for k, v in OFF.items() if k not in ("crop", "flip_prob")})

_augment_full = jax.jit(lambda k, x: aug.augment_batch(k, x, FULL, 16))
_augment_gray = jax.jit(lambda k, x: aug.augment_batch(k, x, aug.default_config(), 12))
_views = jax.jit(lambda k, x: aug.make_views(k, x, (CROP_FLIP, CROP_FLIP, OFF), 8))
_host_views = jax.jit(lambda k, x, out_size: aug.make_views(k, x, (CROP_ONLY, CROP_ONLY), out_size),
                      static_argnames="out_size")


def _uint8_images(seed, shape):
  return jax.random.randint(jax.random.key(seed), shape, 0, 256).astype(jnp.uint8)


def _changed(out, image):
  return np.asarray(jnp.any(jnp.abs(out - image) > 1e-6, axis=(1, 2, 3)))


def _torchvision_crop_sizes(rng, n, height, width, scale, ratio):
  """Box (height, width) of torchvision's RandomResizedCrop.get_params, re-written as a plain loop."""
  sizes = []
  for _ in range(n):
    for _ in range(10):
      area = height * width * rng.uniform(*scale)
      aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
      w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
      if 0 < w <= width and 0 < h <= height:
        sizes.append((h, w))
        break
    else:
      if width / height < ratio[0]:
        sizes.append((round(width / ratio[0]), width))
      elif width / height > ratio[1]:
        sizes.append((height, round(height * ratio[1])))
      else:
        sizes.append((height, width))
  return np.array(sizes, np.float64)


class ProbabilityTest(parameterized.TestCase):

  @parameterized.product(op=list(PROB_OPS), prob=[0.0, 0.3, 1.0])
  def test_fraction_applied(self, op, prob):
    out = PROB_OPS[op](KEYS, IMG, prob)
    self.assertEqual(out.shape, (N, 8, 8, 3))
    self.assertEqual(out.dtype, jnp.float32)
    self.assertBetween(float(out.min()), 0.0, 1.0)
    self.assertBetween(float(out.max()), 0.0, 1.0)
    frac = _changed(out, IMG).mean()
    if prob in (0.0, 1.0):
      self.assertEqual(frac, prob)
    else:
      self.assertLess(abs(frac - prob), 4 * math.sqrt(prob * (1 - prob) / N))

  def test_applied_ops_do_what_they_say(self):
    flipped = np.asarray(PROB_OPS["flip"](KEYS, IMG, 0.5))
    changed = _changed(flipped, IMG)
    np.testing.assert_array_equal(flipped[changed], np.broadcast_to(IMG[:, ::-1], flipped[changed].shape))
    solarized = PROB_OPS["solarize"](KEYS, IMG, 1.0)[0]
    np.testing.assert_allclose(solarized, np.where(IMG >= 0.5, 1 - IMG, IMG))
    gray = PROB_OPS["grayscale"](KEYS, IMG, 1.0)[0]
    luma = 0.299 * IMG[..., 0] + 0.587 * IMG[..., 1] + 0.114 * IMG[..., 2]
    for c in range(3):
      np.testing.assert_allclose(gray[..., c], luma, atol=1e-6)

  def test_keys_give_different_and_repeatable_results(self):
    a = PROB_OPS["jitter"](KEYS, IMG, 1.0)
    np.testing.assert_array_equal(a, PROB_OPS["jitter"](KEYS, IMG, 1.0))
    flat = np.asarray(a).reshape(N, -1)
    self.assertEqual(len(np.unique(flat.round(6), axis=0)), N)


class ColourTest(parameterized.TestCase):
  # Two pixels; luma 0.363 and 0.5925, mean luma 0.47775.
  PIXELS = jnp.array([[[0.2, 0.4, 0.6], [1.0, 0.5, 0.0]]])

  def test_brightness(self):
    np.testing.assert_allclose(aug.adjust_brightness(self.PIXELS, 1.5),
                               [[[0.3, 0.6, 0.9], [1.0, 0.75, 0.0]]], atol=1e-6)

  def test_contrast(self):
    np.testing.assert_allclose(aug.adjust_contrast(self.PIXELS, 0.5),
                               [[[0.338875, 0.438875, 0.538875], [0.738875, 0.488875, 0.238875]]], atol=1e-6)
    np.testing.assert_allclose(aug.adjust_contrast(self.PIXELS, 2.0),
                               [[[0.0, 0.32225, 0.72225], [1.0, 0.52225, 0.0]]], atol=1e-6)

  def test_saturation(self):
    np.testing.assert_allclose(aug.adjust_saturation(self.PIXELS, 0.0),
                               [[[0.363] * 3, [0.5925] * 3]], atol=1e-6)
    np.testing.assert_allclose(aug.adjust_saturation(self.PIXELS, 2.0),
                               [[[0.037, 0.437, 0.837], [1.0, 0.4075, 0.0]]], atol=1e-6)

  def test_hue_third_turn_permutes_primaries(self):
    colours = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.4, 0.4, 0.4]])
    tiles = np.arange(64).reshape(8, 8) % 4
    # Red -> green -> blue -> red; gray has no hue and stays.
    np.testing.assert_allclose(_hue(colours[tiles], 1 / 3), colours[[1, 2, 0, 3]][tiles], atol=1e-6)

  def test_hue_half_turn_twice_is_identity(self):
    once = _hue(IMG, 0.5)
    np.testing.assert_allclose(_hue(once, 0.5), IMG, atol=1e-5)
    self.assertGreater(float(jnp.abs(once - IMG).max()), 0.1)

  @parameterized.parameters(0.2, -0.35)
  def test_hue_matches_colorsys(self, delta):
    hsv = [[colorsys.rgb_to_hsv(*px) for px in row] for row in np.asarray(IMG)]
    expected = np.array([[colorsys.hsv_to_rgb((h + delta) % 1.0, s, v) for h, s, v in row] for row in hsv])
    np.testing.assert_allclose(_hue(IMG, delta), expected, atol=1e-5)

  def test_single_channel_colour_ops_are_identities(self):
    gray = IMG[..., :1]
    np.testing.assert_array_equal(aug.adjust_saturation(gray, 0.3), gray)
    np.testing.assert_array_equal(aug.adjust_hue(gray, 0.3), gray)
    np.testing.assert_array_equal(aug.random_grayscale(KEYS[0], gray, 1.0), gray)
    np.testing.assert_allclose(aug.adjust_contrast(gray, 0.5), 0.5 * gray + 0.5 * gray.mean(), atol=1e-6)

  def test_zero_strength_jitter_is_exact_identity(self):
    np.testing.assert_array_equal(_jitter(KEYS, IMG, 1.0, strengths=(0.0, 0.0, 0.0, 0.0)),
                                  np.broadcast_to(IMG, (N, 8, 8, 3)))

  def test_jitter_samples_factors_in_range(self):
    dark = IMG * 0.5  # Never clipped by a brightness factor <= 1.4.
    out = _jitter(KEYS, dark, 1.0, strengths=(0.4, 0.0, 0.0, 0.0))
    ratio = np.asarray((out / dark).reshape(N, -1))
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-5)
    self.assertBetween(ratio.min(), 0.6, 0.62)
    self.assertBetween(ratio.max(), 1.38, 1.4)
    self.assertAlmostEqual(ratio.mean(), 1.0, delta=0.02)

  def test_order_is_random_per_example(self):
    # Contrast and hue do not commute: contrast pulls towards the mean luma, which a hue shift changes. On a
    # one-colour image a contrast factor c scales the chroma by c in either order, and V_out - c * V_in is
    # (1 - c) times the mean luma contrast saw: the original one exactly when contrast ran first.
    colour = np.array([0.7, 0.3, 0.3])
    out = _jitter(KEYS, jnp.broadcast_to(jnp.asarray(colour, jnp.float32), (8, 8, 3)), 1.0,
                  strengths=(0.0, 0.5, 0.0, 0.5))
    pixel = np.asarray(out[:, 0, 0], np.float64)
    c = (pixel.max(-1) - pixel.min(-1)) / 0.4
    usable = np.abs(1 - c) > 0.1
    seen_luma = (pixel.max(-1) - c * 0.7) / (1 - c)
    contrast_first = np.abs(seen_luma - colour @ [0.299, 0.587, 0.114]) < 1e-3
    self.assertGreater(usable.sum(), N // 2)
    self.assertLess(abs(contrast_first[usable].mean() - 0.5), 4 * math.sqrt(0.25 / usable.sum()))

  def test_hue_jitter_keeps_value_and_saturation(self):
    out = _jitter(KEYS, IMG, 1.0, strengths=(0.0, 0.0, 0.0, 0.5))
    np.testing.assert_allclose(out.max(-1), np.broadcast_to(IMG.max(-1), out.shape[:-1]), atol=1e-5)
    np.testing.assert_allclose(out.max(-1) - out.min(-1),
                               np.broadcast_to(IMG.max(-1) - IMG.min(-1), out.shape[:-1]), atol=1e-5)

  def test_bad_strength_is_a_user_error(self):
    c = simclr_cifar10.get_config('runlocal')
    c.augment.hue = 0.7   # the schema's range: the op would wrap the hue around
    with self.assertRaisesRegex(UserError, r'^augment.hue=0.7 is out of range; it must be >= 0.0 and <= 0.5$'):
      config_schema.validate(c)


class BlurTest(absltest.TestCase):

  def test_matches_scipy_reflect_correlation(self):
    out = aug.gaussian_blur(KEYS[0], IMG, 1.0, sigma=(1.3, 1.3), kernel_size=5)
    taps = np.exp(-0.5 * (np.arange(-2, 3) / 1.3) ** 2)
    taps /= taps.sum()
    # numpy/jax "reflect" (edge pixel not repeated) is scipy's "mirror".
    expected = ndimage.correlate1d(ndimage.correlate1d(np.asarray(IMG), taps, 0, mode="mirror"), taps, 1,
                                   mode="mirror")
    np.testing.assert_allclose(out, expected, atol=1e-6)

  def test_constant_image_unchanged_and_bad_kernel(self):
    flat = jnp.full((8, 8, 1), 0.3)
    np.testing.assert_allclose(aug.gaussian_blur(KEYS[0], flat, 1.0, kernel_size=7), flat, atol=1e-6)
    with self.assertRaisesRegex(ValueError, 'odd'):   # from Python; a config's kernel is always odd
      aug.gaussian_blur(KEYS[0], flat, 1.0, kernel_size=4)

  def test_kernel_size_rule(self):
    self.assertEqual(aug.blur_kernel_size(0.1, 224), 23)
    self.assertEqual(aug.blur_kernel_size(0.1, 96), 9)
    self.assertEqual(aug.blur_kernel_size(0.1, 32), 3)
    self.assertEqual(aug.blur_kernel_size(0.2, 32), 7)


class CropTest(parameterized.TestCase):

  @parameterized.parameters(((0.08, 1.0), (3 / 4, 4 / 3)), ((0.2, 0.5), (1 / 2, 2.0)))
  def test_box_statistics_match_torchvision(self, scale, ratio):
    height, width = 200, 300
    boxes = np.asarray(_boxes(KEYS, height, width, scale, ratio), np.float64)
    top, left, h, w = boxes.T
    self.assertTrue(np.all((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1)))
    self.assertTrue(np.all((top + h <= height) & (left + w <= width)))
    area = h * w / (height * width)
    log_aspect = np.log(w / h)
    # Integer sides move area and aspect by at most ~2% at these sizes.
    self.assertTrue(np.all((area >= scale[0] * 0.98) & (area <= scale[1] * 1.02)))
    self.assertTrue(np.all(np.abs(log_aspect - np.clip(log_aspect, *np.log(ratio))) < 0.03))
    ref = _torchvision_crop_sizes(np.random.default_rng(0), N, height, width, scale, ratio)
    ref_area = ref[:, 0] * ref[:, 1] / (height * width)
    self.assertAlmostEqual(area.mean(), ref_area.mean(), delta=0.025)
    self.assertAlmostEqual(area.std(), ref_area.std(), delta=0.02)
    self.assertAlmostEqual(log_aspect.mean(), np.log(ref[:, 1] / ref[:, 0]).mean(), delta=0.02)

  def test_position_is_uniform_over_all_offsets(self):
    top, left, h, w = np.asarray(_boxes(KEYS, 16, 16, (0.25, 0.25), (1.0, 1.0))).T
    np.testing.assert_array_equal(h, 8)
    np.testing.assert_array_equal(w, 8)
    for offset in (top, left):
      counts = np.bincount(offset, minlength=9)
      self.assertLen(counts, 9)
      self.assertGreater(counts.min(), N / 9 * 0.7)

  @parameterized.parameters(((2.0, 3.0), [4, 0, 8, 16]), ((1 / 3, 1 / 2), [0, 4, 16, 8]))
  def test_fallback_is_central_crop_with_clamped_ratio(self, ratio, expected):
    boxes = _boxes(KEYS[:16], 16, 16, (1.0, 1.0), ratio)
    np.testing.assert_array_equal(boxes, np.broadcast_to(expected, (16, 4)))

  def test_crop_shows_the_sampled_box(self):
    ramp = (jnp.arange(32, dtype=jnp.float32) + 0.5) / 32
    image = jnp.stack([jnp.broadcast_to(ramp[None], (32, 32)), jnp.broadcast_to(ramp[:, None], (32, 32)),
                       jnp.full((32, 32), 0.5)], axis=-1)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    out = _crops(KEYS[:64], image, 8, scale, ratio)
    top, left, h, w = np.asarray(_boxes(KEYS[:64], 32, 32, scale, ratio), np.float64).T
    np.testing.assert_allclose(out[..., 0].mean((1, 2)), (left + w / 2) / 32, atol=0.02)
    np.testing.assert_allclose(out[..., 1].mean((1, 2)), (top + h / 2) / 32, atol=0.02)
    np.testing.assert_allclose(out[..., 2], 0.5, atol=1e-6)

  def test_full_square_crop_equals_resize(self):
    image = jax.random.uniform(jax.random.key(2), (16, 16, 3))
    crops = _crops(KEYS[:4], image, 8, (1.0, 1.0), (1.0, 1.0))
    resized = aug.center_crop_resize(image, 8)
    np.testing.assert_allclose(crops, np.broadcast_to(resized, crops.shape), atol=1e-6)
    np.testing.assert_allclose(resized, jax.image.resize(image, (8, 8, 3), "linear"), atol=1e-6)

  def test_shapes_for_non_square_and_single_channel(self):
    image = jax.random.uniform(jax.random.key(3), (12, 20, 1))
    crops = _crops(KEYS[:4], image, 16, (0.08, 1.0), (3 / 4, 4 / 3))
    self.assertEqual(crops.shape, (4, 16, 16, 1))
    self.assertBetween(float(crops.min()), 0.0, 1.0)
    self.assertBetween(float(crops.max()), 0.0, 1.0)
    center = aug.center_crop_resize(image, 8)
    np.testing.assert_allclose(center, jax.image.resize(image[:, 4:16], (8, 8, 1), "linear"), atol=1e-6)

  def test_bad_scale_is_a_user_error(self):
    c = simclr_cifar10.get_config('runlocal')
    c.augment.crop_scale = (0.9, 0.1)
    with self.assertRaisesRegex(UserError, r'augment.crop_scale=\(0.9, 0.1\) must be an ordered \(min, max\)'):
      config_schema.validate(c)


class RecipeTest(absltest.TestCase):

  def test_default_config(self):
    cfg = aug.default_config()
    self.assertEqual((cfg.crop, cfg.crop_scale, cfg.flip_prob), (True, (0.08, 1.0), 0.5))
    self.assertEqual(cfg.jitter_prob, 0.8)
    self.assertEqual((cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue), (0.4, 0.4, 0.4, 0.1))
    self.assertEqual((cfg.grayscale_prob, cfg.blur_prob, cfg.solarize_prob), (0.2, 0.0, 0.0))

  def test_augment_batch(self):
    images = jnp.broadcast_to(_uint8_images(4, (1, 24, 24, 3)), (8, 24, 24, 3))
    out = _augment_full(KEYS[0], images)
    self.assertEqual(out.shape, (8, 16, 16, 3))
    self.assertEqual(out.dtype, jnp.float32)
    self.assertBetween(float(out.min()), 0.0, 1.0)
    self.assertBetween(float(out.max()), 0.0, 1.0)
    flat = np.asarray(out).reshape(8, -1)
    self.assertEqual(len(np.unique(flat.round(5), axis=0)), 8)  # Same image, 8 different views.
    np.testing.assert_array_equal(out, _augment_full(KEYS[0], images))
    self.assertGreater(float(jnp.abs(out - _augment_full(KEYS[1], images)).max()), 0.1)

  def test_single_channel_batch(self):
    out = _augment_gray(KEYS[0], _uint8_images(5, (4, 16, 16, 1)))
    self.assertEqual(out.shape, (4, 12, 12, 1))
    self.assertBetween(float(out.min()), 0.0, 1.0)
    self.assertBetween(float(out.max()), 0.0, 1.0)

  def test_no_gradient_flows_through_views(self):
    images = jax.random.uniform(jax.random.key(6), (2, 8, 8, 3))
    grad = jax.grad(lambda x: aug.augment_batch(KEYS[0], x, OFF, 8).sum())(images)
    np.testing.assert_array_equal(grad, 0.0)

  def test_make_views_are_independent_and_follow_their_config(self):
    images = _uint8_images(7, (4, 16, 16, 3))
    views = _views(KEYS[0], images)
    self.assertEqual(views.shape, (4, 3, 8, 8, 3))
    self.assertTrue(np.all(np.abs(views[:, 0] - views[:, 1]).max(axis=(1, 2, 3)) > 0.01))
    expected = jax.vmap(lambda x: aug.center_crop_resize(x, 8))(images.astype(jnp.float32) / 255)
    np.testing.assert_allclose(views[:, 2], expected, atol=1e-5)

  def test_batch_sharded_on_an_explicit_mesh(self):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    images = _uint8_images(9, (8, 24, 24, 3))
    sharded = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    np.testing.assert_allclose(_augment_full(KEYS[0], sharded), _augment_full(KEYS[0], images), atol=1e-5)

  def test_make_views_from_host_crops(self):
    images = _uint8_images(8, (4, 2, 16, 16, 3))
    as_float = images.astype(jnp.float32) / 255
    np.testing.assert_array_equal(_host_views(KEYS[0], images, out_size=16), as_float)
    resized = jax.vmap(jax.vmap(lambda x: aug.center_crop_resize(x, 8)))(as_float)
    np.testing.assert_allclose(_host_views(KEYS[0], images, out_size=8), resized, atol=1e-5)
    with self.assertRaises(UserError):
      aug.make_views(KEYS[0], images, (CROP_ONLY,), 16)

  def test_normalize(self):
    images = jnp.array([[[0.5, 0.25, 1.0]]])
    np.testing.assert_allclose(aug.normalize(images, (0.5, 0.5, 0.5), (0.25, 0.5, 2.0)),
                               [[[0.0, -0.5, 0.25]]])
    with self.assertRaises(UserError):
      aug.normalize(images, (0.5,), (0.25,))


if __name__ == "__main__":
  absltest.main()
