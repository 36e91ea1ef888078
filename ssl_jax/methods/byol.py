"""BYOL (Grill et al., NeurIPS 2020): an online network predicts an EMA target network's projection.

Online encoder + projector + predictor (`config.model.predictor`); the target encoder + projector is an EMA of
the online ones, kept in `extra['target']` (params and its own batch statistics: it runs in train mode, as in
BYOL). The EMA rate follows `config.ema`: 'cosine' from `base` to 1 (the paper, default) or 'constant' (S3L's
BYOL code: τ 0.99). Loss: 2 - 2·cos(p, sg(z')) symmetrised over the two views, summed as in the paper.

Views: view 1 from `config.augment`, view 2 from `config.augment2`, so the paper's asymmetric blur / solarize
recipe is two configs; symmetric recipes set both the same.
"""
from ssl_jax import losses, methods
from ssl_jax.methods import _momentum, common

CAPABILITIES = methods.Capabilities(addons=('rotation', 'fusion'), stem_hook=True,
                                    backbones=('resnet', 'vit'),
                                    config_blocks=('ema', 'model.predictor'))


def check_config(config) -> None:
  """The EMA rates are ordered; the prediction has the projection's width."""
  _momentum.check_ema(config)
  _momentum.check_predictor(config)


def build_model(config, *, in_channels, rngs):
  """The online encoder + projector and the predictor (a TwoBranchModel)."""
  return _momentum.build_two_branch(config, in_channels=in_channels, rngs=rngs, predictor=True)


host_crops = _momentum.host_crops


init_extra = _momentum.init_target_extra


make_views = _momentum.two_views


def loss_fn(model, views, batch, key, ctx):
  """Both views through the online net (one pass) and the target net (one pass); the symmetric BYOL loss."""
  b = views.shape[0]
  x = _momentum.flatten_views(views)
  z_online, h = model.online(x, train=True, return_features=True, after_stem=ctx.after_stem)
  p = model.predictor(z_online, train=True).reshape(b, 2, -1)
  z, target = _momentum.run_target(model.online, ctx.extra['target'], x, after_stem=ctx.after_stem)
  z = z.reshape(b, 2, -1)
  loss = losses.regression_loss(p[:, 0], z[:, 1]) + losses.regression_loss(p[:, 1], z[:, 0])
  metrics = {**common.contrastive_metrics(p),
             'ema_tau': _momentum.ema_rate(ctx.config.ema, ctx.step, ctx.total_steps)}
  return loss, (metrics, {**ctx.extra, 'target': target}, h.reshape(b, 2, -1)[:, 0])


def after_update(extra, params, ctx):
  """The target's params moved towards the updated online params with this step's EMA rate."""
  tau = _momentum.ema_rate(ctx.config.ema, ctx.step, ctx.total_steps)
  return {**extra, 'target': _momentum.ema_update(extra['target'], params['online'], tau)}
