"""ssl_jax: efficient self-supervised contrastive pre-training of image encoders in JAX/Flax NNX.

Importing the package never imports TensorFlow; only the tfds input pipeline does, lazily. `load_encoder` is
imported on first use, so `import ssl_jax` stays cheap.
"""

from ssl_jax import xla_defaults

__version__ = '0.1.0'
__all__ = ['load_encoder']

xla_defaults.apply()  # before JAX starts a backend: XLA reads XLA_FLAGS once


def __getattr__(name):
  if name == 'load_encoder':
    from ssl_jax.encoder import load_encoder  # pylint: disable=g-import-not-at-top
    return load_encoder
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
