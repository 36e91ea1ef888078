"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, nothing in the workdir lost."""
import os
import pathlib
import subprocess
import sys

import pytest

from configs import simclr_cifar10
from ssl_jax import train
from ssl_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _tiny(**overrides):
  c = simclr_cifar10.get_config('runlocal,synthetic')
  c.total_steps = 1
  c.data.synthetic_examples = 32
  c.data.synthetic_shape = (16, 16, 3)
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _snapshot(path: pathlib.Path) -> dict:
  return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob('*')} if path.exists() else {}


@pytest.mark.parametrize('overrides,expected', [
    ({'method': 'dino'}, "method 'dino' is unknown"),
    ({'data.name': 'mnist3d'}, 'mnist3d'),
    ({'model.name': 'resnet7'}, 'resnet7'),
    ({'batch_size': 12}, 'not divisible by the 8 devices'),
    ({'model.bn_group_size': 5}, 'bn_group_size=5'),
    ({'model.stem': 'imagenet', 'data.image_size': 16}, 'too small'),
    ({'total_steps': 0, 'total_epochs': 0.0}, 'no steps'),
    ({'optimizer.name': 'adagrad'}, 'adagrad'),
])
def test_bad_config_values(tmp_path, overrides, expected):
  with pytest.raises(UserError, match=expected) as info:
    train.train_and_evaluate(_tiny(**overrides), tmp_path / 'run')
  assert '\n' not in str(info.value)
  assert not (tmp_path / 'run').exists()


def test_missing_dataset_says_how_to_prepare(tmp_path):
  c = simclr_cifar10.get_config('runlocal')
  c.data.data_dir = str(tmp_path / 'empty')
  with pytest.raises(UserError, match='download_and_prepare') as info:
    train.train_and_evaluate(c, tmp_path / 'run')
  assert 'cifar10' in str(info.value) and '\n' not in str(info.value)


def test_incompatible_checkpoint_is_refused_and_kept(tmp_path):
  train.train_and_evaluate(_tiny(**{'eval.final': False, 'checkpoint_every_steps': 1}), tmp_path / 'run')
  before = _snapshot(tmp_path / 'run')
  with pytest.raises(UserError, match=r'model\.width') as info:
    train.train_and_evaluate(_tiny(**{'model.width': 0.25}), tmp_path / 'run')
  assert 'different config' in str(info.value)
  assert _snapshot(tmp_path / 'run') == before


def _cli(*args, cwd=ROOT):
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'ssl_jax.main', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('extra,expected', [
    (['--config.method=nope'], "method 'nope' is unknown"),
    (['--config.batch_size=abc'], 'abc'),
    (['--config.no_such_field=1'], 'no_such_field'),
])
def test_cli_exit_code_and_single_line(tmp_path, extra, expected):
  proc = _cli('--config', 'configs/simclr_digits.py:runlocal', '--workdir', str(tmp_path / 'run'), *extra)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and expected in lines[0], proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'run').exists()
