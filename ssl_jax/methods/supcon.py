"""SupCon (Khosla et al., NeurIPS 2020): supervised contrastive learning, L_out form.

Same model and views as SimCLR; every other vector with the same label is a positive. With
`config.num_views = 1` an anchor whose label appears once in the batch has no positive and is left out of the
mean (the single-view SupCon-S baseline of SelfCon relies on this).
"""
import functools

from ssl_jax.methods import common

build_model = common.build_contrastive_model
make_views = common.make_views
loss_fn = functools.partial(common.contrastive_loss_fn, use_labels=True)
