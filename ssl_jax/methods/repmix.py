"""Representation mixing (RepMix; Sharma, Badola, Padmanabhan, Naik, Sattar, BDA 2024).

Every anchor x of the batch comes with a partner r, drawn uniformly from the whole training split (not from
the batch) and fresh every epoch; the input pipeline delivers it as `batch['partner']` (`needs_partners`).
Four images per anchor: clean n(x), n(r) (resized only; the model normalises) and augmented a(r), a'(x)
(independent draws of `config.augment`). The clean batch [n(x_0), n(r_0), n(x_1), n(r_1), ...] and the
augmented batch [a(r_0), a'(x_0), ...] go through encoder f and projector g in two forward passes, each
normalised with its own batch statistics, and the projections are mixed before any L2 normalisation:

  z_2i = λ·g(f(n(x_i))) + (1 - λ)·g(f(a(r_i))),   z_2i+1 = λ·g(f(n(r_i))) + (1 - λ)·g(f(a'(x_i)))

(z_2i, z_2i+1) is a positive pair and every other row of the global batch a negative. Four images are
forwarded per anchor, twice SimCLR's two, for the same 2B loss rows.

Faithful to the official code by default; our readings and switches:
  * Mixing: the code sums the two projections; λ = `repmix.mix_weight` = 0.5 is that sum up to a scale the
    cosine ignores (the same loss). `repmix.mix_beta_alpha` > 0 draws λ ~ Beta(α, α) per anchor, shared by
    its two rows (our extension: at λ near 0 or 1 a pair degenerates to two different images, so keep α
    large).
  * Loss: `loss.reduction='log_of_mean'` is the code's -log(mean_j p_j) (`losses.nt_xent_log_of_mean`);
    'mean_of_log' is standard NT-Xent. τ = `loss.temperature` (0.5 in the code).
  * Batch statistics: the two passes (clean first) normalise with their own statistics and both update the
    same running averages, as the code's two calls of the module do, so the running statistics that
    evaluation uses move twice per step: old·m² + clean·m(1 - m) + augmented·(1 - m).
  * Partners: each epoch's partners are an independent permutation of the split (`ssl_jax.data.sources`);
    the code draws them independently with replacement. Each anchor's partner is uniform over the split
    either way.
  * Host-cropped data (ImageNet-style): the clean view is the evaluation crop (shorter side to S / 0.875,
    central S x S) and the augmentation starts from a host random-resized crop (the data pipeline).
  * The online probe reads the encoder features of a'(x), the augmented anchor, like SimCLR's of a view.
The recipes (`configs/repmix_*.py`) hold the rest of the code's behaviour: augmentation, projector,
optimizer and its periodic learning-rate schedule, with the standard alternatives as switches.
"""
import jax
import jax.numpy as jnp

from ssl_jax import methods
from ssl_jax.data import augment
from ssl_jax.methods import common

CAPABILITIES = methods.Capabilities(addons=('fusion',), backbones=('resnet', 'vit'), config_blocks=('repmix',))

# SimCLR's encoder + projector (`models.EncoderProjector`): RepMix adds no parameters.
build_model = common.build_encoder_projector


def needs_partners(config) -> bool:
  del config
  return True


def host_crops(config):
  """One random host crop per image (view 1's crop fields); with partners the pipeline adds the clean view in
  front of it."""
  return augment.host_crops(config, 1)


def clean_views(images: jax.Array, size: int) -> jax.Array:
  """The un-augmented view: each image resized to `size` (central square first), nothing else.

  Args:
    images: (B, H, W, C) uint8 images (float images are taken to be in [0, 1]).
    size: output side.

  Returns:
    (B, size, size, C) float32 in [0, 1], under stop_gradient.
  """
  x = images.astype(jnp.float32)
  x = x / 255.0 if images.dtype == jnp.uint8 else x
  return jax.lax.stop_gradient(jax.vmap(lambda image: augment.center_crop_resize(image, size))(x))


def make_views(key, batch, ctx):
  """The four images of every anchor, (B, 4, R, R, C) in [0, 1]: n(x), n(r), a(r), a'(x).

  So views[:, :2] flattened example-major is the code's clean batch [n(x_0), n(r_0), ...] and views[:, 2:]
  its augmented batch [a(r_0), a'(x_0), ...]. a(r) and a'(x) draw `config.augment` with independent keys.
  """
  b = batch['image'].shape[0]
  # Anchors and partners interleaved (x_0, r_0, x_1, ...) go through one augmentation: one copy of its graph
  # in the step, and each device keeps its own examples' rows.
  images = jnp.stack([batch['image'], batch['partner']], axis=1).reshape(2 * b, *batch['image'].shape[1:])
  if images.ndim == 5:  # host crops: [clean evaluation crop, random crop]
    clean, source = images[:, 0], images[:, 1:]
  else:
    clean, source = images, images
  size = ctx.resolution
  clean = clean_views(clean, size).reshape(b, 2, size, size, -1)
  aug = augment.make_views(jax.random.split(key)[0], source, [ctx.config.augment], size)
  aug = aug.reshape(b, 2, size, size, -1)
  return jnp.stack([clean[:, 0], clean[:, 1], aug[:, 1], aug[:, 0]], axis=1)


def encode_branches(model, views):
  """Projections of the clean and of the augmented batch, in two forward passes (clean first).

  Each pass normalises with its own batch statistics (over its 2B rows, or its ghost groups); both update
  the running statistics. Rows are example-major, so an example's rows stay on the device that holds it.

  Args:
    model: the `EncoderProjector`.
    views: (B, 4, R, R, C) from `make_views`.

  Returns:
    (z_clean, z_aug, h_aug): z_clean (B, 2, P) = g(f(n(x))), g(f(n(r))); z_aug (B, 2, P) = g(f(a(r))),
    g(f(a'(x))); h_aug (B, 2, D) the encoder features of the augmented pair.
  """
  b = views.shape[0]
  flat = lambda v: v.reshape(2 * b, *views.shape[2:])
  z_clean = model(flat(views[:, :2]), train=True)
  z_aug, h_aug = model(flat(views[:, 2:]), train=True, return_features=True)
  return z_clean.reshape(b, 2, -1), z_aug.reshape(b, 2, -1), h_aug.reshape(b, 2, -1)


def mix_weights(key, batch_size: int, cfg):
  """λ: `cfg.mix_weight` (a Python float), or (B, 1, 1) draws of Beta(α, α) when `cfg.mix_beta_alpha` > 0."""
  if cfg.mix_beta_alpha > 0:
    return jax.random.beta(key, cfg.mix_beta_alpha, cfg.mix_beta_alpha, (batch_size,))[:, None, None]
  return cfg.mix_weight


def mix(z_clean, z_aug, lam):
  """Rows (i, 0), (i, 1) = λ·z_clean + (1 - λ)·z_aug: [n(x)+a(r), n(r)+a'(x)], the positive pair of anchor i.

  Args:
    z_clean: (B, 2, P) projections of n(x), n(r).
    z_aug: (B, 2, P) projections of a(r), a'(x).
    lam: a scalar or (B, 1, 1) weight of the clean projections.

  Returns:
    (B, 2, P) mixed projections.
  """
  return lam * z_clean + (1.0 - lam) * z_aug


def loss_fn(model, views, batch, key, ctx):
  """Two passes -> mixed pairs -> `common.contrastive_objective` (`loss.reduction`, `loss.temperature`)."""
  del batch
  z_clean, z_aug, h_aug = encode_branches(model, views)
  z = mix(z_clean, z_aug, mix_weights(jax.random.split(key)[1], views.shape[0], ctx.config.repmix))
  loss = common.contrastive_objective(z, None, ctx.config.loss)
  return loss, (common.contrastive_metrics(z), ctx.extra, h_aug[:, 1])
