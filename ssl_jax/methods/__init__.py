"""Self-supervised methods, one small module each, looked up by `config.method`.

A method module defines:
  CAPABILITIES: Capabilities                      what it needs and what may wrap it (below); the trainer, the
                                                 add-ons, the config checks and the contract test read it, so
                                                 no list of method names exists outside this registry
  build_model(config, *, in_channels, rngs) -> nnx.Module
      The trainable model. It has an `encoder` attribute and a `features(images, *, train)` method (images
      float in [0, 1]) that evaluation and `load_encoder` use; it may hold any heads and a module in front of
      the encoder.
  make_views(key, batch, ctx) -> views (B, V, R, R, C) float in [0, 1]
      The step's augmented views of the global batch (`batch['image']` uint8, `batch['label']`), any number
      per example, including one. Frameworks with two views put them at [:, 0] and [:, 1] (add-ons such as
      rotation rely on this). Computed outside the gradient: views never depend on the params.
  loss_fn(model, views, batch, key, ctx) -> (loss, (metrics, extra, features))
      One training step's loss on the global batch. It may run several forward passes (each call of a module
      in train mode uses and updates its own batch statistics), may read stage outputs
      (`encoder(x, train=..., return_stages=True)`), and returns the new method state `extra` and the encoder
      features (B, D) of one view, which the online linear probe reads (under stop_gradient). `key` is the
      same step key `make_views` got; a method that needs both splits it the same way in both.
It may also define (defaults below):
  check_config(config) -> None                   its own cross-field checks (UserError); `check_config` below
                                                 calls it for train.check_run, before any compute
  host_crops(config) -> tuple[data.HostCrop, ...]  the crops the host cuts from every training example of
                                                 variable-size data (fixed-size data are cropped in
                                                 make_views); default: `config.num_views` views at the
                                                 step's resolution, view i with augment{i}'s crop fields
                                                 (`augment.host_crops`)
  init_extra(model, config) -> pytree            method state kept in the train state (EMA params, a queue)
  after_update(extra, params, ctx) -> pytree     method state after the optimizer step (e.g. an EMA update)
  prepare_params(params, config) -> params        the params as the step starts from, before the loss and the
                                                 optimizer see them (SwAV: prototypes L2-normalised)
  needs_partners(config) -> bool                 False; True: every training batch also carries 'partner',
                                                 a random example of the split per anchor (RepMix; see
                                                 ssl_jax.data.sources)

Add-ons (`ADDONS`: modules of this package too) change any framework: each defines `enabled(config) -> bool`,
`check_config(config, method) -> None` (its cross-field checks against the framework) and
`apply(method, config) -> Method`, which returns the framework with its model, views or loss extended
(e.g. an extra head attached to the model and an extra loss term). `get_method` applies the enabled ones in
the order of `ADDONS`, so the later ones wrap the earlier ones.
"""
import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

from ssl_jax import models
from ssl_jax.data import augment
from ssl_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What a method's step functions may read besides the model and the batch."""
  config: Any          # the run's ConfigDict
  resolution: int      # side of the square views of this step (static: one compiled step per resolution)
  step: Any            # int32 scalar array: the step being taken
  total_steps: int     # steps of the whole run (for schedules such as BYOL's EMA rate)
  extra: Any           # the method state before this step
  # An add-on's function on the encoder's stem output, `after_stem(rows, first_view=0) -> rows` (batch fusion
  # after the stem); rows hold views first_view.. of every example, example-major. Frameworks pass it to
  # every encoder call of the training step, the momentum target's included.
  after_stem: Callable | None = None
  steps_per_epoch: int = 0   # of the training data (static; 0 where unknown: benchmarks, tests)


@dataclasses.dataclass(frozen=True)
class Capabilities:
  """What a framework declares about itself.

  needs_labels: its loss reads labels (a supervised loss), so a split without labels is refused before any
    compute; a function of the config where that depends on the config (SelfCon's variants).
  addons: the add-ons of `ADDONS` that may wrap it; the others refuse it in one line.
  stem_hook: it passes `StepContext.after_stem` to every encoder call of its step (batch fusion after the stem).
  backbones: the encoder families (`ssl_jax.models.family`) it can train; `check_config` refuses the others.
  config_blocks: dotted config blocks it reads besides the common ones; a config without one is refused.
  multi_crop: its views and loss take `config.multicrop` local crops (ssl_jax/data/multicrop.py); the others
    refuse a config with local crops.
  """
  needs_labels: bool | Callable[[Any], bool] = False
  addons: tuple[str, ...] = ()
  stem_hook: bool = False
  backbones: tuple[str, ...] = ('resnet',)
  config_blocks: tuple[str, ...] = ()
  multi_crop: bool = False

  def labels_needed(self, config) -> bool:
    return self.needs_labels(config) if callable(self.needs_labels) else self.needs_labels


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  capabilities: Capabilities
  build_model: Callable
  make_views: Callable
  loss_fn: Callable
  host_crops: Callable
  init_extra: Callable
  after_update: Callable
  needs_partners: Callable = lambda config: False
  check_config: Callable = lambda config: None
  prepare_params: Callable = lambda params, config: params


ADDONS = ('rotation', 'fusion')  # add-on modules, in the order they wrap the framework


def available() -> list[str]:
  """The framework names `config.method` accepts."""
  names = (m.name for m in pkgutil.iter_modules(__path__))
  return sorted(n for n in names if not n.startswith('_') and n != 'common' and n not in ADDONS)


def capabilities(name: str) -> Capabilities:
  """What framework `name` declares (its module's CAPABILITIES)."""
  return _framework(name).capabilities


def check_config(config) -> None:
  """The methods' part of `train.check_run`: what the framework `config.method` declares (its encoder
  families, config blocks, local crops, add-ons), its own `check_config`, and each enabled add-on's.

  Raises:
    UserError: the config lacks a block the framework needs, fails the framework's own check, or switches
      on an add-on the framework does not accept (or one whose block it cannot use).
  """
  method = _framework(config.method)
  caps = method.capabilities
  _check_backbone(config, caps)
  for block in caps.config_blocks:
    _require_block(config, block)
  if 'multicrop' in config and config.multicrop.num_local and not caps.multi_crop:
    raise UserError(f'multicrop.num_local={config.multicrop.num_local}: method {config.method!r} does not take '
                    'local crops; set --config.multicrop.num_local=0 or use a method that does (swav)')
  method.check_config(config)
  for name in ADDONS:
    addon = importlib.import_module(f'{__name__}.{name}')
    if addon.enabled(config):
      if name not in caps.addons:
        accepting = [m for m in available() if name in capabilities(m).addons]
        raise UserError(f'{name}.enabled=True does not support method {config.method!r}; use one of '
                        f'{", ".join(accepting)} or set --config.{name}.enabled=False')
      addon.check_config(config, method)


def get_method(config) -> Method:
  """The framework `config.method`, extended by every add-on it switches on.

  `config` is one `check_config` (through `train.check_run`) has accepted; this function checks nothing.
  """
  method = _framework(config.method)
  for name in ADDONS:
    addon = importlib.import_module(f'{__name__}.{name}')
    if addon.enabled(config):
      method = addon.apply(method, config)
  return method


def check_labels(method: Method, config, num_classes: int) -> None:
  """Raises UserError when `method` needs labels and the training split (`num_classes`) has none."""
  if method.capabilities.labels_needed(config) and num_classes < 1:
    raise UserError(f'method {config.method!r} is supervised (its loss reads labels) but the training split '
                    f'{config.data.name}:{config.data.train_split} has no labels; use a labelled split or an '
                    'unsupervised method such as simclr')


def _check_backbone(config, caps: Capabilities) -> None:
  """Raises UserError when the framework cannot train `config.model.name`'s encoder family."""
  family = models.family(config.model.name)
  if family not in caps.backbones:
    accepting = [m for m in available() if family in capabilities(m).backbones]
    raise UserError(f'method {config.method!r} cannot train a {family} encoder ({config.model.name}); use one '
                    f'of its encoders ({", ".join(caps.backbones)}) or a method that can: {", ".join(accepting)}')


def _require_block(config, name: str) -> None:
  node = config
  for part in name.split('.'):
    if part not in node:
      raise UserError(f'config.method={config.method!r} needs the config block `{name}`; start from one of its '
                      f'recipes (configs/{config.method}_*.py) or add the block')
    node = node[part]


def _framework(name: str) -> Method:
  """Imports `ssl_jax.methods.<name>` and fills in the optional functions."""
  if name not in available():
    raise ValueError(f'method {name!r} is unknown; the methods are {", ".join(available())}')
  mod = importlib.import_module(f'{__name__}.{name}')
  return Method(
      name=name,
      capabilities=mod.CAPABILITIES,
      build_model=mod.build_model,
      make_views=mod.make_views,
      loss_fn=mod.loss_fn,
      host_crops=getattr(mod, 'host_crops', lambda config: augment.host_crops(config, config.num_views)),
      init_extra=getattr(mod, 'init_extra', lambda model, config: {}),
      after_update=getattr(mod, 'after_update', lambda extra, params, ctx: extra),
      needs_partners=getattr(mod, 'needs_partners', lambda config: False),
      check_config=getattr(mod, 'check_config', lambda config: None),
      prepare_params=getattr(mod, 'prepare_params', lambda params, config: params),
  )
