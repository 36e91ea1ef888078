"""ssl_jax: efficient self-supervised contrastive pre-training of image encoders in JAX/Flax NNX.

Importing the package never imports TensorFlow; only the tfds input pipeline does, lazily.
"""
