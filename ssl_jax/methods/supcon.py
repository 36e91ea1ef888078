"""SupCon (Khosla et al., NeurIPS 2020): supervised contrastive learning, L_out (default) or L_in.

Same model and views as SimCLR; every other vector with the same label is a positive. `loss.supcon_form`:
'out' (SupContrast's and SelfCon's code) or 'in' (solo-learn's supcon). With `config.num_views = 1` an anchor
whose label appears once in the batch has no positive: `loss.no_positive='exclude'` leaves it out of the mean
(SelfCon's SupCon-S filter), 'zero' counts it as 0 (SupContrast). See `losses.contrastive_loss`.
"""
import functools

from ssl_jax import methods
from ssl_jax.methods import common

CAPABILITIES = methods.Capabilities(needs_labels=True, addons=('rotation', 'fusion'), stem_hook=True,
                                    backbones=('resnet', 'vit'))

build_model = common.build_encoder_projector
make_views = common.make_views
loss_fn = functools.partial(common.contrastive_loss_fn, use_labels=True)
check_config = functools.partial(common.check_contrastive, use_labels=True)
