"""The trainer end to end: the quickstart's small variant, 1 vs 8 devices, exact resume, SIGTERM."""
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import simclr_cifar10, simclr_digits, supcon_cifar10
from ssl_jax import train
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


def test_one_device_equals_eight_devices(tmp_path, straight):
  # Ghost BatchNorm groups and the contrastive logits span devices on 8 devices and not on one. Compared at
  # step 3: float summation order differs, and later steps amplify that beyond any useful tolerance.
  train.train_and_evaluate(runs.shared_synthetic(), tmp_path / 'one', devices=jax.devices()[:1])
  np.testing.assert_allclose(runs.logged(tmp_path / 'one')[:3], runs.logged(straight)[:3], rtol=1e-5)
  one, eight = runs.checkpoints(tmp_path / 'one')[3], runs.checkpoints(straight)[3]
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


def test_stages_compile_one_step_per_size(tmp_path):
  c = _synthetic(steps=0)
  c.data.synthetic_shape = (24, 24, 3)
  # The second stage continues the first one's optimizer: a resolution change only (tests/test_s3l.py has more).
  c.stages = ({'image_size': 16, 'steps': 2}, {'image_size': 24, 'steps': 2, 'restart_optimizer': False})
  c.checkpoint_every_steps = 2
  train.train_and_evaluate(c, tmp_path / 'run')
  records = [json.loads(l) for l in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert [r['image_size'] for r in records] == [16, 16, 24, 24]
  assert np.isfinite([r['loss'] for r in records]).all()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  c = _synthetic(steps=6)
  c.checkpoint_every_steps = 1
  c.optimizer.base_lr = 1e30   # the parameters overflow within a few steps
  c.optimizer.warmup_epochs = 0.0
  with pytest.raises(NonFiniteLoss) as info:
    train.train_and_evaluate(c, tmp_path / 'run')
  bad_step = int(re.search(r'at step (\d+)', str(info.value)).group(1))
  kept = sorted(int(s) for s in os.listdir(tmp_path / 'run' / 'checkpoints'))
  assert kept == list(range(max(1, bad_step - 3), bad_step))  # the last keep_checkpoints=3 good steps
  assert all(np.isfinite(p).all() for p in _final_params(tmp_path / 'run'))


def test_online_probe_is_logged_and_costs_the_encoder_no_gradient(tmp_path):
  with_probe, without = _synthetic(steps=2), _synthetic(steps=2)
  without.probe.enabled = False
  train.train_and_evaluate(with_probe, tmp_path / 'with')
  train.train_and_evaluate(without, tmp_path / 'without')
  records = [json.loads(l) for l in open(tmp_path / 'with' / 'metrics.jsonl')]
  assert all(0.0 <= r['probe_top1'] <= 1.0 and np.isfinite(r['probe_loss']) for r in records)
  assert 'probe_top1' not in json.loads(open(tmp_path / 'without' / 'metrics.jsonl').readline())
  for a, b in zip(_final_params(tmp_path / 'with'), _final_params(tmp_path / 'without')):
    np.testing.assert_array_equal(a, b)  # the encoder and heads are bit-identical: the probe took nothing
