"""SimCLR (Chen et al., ICML 2020): NT-Xent between the augmented views of each image.

Encoder + MLP projector; every other vector of the global batch is a negative. `config.num_views` views per
image (2 in the paper); `config.loss.temperature` is τ.
"""
import functools

from ssl_jax.methods import common

build_model = common.build_contrastive_model
make_views = common.make_views
loss_fn = functools.partial(common.contrastive_loss_fn, use_labels=False)
