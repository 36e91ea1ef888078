"""SelfCon's multi-exit model (Bae et al., AAAI 2023): a ResNet backbone with a sub-network exit after stage k.

Each exit has its own projection head; `exit_names`, `exit_features` and `exit_model` are what
ssl_jax/evaluate/exits.py and `Encoder.exits()` read. Built by ssl_jax/methods/selfcon.py.
"""
import functools

from flax import nnx
import jax
import jax.numpy as jnp

from ssl_jax.data import augment
from ssl_jax.errors import UserError
from ssl_jax.models import resnet
from ssl_jax.models.norm import BatchNorm
from ssl_jax.models.precision import compute_dtype


class SubNetwork(nnx.Module):
  """The sub-network exit: exit-stage feature map (B, H, W, C) -> features (B, D), D the backbone's width."""

  def __init__(self, encoder: resnet.ResNet, exit_stage: int, kind: str, *, model_cfg, rngs: nnx.Rngs):
    """Builds an unshared copy of the stages after `exit_stage` ('same', 'small') or one Linear ('fc').

    Args:
      encoder: the backbone (read for its architecture only; nothing is shared).
      exit_stage: 1-based stage whose output feeds the sub-network.
      kind: 'fc', 'small' or 'same'.
      model_cfg: `config.model` (BatchNorm group size and momentum, compute dtype).
      rngs: initialisation keys.
    """
    in_dim = encoder.stage_dims[exit_stage - 1]
    self.fc = nnx.Linear(in_dim, encoder.out_dim, rngs=rngs) if kind == 'fc' else None
    stages = []
    if kind != 'fc':
      dtype = compute_dtype(model_cfg.dtype)
      norm = functools.partial(BatchNorm, group_size=model_cfg.bn_group_size, momentum=model_cfg.bn_momentum,
                               dtype=dtype)
      for i in range(exit_stage, len(encoder.stage_dims)):
        blocks = encoder.stage_blocks[i] if kind == 'same' else max(1, encoder.stage_blocks[i] // 2)
        stages.append(resnet.make_stage(encoder.block_kind, in_dim, encoder.stage_widths[i], blocks, 2,
                                        norm=norm, dtype=dtype, rngs=rngs))
        in_dim = stages[-1][-1].out_dim
    self.stages = nnx.List(stages)
    self.out_dim = encoder.out_dim

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """(B, H, W, C) exit-stage output -> (B, out_dim) float32 features."""
    for stage in self.stages:
      for block in stage:
        x = block(x, train=train)
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return self.fc(pooled) if self.fc is not None else pooled


class SelfConModel(nnx.Module):
  """Backbone ResNet + optional sub-network exit, one projection head per exit, input normalisation."""

  def __init__(self, encoder, head, sub_network, sub_head, *, exit_stage: int, mean, std):
    self.encoder = encoder
    self.head = head
    self.sub_network = sub_network   # None for the SupCon baselines
    self.sub_head = sub_head
    self.exit_stage = exit_stage
    self.exit_names = ('backbone', 'sub') if sub_network is not None else ('backbone',)
    # Static tuples: part of the graph definition, so a restored model normalises exactly as it trained.
    self.mean, self.std = tuple(mean), tuple(std)

  def features(self, images, *, train: bool):
    """Backbone features (N, D) of float images in [0, 1], shape (N, H, W, C): what evaluation reads."""
    return self.encoder(augment.normalize(images, self.mean, self.std), train=train)

  def exit_features(self, images, *, train: bool) -> tuple:
    """Features of every exit, in `exit_names` order: (backbone (N, D), sub-network (N, D)) or (backbone,).

    One backbone pass: the sub-network reads the exit stage's output of that same pass.
    """
    x = augment.normalize(images, self.mean, self.std)
    if self.sub_network is None:
      return (self.encoder(x, train=train),)
    h, stages = self.encoder(x, train=train, return_stages=True)
    return h, self.sub_network(stages[self.exit_stage - 1], train=train)

  def exit_model(self, name: str) -> nnx.Module:
    """A module whose `features` (and `encoder`) are those of exit `name`, for `ssl_jax.encoder.Encoder`."""
    if name not in self.exit_names:
      raise UserError(f'exit {name!r} does not exist; this model has {", ".join(self.exit_names)}')
    return self if name == 'backbone' else SubExit(self)

  def __call__(self, images, *, train: bool):
    """Projections (N, E, P) of every exit (sub-network first, backbone last) and backbone features (N, D)."""
    feats = self.exit_features(images, train=train)
    z = [self.head(feats[0], train=train)]
    if self.sub_network is not None:
      z.insert(0, self.sub_head(feats[1], train=train))
    return jnp.stack(z, axis=1), feats[0]


class SubExit(nnx.Module):
  """The sub-network exit of a SelfConModel seen as an encoder model (`features`, `encoder`)."""

  def __init__(self, model: SelfConModel):
    self.model = model

  @property
  def encoder(self):
    return self.model.encoder

  def features(self, images, *, train: bool):
    """Sub-network features (N, D) of float images in [0, 1]."""
    return self.model.exit_features(images, train=train)[1]
