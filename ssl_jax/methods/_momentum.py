"""What the two-branch methods (BYOL, SimSiam, MoCo v2) share: the model, the views and the EMA target.

The model holds an `online` EncoderProjector (what the optimizer trains and what evaluation reads through
`encoder` and `features`) and, for BYOL and SimSiam, a `predictor` MLP. The momentum target of BYOL and MoCo
is NOT part of the model: its params and batch statistics live in the method state `extra['target']`, so they
are donated, sharded and checkpointed with the rest of the train state but never see the optimizer.
"""
import math

from flax import nnx
import jax
import jax.numpy as jnp

from ssl_jax.data import augment
from ssl_jax import models
from ssl_jax.errors import UserError
from ssl_jax.methods import common


def build_two_branch(config, *, in_channels: int, rngs: nnx.Rngs, predictor: bool) -> models.TwoBranchModel:
  """The online EncoderProjector of `config.model`, plus the `config.model.predictor` MLP if asked."""
  online = common.build_encoder_projector(config, in_channels=in_channels, rngs=rngs)
  head = None
  if predictor:
    head = common.build_head(config.model.predictor, config.model.head.out_dim, config=config, rngs=rngs)
  return models.TwoBranchModel(online, head)


def host_crops(config):
  """Two views per image (cropped on the host for variable-size data), each with its view's crop fields."""
  return augment.host_crops(config, 2)


def init_target_extra(model, config):
  """The method state of BYOL and MoCo v3: the target, a copy of the online encoder + projector."""
  del config
  return {'target': init_target(model.online)}


def two_views(key, batch, ctx):
  """Views (B, 2, R, R, C); view i from `augment{i}`, else `augment` (BYOL's asymmetric view 2: `augment2`)."""
  return augment.make_views(key, batch['image'], augment.view_configs(ctx.config, 2), ctx.resolution)


def flatten_views(views):
  """(B, V, ...) -> (B·V, ...) example-major, so ghost BatchNorm groups do not depend on the device count."""
  return views.reshape(views.shape[0] * views.shape[1], *views.shape[2:])


def _copy(tree):
  # Fresh buffers: the target must never alias the online params, which are donated to the same step.
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def init_target(module: nnx.Module) -> dict:
  """The momentum target's starting state: a copy of `module`'s params and batch statistics."""
  return {'params': _copy(nnx.state(module, nnx.Param)),
          'batch_stats': _copy(nnx.state(module, nnx.BatchStat))}


def target_module(module: nnx.Module, target: dict) -> nnx.Module:
  """A module with `module`'s structure and the target's params and batch statistics.

  The state is copied inside the current trace because NNX lets a module update only Variables created at its
  own trace level (the target runs in train mode and updates its batch statistics).
  """
  return nnx.merge(nnx.graphdef(module), jax.tree.map(lambda x: x, target['params']),
                   jax.tree.map(lambda x: x, target['batch_stats']))


def run_target(module: nnx.Module, target: dict, images, *, permutation=None, after_stem=None):
  """Target outputs (N, D) of `images` in train mode, without gradient, and the target's new state.

  Args:
    module: the online module the target mirrors (only its structure is used).
    target: {'params', 'batch_stats'} of the target.
    images: (N, H, W, C) float images in [0, 1].
    permutation: optional (N,) order to run the examples in (MoCo's shuffle-BN); outputs come back in the
      original order.
    after_stem: the step context's hook after the encoder's stem (it sees the rows in the order they run).

  Returns:
    (outputs (N, D) float32 under stop_gradient, new target dict with updated batch statistics).
  """
  net = target_module(module, target)
  if permutation is not None:
    images = images[permutation]
  out = jax.lax.stop_gradient(net(images, train=True, after_stem=after_stem))
  if permutation is not None:
    out = out[jnp.argsort(permutation)]
  new_stats = jax.lax.stop_gradient(nnx.state(net, nnx.BatchStat))
  return out.astype(jnp.float32), {'params': target['params'], 'batch_stats': new_stats}


def ema_rate(ema_cfg, step, total_steps: int):
  """The target's EMA rate τ at `step` (float32 scalar).

  'cosine' (BYOL, Grill et al. 2020): τ = final - (final - base)·(cos(π·k/K) + 1)/2, rising from `base` at
  step 0 to `final` (1 in BYOL; solo-learn's MoCo v2+ uses 0.99 -> 0.999) at step K = total_steps.
  'constant': τ = base (MoCo's m; S3L's BYOL code uses a constant 0.99).
  """
  base = jnp.float32(ema_cfg.base)
  if ema_cfg.schedule == 'constant':
    return base
  progress = jnp.asarray(step, jnp.float32) / max(total_steps, 1)
  return ema_cfg.final - (ema_cfg.final - base) * (jnp.cos(math.pi * progress) + 1.0) / 2.0


def ema_update(target: dict, online_params, tau) -> dict:
  """target ← τ·target + (1 - τ)·online, on the params only (the target keeps its batch statistics)."""
  params = jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o, target['params'], online_params)
  return {**target, 'params': params}


def check_predictor(config) -> None:
  """Raises UserError when the predictor's output is not the projection's width (the prediction regresses
  the projection, or is compared with the momentum keys)."""
  head, predictor = config.model.head, config.model.predictor
  if predictor.out_dim != head.out_dim:
    raise UserError(f'model.predictor.out_dim={predictor.out_dim} must equal model.head.out_dim='
                    f'{head.out_dim}: the prediction is compared with the projection')


def check_ema(config) -> None:
  """Raises UserError for EMA rates the target cannot use (each is in [0, 1] by the schema)."""
  ema_cfg = config.ema
  if ema_cfg.base > ema_cfg.final:
    raise UserError(f'ema.base={ema_cfg.base}, ema.final={ema_cfg.final} must satisfy '
                    '0 <= base <= final <= 1 (e.g. 0.996 and 1.0 for BYOL)')

