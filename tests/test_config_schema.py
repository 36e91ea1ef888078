"""Config validation: every recipe passes (the schema and check_run); random bad values of every field fail as one line with exit code 2.

Nothing here builds a model or compiles: the CLI runs in-process (`ssl_jax.main.run`) with training replaced
by a failure, so a bad value that got past validation fails the test instead of starting a run. The real
exit code of the CLI process is checked in tests/test_bad_input.py.
"""
import glob
import importlib
import os
import sys

import ml_collections
import numpy as np
import pytest

from ssl_jax import checkpoint, config_schema, main, train
from ssl_jax.errors import UserError

import runs

RECIPES = sorted(os.path.basename(p)[:-3] for p in glob.glob('configs/*.py')
                 if not p.endswith(('__init__.py', 'common.py')))
SPECS = config_schema.field_specs()


def _variants(name):
  """The recipe's configs for the arguments it accepts among runlocal / synthetic."""
  module = importlib.import_module(f'configs.{name}')
  out = {}
  for arg in (None, 'runlocal', 'synthetic', 'runlocal,synthetic'):
    try:
      out[arg] = module.get_config(arg)
    except (ValueError, UserError):  # the recipe has no such argument
      continue
  return out


def test_every_recipe_passes_validation():
  assert len(RECIPES) >= 20
  for name in RECIPES:
    variants = _variants(name)
    assert 'runlocal' in variants, name
    for config in variants.values():
      runs.check(config)   # the schema, then the cross-field check_run
      config_schema.check_saved(config, name)   # what a run of this release saves is readable again


def _bad_values(spec) -> list[str]:
  """Command-line values `spec` must refuse: a wrong type, outside the range, not a choice, a bad tuple."""
  if spec.kind is bool:
    return ['maybe']
  if spec.choices is not None:
    return ['no_such_choice'] if spec.kind is str else ['7']
  if spec.kind is str:
    return []  # free text (paths, split names): any string is a string
  if spec.kind is tuple:
    if spec.item is dict:
      return ['(1,)']
    item = 'abc' if spec.item is int else 'nan'
    bad = [f'({item},)' if spec.length != 1 else '()']
    if spec.lo is not None:
      bad.append(f'({spec.lo - 1},)' if not spec.length else str(tuple([spec.lo - 1] * spec.length)))
    if spec.ordered:
      bad.append('(0.9, 0.1)')
    return bad
  bad = ['abc'] + (['1.5'] if spec.kind is int else ['nan'])
  if spec.lo is not None:
    bad.append(str(spec.lo if spec.lo_open else spec.lo - 1))
  if spec.hi is not None:
    bad.append(str(spec.hi + 1))
  return bad


@pytest.fixture
def no_training(monkeypatch):
  def fail(config, workdir, **kwargs):
    raise AssertionError('a bad config value got past validation')
  monkeypatch.setattr(train, 'train_and_evaluate', fail)
  monkeypatch.setattr(sys, 'argv', list(sys.argv))  # main.run installs its argv there; restored afterwards


@pytest.mark.parametrize('name', RECIPES)
def test_random_bad_values_exit_2_with_one_line(name, tmp_path, capsys, no_training):
  config = _variants(name)['runlocal']
  fields = [f for f in checkpoint.flatten(config.to_dict()) if _bad_values(SPECS[f])]
  rng = np.random.default_rng(len(name))  # seeded per recipe, different fields for each
  for field in rng.choice(fields, size=min(5, len(fields)), replace=False):
    value = rng.choice(_bad_values(SPECS[field]))
    with pytest.raises(SystemExit) as info:
      main.run(['ssl_jax.main', '--config', f'configs/{name}.py:runlocal', '--workdir', str(tmp_path / 'run'),
                f'--config.{field}={value}'])
    err = capsys.readouterr().err
    assert info.value.code == 2, (field, value, err)
    *progress, last = err.strip().splitlines()
    assert last.startswith('error: ') and all(l.startswith('[') for l in progress), (field, value, err)
    assert field.split('.')[-1] in last and 'Traceback' not in err, (field, value, err)
    assert not (tmp_path / 'run').exists()


def test_every_field_refuses_none_and_names_itself():
  # From Python, ConfigDict lets any field be set to None.
  config = _variants('moco_cifar10')['runlocal']
  for field in checkpoint.flatten(config.to_dict()):
    broken = ml_collections.ConfigDict(config.to_dict())
    *parents, leaf = field.split('.')
    node = broken
    for p in parents:
      node = node[p]
    node[leaf] = None
    with pytest.raises(UserError, match=rf'^{field}[= ]None ') as info:
      config_schema.validate(broken)
    assert '\n' not in str(info.value)


def test_unknown_field_suggests_the_nearest():
  config = _variants('simclr_cifar10')['runlocal']
  config.optimizer.base_lrr = 0.1
  with pytest.raises(UserError, match=r"'optimizer.base_lrr' is unknown; did you mean optimizer.base_lr\?"):
    config_schema.validate(config)
  del config.optimizer['base_lrr']
  config.warmup = 3
  with pytest.raises(UserError, match="'warmup' is unknown"):
    config_schema.validate(config)


def test_a_saved_config_without_a_current_field_is_refused_naming_it():
  config = _variants('byol_cifar10')['runlocal'].to_dict()
  assert 'selfcon' not in config   # blocks only other methods read may be absent
  config_schema.check_saved(config, 'runs/x/checkpoints/3')
  config_schema.check_saved({k: v for k, v in config.items() if k not in ('ema', 'augment2')}, 'here')
  del config['loss']['chunk_size']
  with pytest.raises(UserError, match=r"^the checkpoint at runs/x/checkpoints/3 was written by an older "
                     r"ssl_jax: its config has no field 'loss.chunk_size'; retrain"):
    config_schema.check_saved(config, 'runs/x/checkpoints/3')
