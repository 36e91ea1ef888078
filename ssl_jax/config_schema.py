"""The type and range of every config field, in one place, checked before anything runs.

`validate(config)` walks a run's ConfigDict and raises `UserError` (one line: the dotted field, its value,
what it must be) for the first field that is of the wrong type, out of range, not one of its choices, or not
a field at all (with a "did you mean"). `ssl_jax.main` calls it before anything else, and
`train.train_and_evaluate` calls it again for runs started from Python. Choice lists are looked up in the
modules that use them (`_from`), so a new choice is added in one place.

A user's config is checked in two places only: here, each field on its own, and in `train.check_run`, every
rule across fields or against the mesh (a batch divisible by the devices and by the ghost-BatchNorm group,
an encoder's patch size against the view sizes, a queue that is a multiple of the batch, a stage list that
sets the run's length, each method's and add-on's `check_config`); both run before any compute. The library
code behind them trusts a checked config. Optional blocks (`ema`, `moco`, `augment1`..`augment8`,
`model.predictor`, `selfcon`, `swav`, `multicrop`) are checked when a recipe has them.

Adding a config field means adding its spec to `SCHEMA` below; the test suite checks every recipe against it.
"""
import dataclasses
import difflib
import math
from typing import Any, Callable

from ssl_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Spec:
  """What one field may hold.

  kind: bool, int, float (ints accepted), str, or tuple.
  lo, hi: inclusive bounds of a number (or of every item of a tuple); lo_open: the lower bound is exclusive.
  choices: the allowed values, or a function returning them (resolved only when checked).
  length: the exact length of a tuple (None: any positive length); ordered: a (min, max) pair, min <= max.
  item: the kind of a tuple's items (int or float).
  """
  kind: type
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  choices: tuple | Callable[[], tuple] | None = None
  length: int | None = None
  ordered: bool = False
  item: type = float


def _int(lo=None, hi=None) -> Spec:
  return Spec(int, lo=lo, hi=hi)


def _float(lo=None, hi=None, lo_open=False) -> Spec:
  return Spec(float, lo=lo, hi=hi, lo_open=lo_open)


def _prob() -> Spec:
  return Spec(float, lo=0.0, hi=1.0)


def _pair(lo, hi=None, lo_open=False, ordered=True) -> Spec:
  return Spec(tuple, lo=lo, hi=hi, lo_open=lo_open, length=2, ordered=ordered)


def _choice(choices) -> Spec:
  return Spec(str, choices=choices)


_BOOL, _STR = Spec(bool), Spec(str)


# Choices owned by the modules that use them, looked up only when a config is checked.
def _methods():
  from ssl_jax import methods  # pylint: disable=g-import-not-at-top
  return tuple(methods.available())


def _datasets():
  from ssl_jax import data  # pylint: disable=g-import-not-at-top
  registered = {name for name, _ in data._MEMORY_DATASETS}  # pylint: disable=protected-access
  return data.DATASET_NAMES + tuple(sorted(registered))


def _encoders():
  from ssl_jax.models import resnet, vit  # pylint: disable=g-import-not-at-top
  return tuple(sorted(resnet.ENCODERS)) + tuple(sorted(vit.ARCHS))


def _dtypes():
  from ssl_jax.models import precision  # pylint: disable=g-import-not-at-top
  return precision.DTYPES


def _head_activations():
  from ssl_jax.models import heads  # pylint: disable=g-import-not-at-top
  return tuple(sorted(heads._ACTIVATIONS))  # pylint: disable=protected-access


def _from(module: str, name: str):
  def resolve():
    import importlib  # pylint: disable=g-import-not-at-top
    return tuple(getattr(importlib.import_module(module), name))
  return resolve


ON_NAN = ('stop', 'skip_step', 'rollback')

_HEAD = {'num_layers': _int(1), 'hidden_dim': _int(0), 'out_dim': _int(1), 'use_bn': _BOOL, 'last_bn': _BOOL,
         'activation': _choice(_head_activations)}

_AUGMENT = {
    'crop': _BOOL, 'crop_scale': _pair(0.0, 1.0, lo_open=True), 'crop_ratio': _pair(0.0, lo_open=True),
    'flip_prob': _prob(), 'jitter_prob': _prob(), 'brightness': _float(0.0), 'contrast': _float(0.0),
    'saturation': _float(0.0), 'hue': _float(0.0, 0.5), 'grayscale_prob': _prob(), 'blur_prob': _prob(),
    'blur_sigma': _pair(0.0, lo_open=True), 'blur_kernel_frac': _float(0.0, 1.0, lo_open=True),
    'fixed_blur_sigma': _pair(0.0, ordered=False), 'solarize_prob': _prob(), 'solarize_threshold': _prob(),
}

SCHEMA = {
    'method': _choice(_methods),
    'seed': _int(),
    'batch_size': _int(1),
    'num_views': _int(1),
    'total_epochs': _float(0.0),
    'total_steps': _int(0),
    'log_every_steps': _int(1),
    'checkpoint_every_steps': _int(1),
    'keep_checkpoints': _int(1),
    'eval_every_steps': _int(0),
    'stages': Spec(tuple, length=None, item=dict),   # the stage dicts: ssl_jax.stages.check (check_run)
    'distributed': _BOOL,
    'on_nan': _choice(ON_NAN),
    'nan_max_rollbacks': _int(1),
    'nan_max_skipped_steps': _int(1),
    'resume_from_different_config': _BOOL,
    'model': {
        'name': _choice(_encoders), 'stem': _choice(_from('ssl_jax.models.resnet', 'STEMS')),
        'width': _float(0.0, lo_open=True),
        'num_stages': _int(0), 'bn_group_size': _int(0), 'bn_momentum': _prob(), 'dtype': _choice(_dtypes),
        'patch_size': _int(1), 'num_heads': _int(0),
        'pos_embed': _choice(_from('ssl_jax.models.vit', 'POS_EMBEDS')), 'freeze_patch_embed': _BOOL,
        'pool': _choice(_from('ssl_jax.models.vit', 'POOLS')),
        'head': _HEAD, 'predictor': _HEAD,
    },
    'data': {
        'name': _choice(_datasets), 'data_dir': _STR, 'download': _BOOL, 'root': _STR, 'train_split': _STR,
        'eval_split': _STR,
        'image_size': _int(1),
        'shuffle_buffer': _int(1), 'synthetic_examples': _int(1),
        'synthetic_shape': Spec(tuple, lo=1, length=3, item=int), 'synthetic_classes': _int(1),
        'subset_num': _int(0), 'subset_per_class': _int(0), 'subset_seed': _int(),
    },
    'augment': _AUGMENT,
    'augment2': _AUGMENT,
    # View i reads augment{i} when the recipe has it, else augment (ssl_jax/data/augment.py view_config).
    **{f'augment{i}': _AUGMENT for i in (1, *range(3, 9))},
    'multicrop': {'num_global': _int(1), 'num_local': _int(0), 'local_size': _int(1),
                  'local_crop_scale': _pair(0.0, 1.0, lo_open=True)},
    'swav': {'num_prototypes': _int(1), 'temperature': _float(0.0, lo_open=True),
             'epsilon': _float(0.0, lo_open=True), 'sinkhorn_iters': _int(1),
             'crops_for_assign': Spec(tuple, lo=0, item=int), 'freeze_prototypes_steps': _int(0),
             'queue_length': _int(0), 'queue_start_epoch': _float(0.0)},
    'optimizer': {
        'name': _choice(_from('ssl_jax.optim', 'OPTIMIZERS')), 'base_lr': _float(0.0),
        'lr_scaling': _choice(_from('ssl_jax.optim', 'LR_SCALING')), 'base_batch_size': _int(1),
        'warmup_epochs': _float(0.0), 'end_lr_factor': _float(0.0), 'momentum': _prob(), 'nesterov': _BOOL,
        'weight_decay': _float(0.0), 'exclude_bias_and_norm': _BOOL, 'trust_coefficient': _float(0.0),
        'b1': _prob(), 'b2': _prob(), 'schedule': _choice(_from('ssl_jax.optim', 'SCHEDULES')),
        'cosine_t_max_steps': _int(0),
    },
    'loss': {'temperature': _float(0.0, lo_open=True),
             'reduction': _choice(_from('ssl_jax.methods.common', 'LOSS_REDUCTIONS')), 'chunk_size': _int(0),
             'supcon_form': _choice(_from('ssl_jax.losses', 'SUPCON_FORMS')),
             'no_positive': _choice(_from('ssl_jax.losses', 'NO_POSITIVE_RULES'))},
    'repmix': {'mix_weight': _prob(), 'mix_beta_alpha': _float(0.0)},
    'rotation': {'enabled': _BOOL, 'weight': _float(0.0), 'hidden_dim': _int(0),
                 'num_angles': Spec(int, choices=_from('ssl_jax.methods.rotation', 'ANGLE_SETS')),
                 'head_on': _choice(_from('ssl_jax.methods.rotation', 'HEAD_INPUTS'))},
    'fusion': {
        'enabled': _BOOL, 'variant': _choice(_from('ssl_jax.models.fusion', 'VARIANTS')),
        'placement': _choice(_from('ssl_jax.methods.fusion', 'PLACEMENTS')),
        'views': _choice(_from('ssl_jax.methods.fusion', 'VIEWS')),
        'patch_size': _int(1), 'group_size': _int(1), 'num_blocks': _int(0), 'width': _int(1),
        'kernel_size': _int(1), 'norm': _choice(_from('ssl_jax.models.fusion', 'NORMS')),
        'activation': _choice(_from('ssl_jax.models.fusion', 'ACTIVATIONS')),
        'gate': _choice(_from('ssl_jax.models.fusion', 'GATES')), 'gate_init': _float(),
        'gate_max': _float(0.0),
        'share_groups': _BOOL,
    },
    'probe': {'enabled': _BOOL, 'lr': _float(0.0), 'momentum': _prob(), 'weight_decay': _float(0.0)},
    'eval': {
        'knn_ks': Spec(tuple, lo=1, item=int), 'knn_temperature': _float(0.0, lo_open=True),
        'knn_bank_size': _int(0), 'linear_epochs': _int(1), 'linear_lr': _float(0.0, lo_open=True),
        'linear_weight_decay': _float(0.0), 'batch_size': _int(1), 'final': _BOOL,
        'compare_random_init': _BOOL,
    },
    'ema': {'schedule': _choice(('cosine', 'constant')), 'base': _prob(), 'final': _prob()},
    'moco': {'queue_size': _int(1), 'shuffle_bn': _BOOL, 'symmetric': _BOOL},
    'selfcon': {
        'variant': _choice(_from('ssl_jax.methods.selfcon', 'VARIANTS')),
        'sub_net': _choice(_from('ssl_jax.methods.selfcon', 'SUB_NETS')), 'alpha': _float(0.0),
        'exit_stage': _int(1), 'official_temperature_scaling': _BOOL, 'mu_other_view_positive': _BOOL,
        'view_major_bn': _BOOL,
    },
}


def validate(config) -> None:
  """Raises UserError for the first field of `config` that `SCHEMA` does not allow; reads nothing else.

  Args:
    config: a run's ConfigDict (or a plain nested dict).
  """
  _check_block(config, SCHEMA, '')


def check_saved(config, where) -> None:
  """Raises UserError naming the first field the schema has and a saved `config` lacks.

  A config saved by an older ssl_jax may lack fields added since; nothing fills them in, so such a run is
  refused in one line. Blocks only some methods read (their `CAPABILITIES.config_blocks`) and the per-view
  `augment<i>` blocks may be absent.

  Args:
    config: the config read from a checkpoint.
    where: the checkpoint, for the message.
  """
  from ssl_jax import methods  # pylint: disable=g-import-not-at-top  (methods import this module's users)
  optional = {b for name in methods.available() for b in methods.capabilities(name).config_blocks}
  missing = _missing(config, SCHEMA, '', optional)
  if missing:
    raise UserError(f'the checkpoint at {where} was written by an older ssl_jax: its config has no field '
                    f'{missing!r}; retrain with this release, or read it with the release that wrote it')


def _missing(block, schema: dict, prefix: str, optional: set) -> str | None:
  for name, spec in schema.items():
    path = f'{prefix}{name}'
    if name not in block:
      if path not in optional and not (name.startswith('augment') and name[len('augment'):].isdigit()):
        return path
    elif isinstance(spec, dict):
      found = _missing(block[name], spec, f'{path}.', optional)
      if found:
        return found
  return None


def flatten(tree: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}: a config (as a dict), or the schema, by dotted field name."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def field_specs() -> dict[str, Spec]:
  """{dotted name: Spec} of every field the schema knows (the fuzz test draws from it)."""
  return flatten(SCHEMA)


def _check_block(block, schema: dict, prefix: str) -> None:
  for name in block.keys():
    path = f'{prefix}{name}'
    if name not in schema:
      close = difflib.get_close_matches(name, list(schema), n=1)
      hint = f'; did you mean {prefix}{close[0]}?' if close else f'; the fields here are {", ".join(schema)}'
      raise UserError(f'config field {path!r} is unknown{hint}')
    spec, value = schema[name], block[name]
    if isinstance(spec, dict):
      if not hasattr(value, 'keys'):
        raise UserError(f'{path}={value!r} must be a block of fields ({", ".join(spec)})')
      _check_block(value, spec, f'{path}.')
    else:
      problem = _problem(spec, value)
      if problem:
        # 'method 'dino' is unknown; ...' for names, 'batch_size=-1 is out of range; ...' for the rest.
        joint = ' ' if spec.choices is not None else '='
        raise UserError(f'{path}{joint}{_shown(value)} {problem}')


def _shown(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + '...'


def _problem(spec: Spec, value: Any) -> str | None:
  """What is wrong with `value` under `spec`, as the end of a sentence; None when it is allowed."""
  if spec.kind is tuple:
    return _tuple_problem(spec, value)
  if spec.choices is not None:
    choices = tuple(spec.choices() if callable(spec.choices) else spec.choices)
    if not _is(spec.kind, value) or value not in choices:
      return f'is unknown; use one of: {", ".join(map(str, choices))}'
    return None
  if not _is(spec.kind, value):
    return f'must be {_kind_name(spec.kind)}'
  if spec.kind in (int, float):
    return _range_problem(spec, value)
  return None


def _is(kind: type, value: Any) -> bool:
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if kind is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  return isinstance(value, kind)


def _kind_name(kind: type) -> str:
  return {bool: 'True or False', int: 'an integer', float: 'a finite number', str: 'a string',
          dict: 'a dict'}[kind]


def _range_problem(spec: Spec, value) -> str | None:
  below = spec.lo is not None and (value <= spec.lo if spec.lo_open else value < spec.lo)
  above = spec.hi is not None and value > spec.hi
  if not (below or above):
    return None
  lower = None if spec.lo is None else f'{">" if spec.lo_open else ">="} {spec.lo}'
  upper = None if spec.hi is None else f'<= {spec.hi}'
  return f'is out of range; it must be {" and ".join(b for b in (lower, upper) if b)}'


def _tuple_problem(spec: Spec, value) -> str | None:
  if not isinstance(value, (tuple, list)):
    return f'must be a tuple, e.g. {_example(spec)}'
  if spec.item is dict:
    return None if all(isinstance(v, dict) for v in value) else 'must be a tuple of dicts'
  if (spec.length and len(value) != spec.length) or not value:
    count = spec.length or 'one or more'
    return f'must be a tuple of {count} {_kind_name(spec.item)}s, e.g. {_example(spec)}'
  for v in value:
    problem = _problem(dataclasses.replace(spec, kind=spec.item), v)
    if problem:
      return f'has an item {v!r} that {problem}'
  if spec.ordered and value[0] > value[1]:
    return f'must be an ordered (min, max) pair, e.g. {_example(spec)}'
  return None


def _example(spec: Spec) -> str:
  if spec.item is int:
    return '(32, 32, 3)' if spec.length == 3 else '(20, 200)'
  return '(0.2, 1.0)'
