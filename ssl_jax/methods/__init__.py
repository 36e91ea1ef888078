"""Self-supervised methods, one small module each, looked up by `config.method`.

A method module defines:
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
  num_views(config) -> int                       views per example the input pipeline should crop on the host
  init_extra(model, config) -> pytree            method state kept in the train state (EMA params, a queue)
  after_update(extra, params, ctx) -> pytree     method state after the optimizer step (e.g. an EMA update)
  needs_partners(config) -> bool                 False; True: every training batch also carries 'partner',
                                                 a random example of the split per anchor (RepMix; see
                                                 ssl_jax.data.sources)

Add-ons (`ADDONS`: modules of this package too) change any framework: each defines `enabled(config) -> bool`
and `apply(method, config) -> Method`, which returns the framework with its model, views or loss extended
(e.g. an extra head attached to the model and an extra loss term). `get_method` applies the enabled ones in
the order of `ADDONS`, so the later ones wrap the earlier ones.
"""
import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

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


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  build_model: Callable
  make_views: Callable
  loss_fn: Callable
  num_views: Callable
  init_extra: Callable
  after_update: Callable
  needs_partners: Callable = lambda config: False


ADDONS = ('rotation', 'fusion')  # add-on modules, in the order they wrap the framework


def available() -> list[str]:
  """The framework names `config.method` accepts."""
  names = (m.name for m in pkgutil.iter_modules(__path__))
  return sorted(n for n in names if not n.startswith('_') and n != 'common' and n not in ADDONS)


def get_method(config) -> Method:
  """The framework `config.method`, extended by every add-on its config switches on."""
  method = _framework(config.method)
  for name in ADDONS:
    addon = importlib.import_module(f'{__name__}.{name}')
    if addon.enabled(config):
      method = addon.apply(method, config)
  return method


def _framework(name: str) -> Method:
  """Imports `ssl_jax.methods.<name>` and fills in the optional functions."""
  if name not in available():
    raise UserError(f'method {name!r} is unknown; set --config.method to one of: {", ".join(available())}')
  mod = importlib.import_module(f'{__name__}.{name}')
  return Method(
      name=name,
      build_model=mod.build_model,
      make_views=mod.make_views,
      loss_fn=mod.loss_fn,
      num_views=getattr(mod, 'num_views', lambda config: config.num_views),
      init_extra=getattr(mod, 'init_extra', lambda model, config: {}),
      after_update=getattr(mod, 'after_update', lambda extra, params, ctx: extra),
      needs_partners=getattr(mod, 'needs_partners', lambda config: False),
  )
