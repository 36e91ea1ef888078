"""The trainer end to end: the quickstart's small variant, 1 vs 8 devices, exact resume (SIGTERM, kill -9)."""
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import simclr_cifar10, simclr_digits, supcon_cifar10
from ssl_jax import checkpoint, train
from ssl_jax.errors import NonFiniteLoss

import runs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _synthetic(steps=3):
  return runs.tiny_synthetic(steps=steps)


def _final_params(workdir):
  return jax.tree.leaves(runs.final_state(workdir)['params'])


def test_quickstart_runlocal_end_to_end(tmp_path):
  c = simclr_digits.get_config('runlocal')
  c.data.data_dir = str(tmp_path / 'tfds')
  results = train.train_and_evaluate(c, tmp_path / 'run')
  for key in ('knn_top1', 'linear_top1', 'random_init_knn_top1', 'random_init_linear_top1'):
    assert 0.0 <= results[key] <= 1.0
  saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert saved['linear_top1'] == results['linear_top1'] and 'inference mode' in saved['linear_protocol']
  assert saved['knn_top1'] == saved['knn_top1_k20'] and 0.0 <= saved['knn_top1_k200'] <= 1.0
  assert 'k=20' in saved['knn_protocol'] and '1497 labelled images' in saved['knn_protocol']
  records = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [2, 4, 6]
  assert all({'loss', 'lr', 'images_per_sec'} <= set(r) and np.isfinite(r['loss']) for r in records)
  assert (tmp_path / 'run' / 'curves.png').stat().st_size > 1000
  assert any((tmp_path / 'run' / 'tensorboard').iterdir())
  assert sorted(os.listdir(tmp_path / 'run' / 'checkpoints')) == ['3', '6']


@pytest.mark.parametrize('get_config', [simclr_cifar10.get_config, supcon_cifar10.get_config])
def test_cifar_runlocal_configs_on_mock_data(tmp_path, get_config):
  c = get_config('runlocal')
  with tfds.testing.mock_data(num_examples=64, data_dir=str(tmp_path / 'tfds')):
    results = train.train_and_evaluate(c, tmp_path / 'run')
  assert np.isfinite(runs.logged(tmp_path / 'run')).all()
  assert 0.0 <= results['knn_top1'] <= 1.0


# The tests below share one compiled step (`runs.shared_synthetic` on 8 devices): the persistent compilation
# cache serves every run after the first.
@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """An uninterrupted `runs.shared_synthetic()` run on 8 devices, probe on: what the tests below compare with."""
  workdir = tmp_path_factory.mktemp('straight')
  train.train_and_evaluate(runs.shared_synthetic(), workdir)
  return workdir


@pytest.fixture(scope='module')
def one_device(tmp_path_factory):
  """The same run on one device (the crash test compares with it: its subprocesses start faster on one)."""
  workdir = tmp_path_factory.mktemp('one_device')
  train.train_and_evaluate(runs.shared_synthetic(), workdir, devices=jax.devices()[:1])
  return workdir


def test_one_device_equals_eight_devices(one_device, straight):
  # Ghost BatchNorm groups and the contrastive logits span devices on 8 devices and not on one. Compared at
  # step 3: float summation order differs, and later steps amplify that beyond any useful tolerance.
  np.testing.assert_allclose(runs.logged(one_device)[:3], runs.logged(straight)[:3], rtol=1e-5)
  one, eight = runs.checkpoints(one_device)[3], runs.checkpoints(straight)[3]
  for a, b in zip(jax.tree.leaves(one['params']), jax.tree.leaves(eight['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sigterm_saves_and_resume_is_exact(tmp_path, monkeypatch, straight):
  c = runs.shared_synthetic()
  runs.preempt_after_step_3(c, tmp_path / 'resumed', monkeypatch)
  assert sorted(os.listdir(tmp_path / 'resumed' / 'checkpoints')) == ['3']
  train.train_and_evaluate(c, tmp_path / 'resumed')

  assert runs.logged(tmp_path / 'resumed') == runs.logged(straight)
  for a, b in zip(_final_params(straight), _final_params(tmp_path / 'resumed')):
    np.testing.assert_array_equal(a, b)  # bitwise


def test_online_probe_is_logged_and_costs_the_encoder_no_gradient(tmp_path, straight):
  without = runs.shared_synthetic()
  without.probe.enabled = False
  train.train_and_evaluate(without, tmp_path / 'without')
  records = [json.loads(l) for l in open(straight / 'metrics.jsonl')]
  assert all(0.0 <= r['probe_top1'] <= 1.0 and np.isfinite(r['probe_loss']) for r in records)
  assert 'probe_top1' not in json.loads(open(tmp_path / 'without' / 'metrics.jsonl').readline())
  for a, b in zip(_final_params(straight), _final_params(tmp_path / 'without')):
    np.testing.assert_array_equal(a, b)  # the encoder and heads are bit-identical: the probe took nothing


def test_trains_without_tensorflow(tmp_path):
  # Accelerator images often lack TensorFlow: a run from synthetic data must not need it. One device, the
  # shared config and the persistent cache: the step compiled by the 1-device test above is reused.
  script = f"""
import sys
sys.modules['tensorflow'] = None  # any import of TensorFlow now fails
sys.path.insert(0, 'tests')
from ssl_jax import train
import runs
train.train_and_evaluate(runs.shared_synthetic(), {str(tmp_path / 'run')!r})
assert 'tensorflow' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]
print('ok')
"""
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu',
         'JAX_COMPILATION_CACHE_DIR': jax.config.jax_compilation_cache_dir,
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-2000:]


def test_stages_compile_one_step_per_size(tmp_path, caplog):
  c = _synthetic(steps=0)
  c.data.synthetic_shape = (24, 24, 3)
  # The second stage continues the first one's optimizer: a resolution change only (tests/test_s3l.py has more).
  c.stages = ({'image_size': 16, 'steps': 2}, {'image_size': 24, 'steps': 2, 'restart_optimizer': False})
  c.checkpoint_every_steps = 2
  with caplog.at_level(logging.DEBUG, logger='jax'):  # jax logs every lowering, cache hit or not, at DEBUG
    train.train_and_evaluate(c, tmp_path / 'run')
  records = [json.loads(l) for l in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert [r['image_size'] for r in records] == [16, 16, 24, 24]
  # Traced once per resolution: neither a checkpoint save, a fetch of the metrics, nor the donated state that
  # the step returns makes jit trace it again.
  lowered = [r for r in caplog.records if r.getMessage().startswith('Compiling jit(train_step)')]
  assert len(lowered) == 2, [r.getMessage()[:200] for r in lowered]
  assert np.isfinite([r['loss'] for r in records]).all()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  # The default on_nan='stop'. The parameters turn NaN before the 5th step (the 1-device step of `one_device`,
  # unchanged); tests/test_reliability.py has the other policies.
  runs.poison_params_before(monkeypatch, steps=(4,))
  c = runs.shared_synthetic()
  c.checkpoint_every_steps = 1
  with pytest.raises(NonFiniteLoss, match='at step 5; the last good checkpoint is kept') as info:
    train.train_and_evaluate(c, tmp_path / 'run', devices=jax.devices()[:1])
  assert '\n' not in str(info.value) and 'on_nan' in str(info.value)
  kept = sorted(int(s) for s in os.listdir(tmp_path / 'run' / 'checkpoints'))
  assert kept == [2, 3, 4]  # the last keep_checkpoints=3 good steps
  assert all(np.isfinite(p).all() for p in _final_params(tmp_path / 'run'))
  assert json.loads(open(tmp_path / 'run' / 'metrics.jsonl').readlines()[-1])['event'] == 'nan_stop'


def _numpy_checkpoint(workdir, step, like):
  # Restored as numpy: a 2-process checkpoint names devices 0-3 and 2048-2051, which this process lacks.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')) as mgr:
    types = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), like)
    args = ocp.args.Composite(state=ocp.args.PyTreeRestore(item=like, restore_args=types))
    return mgr.restore(step, args=args)['state']


# Each process: from the second step on, every step takes 1.5 s longer (jax's preemption service needs about
# half a second to agree on a step, more on a busy machine); process 1 receives SIGTERM while it runs step 3.
_TWO_PROCESS_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, 'tests')
import jax, runs
from ssl_jax import train
from ssl_jax.errors import Preempted
make = train.make_train_step
def make_slow(*args, **kwargs):
  step_fn, calls = make(*args, **kwargs), []
  def slow(state, batch):
    calls.append(None)
    if len(calls) > 1:
      time.sleep(1.5)
    if len(calls) == 3 and jax.process_index() == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return step_fn(state, batch)
  return slow
train.make_train_step = make_slow
try:
  train.train_and_evaluate(runs.shared_synthetic(keep_checkpoints=10), sys.argv[1])
except Preempted as e:
  print('PREEMPTED', e)
  sys.exit(143)
"""


def test_two_processes_equal_one_process_and_stop_together(tmp_path, straight):
  # jax.distributed on localhost: 2 CPU processes x 4 devices form the 8-device mesh of `straight`; each reads
  # its half of every global batch, the collectives cross processes (gloo). SIGTERM reaches one process only:
  # both must save at the same step and stop. The run is then finished by this process on its 8 devices.
  # No persistent compilation cache (JAX_* variables are not passed on): with one, the processes drifted apart
  # and gloo, which waits only 30 s for a late peer, failed the first collective.
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  procs = []
  inherited = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}  # e.g. a compilation cache
  for i in range(2):
    env = {**inherited, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4', 'JAX_PLATFORMS': 'cpu',
           'SSL_JAX_DISTRIBUTED': '1', 'JAX_COORDINATOR_ADDRESS': f'localhost:{port}',
           'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': str(i)}
    with open(tmp_path / f'process{i}.log', 'w') as log:  # not a pipe: a full one would stall the process
      procs.append(subprocess.Popen([sys.executable, '-c', _TWO_PROCESS_SCRIPT, str(tmp_path / 'run')],
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  try:
    codes = [p.wait(timeout=180) for p in procs]
  finally:
    for p in procs:
      p.kill()
  logs = [(tmp_path / f'process{i}.log').read_text() for i in range(2)]
  assert codes == [143, 143], '\n'.join(log[-2000:] for log in logs)
  stops = {line for log in logs for line in log.splitlines() if line.startswith('PREEMPTED')}
  assert len(stops) == 1, stops  # the same step on both processes
  stopped_at = max(int(d) for d in os.listdir(tmp_path / 'run' / 'checkpoints'))
  assert 3 <= stopped_at < 6 and f'after step {stopped_at};' in stops.pop()
  assert len(runs.logged(tmp_path / 'run')) == stopped_at  # only process 0 writes metrics

  train.train_and_evaluate(runs.shared_synthetic(keep_checkpoints=10), tmp_path / 'run')
  losses, reference = runs.logged(tmp_path / 'run'), runs.logged(straight)
  # Cross-process sums run in another order than in-process ones (not bitwise); step 3 as in 1 vs 8 devices.
  np.testing.assert_allclose(losses[:3], reference[:3], rtol=1e-5)
  np.testing.assert_allclose(losses, reference, rtol=1e-3)
  one = runs.checkpoints(straight)[3]
  two = _numpy_checkpoint(tmp_path / 'run', 3, one)
  for a, b in zip(jax.tree.leaves(two['params']), jax.tree.leaves(one['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


_CRASH_SCRIPT = """
import asyncio, os, sys
sys.path[:0] = ['.', 'tests']
if os.environ.get('SLOW_COMMIT'):
  from orbax.checkpoint._src.path import atomicity
  commit = atomicity.AtomicRenameTemporaryPath.finalize
  async def slow_commit(self, *args, **kwargs):
    await asyncio.sleep(30)  # the checkpoint stays '<step>.orbax-checkpoint-tmp' until the test kills us
    return await commit(self, *args, **kwargs)
  atomicity.AtomicRenameTemporaryPath.finalize = slow_commit
import jax
import runs
from ssl_jax import train
config = runs.shared_synthetic()
config.checkpoint_every_steps = 1
train.train_and_evaluate(config, sys.argv[1], devices=jax.devices()[:1])
"""


def _launch_and_kill(workdir, env, kill_when, delay_s=0.0, poll_s=0.02):
  """Starts a training subprocess, kills it (SIGKILL) `delay_s` after `kill_when()` holds: (status, stderr)."""
  proc = subprocess.Popen([sys.executable, '-c', _CRASH_SCRIPT, str(workdir)], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 240
    while proc.poll() is None and not kill_when() and time.monotonic() < deadline:
      time.sleep(poll_s)
    time.sleep(delay_s)
    proc.kill()  # SIGKILL: no handler, no clean-up
    stderr = proc.communicate(timeout=60)[1]
  finally:
    proc.kill()
  return proc.returncode, stderr


def test_kill_9_at_random_moments_then_resume_is_exact(tmp_path, one_device):
  """Three SIGKILLs, then a run to the end: the same losses and final params as `one_device`, bitwise.

  Each launch is a subprocess running `runs.shared_synthetic()` on one device with a checkpoint after every
  step (the compiled step comes from the persistent cache). The first launch is killed for sure during a
  save: its orbax commit (the rename of '<step>.orbax-checkpoint-tmp' to '<step>') is held back, and the kill
  comes as soon as that half-written directory exists. The next two are killed a seeded random 0-0.3 s after
  their first new complete checkpoint, at whatever they are doing then (a step, logging, saving, deleting an
  old checkpoint). No launch may restore the half-written checkpoint, and the workdir lock each leaves behind
  must not stop the next one.
  """
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'JAX_COMPILATION_CACHE_DIR': jax.config.jax_compilation_cache_dir,
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
  workdir, rng = tmp_path / 'run', np.random.default_rng(0)
  ckpt_dir = workdir / 'checkpoints'
  complete = lambda: {int(p.name) for p in ckpt_dir.glob('*')
                      if p.name.isdigit() and checkpoint.is_complete(p)}
  half_written = lambda: list(ckpt_dir.glob('*.orbax-checkpoint-tmp*'))

  code, stderr = _launch_and_kill(workdir, {**env, 'SLOW_COMMIT': '1'}, lambda: bool(half_written()))
  assert code == -signal.SIGKILL and half_written() and not complete(), stderr[-2000:]
  for _ in range(2):
    before = max(complete() | {0})
    code, stderr = _launch_and_kill(workdir, env, lambda: max(complete() | {0}) > before,
                                    delay_s=rng.uniform(0.0, 0.3))
    assert code == -signal.SIGKILL, stderr[-2000:]
  assert (workdir / 'run.lock').exists()  # left by the killed launch

  proc = subprocess.run([sys.executable, '-c', _CRASH_SCRIPT, str(workdir)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert not half_written() and not (workdir / 'run.lock').exists()
  assert runs.logged(workdir) == runs.logged(one_device)
  for a, b in zip(_final_params(one_device), _final_params(workdir)):
    np.testing.assert_array_equal(a, b)  # bitwise
