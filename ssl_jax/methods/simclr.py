"""SimCLR (Chen et al., ICML 2020): NT-Xent between the augmented views of each image.

Encoder + MLP projector; every other vector of the global batch is a negative. `config.num_views` views per
image (2 in the paper); `config.loss.temperature` is τ.
"""
import functools

from ssl_jax import methods
from ssl_jax.methods import common

CAPABILITIES = methods.Capabilities(addons=('rotation', 'fusion'), stem_hook=True,
                                    backbones=('resnet', 'vit'))

build_model = common.build_encoder_projector
make_views = common.make_views
loss_fn = functools.partial(common.contrastive_loss_fn, use_labels=False)
check_config = functools.partial(common.check_contrastive, use_labels=False)
