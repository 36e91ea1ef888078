"""SimSiam (Chen & He, CVPR 2021): a shared encoder, a predictor, and a stop-gradient on the other branch.

One network (encoder + projector `config.model.head` + predictor `config.model.predictor`) sees both views in
one forward pass; the loss is D(p1, sg(z2))/2 + D(p2, sg(z1))/2 with D the negative cosine, so it lies in
[-1, 1] (-1 = perfectly aligned). No EMA and no method state.

Views: view 1 from `config.augment`, view 2 from `config.augment2` (the same recipe in the shipped configs).
"""
from ssl_jax import losses, methods
from ssl_jax.methods import _momentum, common

CAPABILITIES = methods.Capabilities(addons=('rotation', 'fusion'), stem_hook=True,
                                    backbones=('resnet', 'vit'),
                                    config_blocks=('model.predictor',))

check_config = _momentum.check_predictor


def build_model(config, *, in_channels, rngs):
  """The encoder + projector and the predictor (a TwoBranchModel)."""
  return _momentum.build_two_branch(config, in_channels=in_channels, rngs=rngs, predictor=True)


host_crops = _momentum.host_crops


make_views = _momentum.two_views


def loss_fn(model, views, batch, key, ctx):
  """Projections and predictions of both views from one pass; the symmetric stop-gradient loss."""
  b = views.shape[0]
  z, h = model.online(_momentum.flatten_views(views), train=True, return_features=True,
                      after_stem=ctx.after_stem)
  p = model.predictor(z, train=True).reshape(b, 2, -1)
  z = z.reshape(b, 2, -1)
  loss = 0.5 * (losses.negative_cosine(p[:, 0], z[:, 1]) + losses.negative_cosine(p[:, 1], z[:, 0]))
  return loss, (common.contrastive_metrics(z), ctx.extra, h.reshape(b, 2, -1)[:, 0])
