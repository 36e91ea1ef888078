"""The launchers (launch/gpu.sh, launch/tpu_pod.sh) in dry-run mode, and the multi-process settings."""
import os
import pathlib
import runpy
import subprocess

import pytest

from ssl_jax import sharding
from ssl_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = ('launch/gpu.sh', 'launch/tpu_pod.sh')
TPU = ['--tpu', 'ssl-v4', '--zone', 'us-central2-b', '--bucket', 'gs://my-bucket']


def _launch(script, *args, **env):
  # No TPU_NAME etc. from the caller's environment: each test says what it sets.
  settings = ('TPU_NAME', 'ZONE', 'BUCKET', 'PROJECT', 'RUN_NAME', 'ACCELERATOR_TYPE', 'RUNTIME_VERSION')
  clean = {k: v for k, v in os.environ.items() if k not in settings}
  return subprocess.run(['bash', script, *args], cwd=ROOT, env={**clean, 'DRY_RUN': '1', **env},
                        capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_parse_and_explain_themselves(script):
  assert subprocess.run(['bash', '-n', script], cwd=ROOT).returncode == 0
  proc = _launch(script, '-h')
  assert proc.returncode == 0 and proc.stdout.startswith(f'Usage: {script}') and 'DRY_RUN=1' in proc.stdout


def test_gpu_single_host_runs_the_trainer_directly():
  proc = _launch('launch/gpu.sh', '--config', 'configs/simclr_cifar10.py', '--workdir', 'runs/x',
                 '--config.batch_size=512')
  assert proc.returncode == 0, proc.stderr
  command = proc.stdout.strip().splitlines()[-1]
  assert command.endswith('python -m ssl_jax.main --config configs/simclr_cifar10.py --workdir runs/x '
                          '--config.batch_size=512')
  assert 'JAX_COORDINATOR_ADDRESS' not in proc.stdout and 'SSL_JAX_DISTRIBUTED' not in proc.stdout


def test_gpu_multi_node_passes_the_coordinator_to_jax_distributed():
  proc = _launch('launch/gpu.sh', '--coordinator', 'node-a:8476', '--num_processes', '2', '--process_id=1',
                 '--gpus', '0,1', '--log', '/tmp/run.log', '--config', 'configs/simclr_cifar10.py',
                 '--workdir', '/shared/x')
  assert proc.returncode == 0, proc.stderr
  line = next(l for l in proc.stdout.splitlines() if 'ssl_jax.main' in l)
  assert line.startswith('nohup env ') and line.endswith('> /tmp/run.log 2>&1 &')
  for piece in ('SSL_JAX_DISTRIBUTED=1', 'JAX_COORDINATOR_ADDRESS=node-a:8476', 'JAX_NUM_PROCESSES=2',
                'JAX_PROCESS_ID=1', r'CUDA_VISIBLE_DEVICES=0\,1', '--workdir /shared/x'):
    assert piece in line
  assert 'tail -f /tmp/run.log' in proc.stdout and 'kill ' in proc.stdout


@pytest.mark.parametrize('args, message', [
    (['--coordinator', 'node-a:8476', '--num_processes', '2', '--process_id', '2'], 'not in 0..1'),
    (['--coordinator', 'node-a', '--num_processes', '2', '--process_id', '0'], 'HOST:PORT'),
    (['--num_processes', '2'], 'needs all of'),
])
def test_gpu_rejects_bad_multi_node_flags(args, message):
  proc = _launch('launch/gpu.sh', *args, '--config', 'c.py', '--workdir', 'w')
  assert proc.returncode == 2 and message in proc.stderr and not proc.stdout


def _words(line):
  """The arguments of a printed (shell-quoted) command, as the shell reads them."""
  out = subprocess.run(['bash', '-c', 'eval "set -- $0"; printf "%s\\0" "$@"', line], capture_output=True,
                       text=True, check=True).stdout
  return out.split('\0')[:-1]


def _remote_script(line):
  """The --command=... of a printed `gcloud ... ssh` line, checked to be valid bash."""
  script = next(w for w in _words(line) if w.startswith('--command='))[len('--command='):]
  assert subprocess.run(['bash', '-n'], input=script, text=True).returncode == 0, script
  return script


def test_tpu_pod_creates_copies_installs_and_runs_on_every_worker():
  proc = _launch('launch/tpu_pod.sh', *TPU, '--config', 'configs/simclr_cifar10.py:runlocal',
                 '--config.augment.crop_scale=(0.2, 1.0)', ACCELERATOR_TYPE='v5p-16')
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert _words(lines[0]) == 'gcloud compute tpus tpu-vm describe ssl-v4 --zone=us-central2-b'.split()
  create = _words(next(l for l in lines if ' create ' in l))
  assert '--accelerator-type=v5p-16' in create and '--version=v2-alpha-tpuv5' in create
  assert '--worker=all' in _words(next(l for l in lines if ' scp ' in l))
  setup, start = [_remote_script(l) for l in lines if ' ssh ssl-v4 --worker=all' in l]
  jax_version = next(l for l in open(ROOT / 'requirements.txt') if l.startswith('jax=='))[5:].strip()
  assert f'jax[tpu]=={jax_version}' in setup and 'source launch/_venv.sh' in setup
  assert 'gcsfuse --implicit-dirs my-bucket ~/bucket' in setup
  trainer = next(l for l in start.splitlines() if 'ssl_jax.main' in l)
  assert trainer.startswith('SSL_JAX_DISTRIBUTED=1 TFDS_DATA_DIR=gs://my-bucket/tensorflow_datasets ')
  workdir = os.path.expanduser('~/bucket/runs/simclr_cifar10_runlocal')  # as the worker's shell expands it
  assert _words(trainer.split(' nohup ')[1].split(' > ')[0]) == [
      '.venv/bin/python', '-m', 'ssl_jax.main', '--workdir', workdir, '--config',
      'configs/simclr_cifar10.py:runlocal', '--config.augment.crop_scale=(0.2, 1.0)']
  assert trainer.endswith('> ~/ssl_jax/logs/simclr_cifar10_runlocal.log 2>&1 < /dev/null &')
  assert "--worker=0 --command='tail -f ~/ssl_jax/logs/simclr_cifar10_runlocal.log'" in proc.stdout
  assert 'gcloud compute tpus tpu-vm delete ssl-v4 --zone=us-central2-b --quiet' in proc.stdout


@pytest.mark.parametrize('args, message', [
    (['--zone', 'z', '--bucket', 'gs://b1', '--config', 'c.py'], 'no TPU name'),
    (['--tpu', 't', '--zone', 'z', '--bucket', '/tmp/b', '--config', 'c.py'], 'gs://BUCKET_NAME'),
    ([*TPU, '--config', 'c.py', '--workdir', 'w'], '--run NAME'),
    ([*TPU], 'no recipe'),
])
def test_tpu_pod_rejects_missing_settings(args, message):
  proc = _launch('launch/tpu_pod.sh', *args)
  assert proc.returncode == 2 and message in proc.stderr and not proc.stdout


@pytest.mark.parametrize('env, message', [
    ({'JAX_NUM_PROCESSES': '2'}, 'set both'),
    ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': 'one'}, 'not an integer'),
    ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '2'}, 'not in 0..1'),
])
def test_distributed_settings_are_checked_before_jax_distributed_starts(monkeypatch, env, message):
  for name in ('JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(UserError, match=message):
    sharding.maybe_initialize_distributed(True)


@pytest.mark.parametrize('script, args', [
    ('launch/tpu_pod.sh', [*TPU, '--config', 'configs/nope.py']),
    ('launch/tpu_pod.sh', [*TPU, '--config', 'configs/simclr_cifar10.py:runlocal=maybe']),
    ('launch/gpu.sh', ['--config', 'configs/nope.py', '--workdir', 'w']),
])
def test_a_bad_recipe_is_refused_before_anything_is_created(script, args):
  proc = _launch(script, *args)
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert proc.returncode == 2 and len(errors) == 1 and not proc.stdout, proc.stderr  # no gcloud, no pip
  assert ('nope.py does not exist' in errors[0]) != ('runlocal=' in errors[0] and 'true or false' in errors[0])


def test_sweep_puts_the_recipe_and_its_framework_on_grid_axes(capsys):
  sweep = runpy.run_path(str(ROOT / 'launch' / 'sweep.py'))  # a script, not a module of the package
  runs = sweep['plan']('fusion_cifar:runlocal,synthetic', ['config:framework=simclr,byol', 'seed=0,1'],
                       ['--config.total_steps=2'])
  assert [name for name, _, _ in runs] == [
      'config:framework=simclr,seed=0', 'config:framework=simclr,seed=1', 'config:framework=byol,seed=0',
      'config:framework=byol,seed=1']
  assert [(c.method, c.seed, c.total_steps) for _, _, c in runs] == [
      ('simclr', 0, 2), ('simclr', 1, 2), ('byol', 0, 2), ('byol', 1, 2)]
  # The recipe itself as an axis; a quoted value keeps its commas.
  grid = "config='rotation_digits:runlocal,rotation=false',simclr_digits:runlocal"
  assert sweep['main'](['--config', 'unused', '--grid', grid, '--workdir', 'w', '--print']) == 0
  commands = capsys.readouterr().out.splitlines()
  assert [c.split(' --workdir ')[0] for c in commands] == [
      'python -m ssl_jax.main --config rotation_digits:runlocal,rotation=false',
      'python -m ssl_jax.main --config simclr_digits:runlocal']
  assert commands[0].endswith('--workdir w/config=rotation_digits_runlocal_rotation_false')
  # Bad axes, a bad baseline and the old override dialect: one line, exit 2, before anything runs.
  for argv in (['--grid', 'config:nope=1,2'], ['--grid', 'seed=0,1', '--baseline', 'seed=2'],
               ['--grid', 'seed=0,1', '--set', 'seed=3']):
    assert sweep['main'](['--config', 'simclr_digits:runlocal', '--workdir', 'w', *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err
