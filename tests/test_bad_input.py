"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, nothing in the workdir lost."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from configs import simclr_cifar10
from ssl_jax import checkpoint, train
from ssl_jax import errors
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
  c.data.download = False  # True (the default) would prepare it
  with pytest.raises(UserError, match='download_and_prepare') as info:
    train.train_and_evaluate(c, tmp_path / 'run')
  assert 'cifar10' in str(info.value) and '\n' not in str(info.value)
  assert ':runlocal,synthetic' in str(info.value)


@pytest.mark.parametrize('arg,expected', [('runlocal=on', True), ('runlocal=No', False), ('', False)])
def test_recipe_flags_read_as_booleans(arg, expected):
  assert simclr_cifar10.get_config(arg).total_steps == (4 if expected else 0)


def test_incompatible_checkpoint_is_refused_and_kept(tmp_path):
  train.train_and_evaluate(_tiny(**{'eval.final': False, 'checkpoint_every_steps': 1}), tmp_path / 'run')
  before = _snapshot(tmp_path / 'run')
  with pytest.raises(UserError, match=r'model\.width') as info:
    train.train_and_evaluate(_tiny(**{'model.width': 0.25}), tmp_path / 'run')
  assert 'different config' in str(info.value)
  assert _snapshot(tmp_path / 'run') == before


_PROGRESS = re.compile(r'^(\[ *\d+\.\d s\] |step \d+/\d+ \| )')  # progress and training lines


def _cli(*args, cwd=ROOT, program=('-m', 'ssl_jax.main'), prefix=()):
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu', 'JAX_COMPILATION_CACHE_DIR': str(ROOT / '.jax_cache'),
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
  return subprocess.run([*prefix, sys.executable, *program, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def _assert_one_error_line(proc, expected):
  """Exit code 2, no traceback, and stderr is progress lines, then one error line naming the problem."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert lines and lines[-1].startswith('error: ') and expected in lines[-1], proc.stderr[-3000:]
  assert all(_PROGRESS.match(l) for l in lines[:-1]), proc.stderr[-3000:]
  assert '\\n' not in lines[-1]  # no escaped newlines from a repr


@pytest.mark.parametrize('extra,expected', [
    (['--config.method=nope'], "method 'nope' is unknown"),
    (['--config.batch_size=abc'], 'abc'),
    (['--config.no_such_field=1'], 'no_such_field'),
    (['--config.optimiser.name=sgd'], "config field 'optimiser.name' is unknown; did you mean --config.optimizer?"),
    (['--config.optimizer.lr=1'], "config field 'optimizer.lr' is unknown; did you mean --config.optimizer.base_lr?"),
])
def test_cli_exit_code_and_single_line(tmp_path, extra, expected):
  proc = _cli('--config', 'configs/simclr_digits.py:runlocal', '--workdir', str(tmp_path / 'run'), *extra)
  _assert_one_error_line(proc, expected)
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('recipe,expected', [
    ('configs/simclr_digit.py', 'config file configs/simclr_digit.py does not exist; did you mean '
                                'configs/simclr_digits.py?'),
    ('configs/simclr_digits.py:runlocal=maybe', "config argument runlocal='maybe' is not true or false"),
    ('configs/simclr_digits.py:runloc', "unknown config argument 'runloc'; this recipe takes: runlocal"),
])
def test_cli_bad_recipe_or_recipe_argument(tmp_path, recipe, expected):
  proc = _cli('--config', recipe, '--workdir', str(tmp_path / 'run'))
  _assert_one_error_line(proc, expected)
  assert proc.stderr.splitlines()[0].endswith(f'reading the config {recipe} (importing jax)')  # the first line
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('where,expected', [('file', 'is a file'), ('file/run', 'lies under')])
def test_cli_workdir_that_is_or_lies_under_a_file(tmp_path, where, expected):
  (tmp_path / 'file').write_text('keep me')
  proc = _cli('--config', 'configs/simclr_digits.py:runlocal', '--workdir', str(tmp_path / where))
  _assert_one_error_line(proc, expected)
  assert (tmp_path / 'file').read_text() == 'keep me'


def test_cli_read_only_workdir(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text('{}')
  before = _snapshot(workdir)
  # Root writes through permission bits: as root the CLI runs in its own mount namespace where the workdir is
  # a read-only bind mount of itself (gone when the process ends); others get a directory without write bits.
  prefix = ()
  if os.geteuid() == 0:
    prefix = ('unshare', '--mount', 'sh', '-c', 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && '
              'exec "$@"', str(workdir))
  workdir.chmod(0o555)
  try:
    proc = _cli('--config', 'configs/simclr_digits.py:runlocal', '--workdir', str(workdir), prefix=prefix)
  finally:
    workdir.chmod(0o755)
  _assert_one_error_line(proc, 'is read-only')
  assert _snapshot(workdir) == before


def test_cli_empty_class_folder(tmp_path):
  (tmp_path / 'images' / 'train' / 'cat').mkdir(parents=True)
  (tmp_path / 'images' / 'train' / 'cat' / '0.png').write_bytes(b'not decoded before the check')
  (tmp_path / 'images' / 'train' / 'dog').mkdir()
  proc = _cli('--config', 'configs/simclr_digits.py:runlocal', '--workdir', str(tmp_path / 'run'),
              '--config.data.name=image_folder', f'--config.data.root={tmp_path / "images"}')
  _assert_one_error_line(proc, 'train/dog holds no image; add its images or remove the folder')
  assert not (tmp_path / 'run').exists()


_DISK_FULL_AT_STEP_2 = """
import errno, runpy, sys
from orbax.checkpoint._src.path import atomicity
commit = atomicity.AtomicRenameTemporaryPath.finalize

async def full(self, *args, **kwargs):  # orbax's commit of step 2 finds the disk full
  if self.get_final().name == '2':
    raise OSError(errno.ENOSPC, 'No space left on device')
  return await commit(self, *args, **kwargs)

atomicity.AtomicRenameTemporaryPath.finalize = full
runpy.run_module('ssl_jax.main', run_name='__main__', alter_sys=True)
"""


def test_cli_full_disk_is_one_line_without_asyncio_noise(tmp_path):
  proc = _cli('--config', 'configs/simclr_cifar10.py:runlocal,synthetic', '--workdir', str(tmp_path / 'run'),
              '--config.total_steps=2', '--config.checkpoint_every_steps=1', '--config.data.synthetic_examples=32',
              '--config.data.synthetic_shape=(16, 16, 3)', program=('-c', _DISK_FULL_AT_STEP_2))
  _assert_one_error_line(proc, 'no space left on device while saving a checkpoint')
  assert 'checkpoint of step 1 is intact' in proc.stderr and 'Event loop is closed' not in proc.stderr
  assert checkpoint.is_complete(tmp_path / 'run' / 'checkpoints' / '1')


def test_closed_event_loop_tracebacks_are_dropped_and_others_kept(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, 'excepthook', lambda kind, value, tb: seen.append(str(value)))
  errors.hide_closed_event_loop_errors()
  sys.excepthook(RuntimeError, RuntimeError('Event loop is closed'), None)  # what TensorStore's callbacks raise
  sys.excepthook(RuntimeError, RuntimeError('something else'), None)
  assert seen == ['something else']
