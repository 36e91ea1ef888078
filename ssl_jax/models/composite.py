"""The models the frameworks train: an encoder with its heads and its input normalisation.

Every model has an `encoder` attribute and `features(images, *, train)` (float images in [0, 1]), which
evaluation and `ssl_jax.load_encoder` read; the methods in ssl_jax/methods/ build them from the config.
"""
from flax import nnx

from ssl_jax import losses
from ssl_jax.data import augment


class EncoderProjector(nnx.Module):
  """An encoder, its projection head, and the input normalisation of the dataset it trains on."""

  def __init__(self, encoder, projector, mean, std):
    self.encoder = encoder
    self.projector = projector
    # Static tuples: part of the graph definition, so a restored model normalises exactly as it trained.
    self.mean, self.std = tuple(mean), tuple(std)

  def features(self, images, *, train: bool, after_stem=None):
    """Encoder features (N, D) of float images in [0, 1], shape (N, H, W, C) (`after_stem`: see ResNet)."""
    return self.encoder(augment.normalize(images, self.mean, self.std), train=train, after_stem=after_stem)

  def __call__(self, images, *, train: bool, return_features: bool = False, after_stem=None):
    """Projections (N, P) of float images in [0, 1]; with `return_features`, also the encoder features."""
    h = self.features(images, train=train, after_stem=after_stem)
    z = self.projector(h, train=train)
    return (z, h) if return_features else z


class SwAVModel(EncoderProjector):
  """Encoder, projector and prototypes (a bias-free Linear); calling it gives the L2-normalised projections,
  whose scores against the prototypes the SwAV loss reads (ssl_jax/methods/swav.py)."""

  def __init__(self, encoder, projector, prototypes, mean, std):
    super().__init__(encoder, projector, mean, std)
    self.prototypes = prototypes

  def __call__(self, images, *, train: bool, return_features: bool = False, after_stem=None):
    z, h = super().__call__(images, train=train, return_features=True, after_stem=after_stem)
    z = losses.l2_normalize(z)
    return (z, h) if return_features else z


class TwoBranchModel(nnx.Module):
  """An online encoder + projector and an optional predictor on top of it."""

  def __init__(self, online: EncoderProjector, predictor=None):
    self.online = online
    self.predictor = predictor

  @property
  def encoder(self):
    """The online encoder (what evaluation and `load_encoder` read)."""
    return self.online.encoder

  def features(self, images, *, train: bool, after_stem=None):
    """Encoder features (N, D) of float images in [0, 1], shape (N, H, W, C)."""
    return self.online.features(images, train=train, after_stem=after_stem)

  def __call__(self, images, *, train: bool, return_features: bool = False, after_stem=None):
    """The online projections (N, P), as `EncoderProjector.__call__`: add-ons reach all frameworks alike."""
    return self.online(images, train=train, return_features=return_features, after_stem=after_stem)
