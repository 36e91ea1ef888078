"""`python -m ssl_jax.benchmark` on the quickstart's small variant (embedded digits): one recipe, the ratio
against a second, the PyTorch option's refusals."""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from configs import simclr_digits
from ssl_jax import benchmark

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIGITS = 'configs/simclr_digits.py:runlocal'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """Where the embedded digits are prepared once for this module's runs."""
  return str(tmp_path_factory.mktemp('tfds'))


def test_synthetic_data_take_the_recipes_image_shape():
  c = simclr_digits.get_config('runlocal')
  fake = benchmark.synthetic_like(c)
  assert fake.data.name == 'synthetic' and tuple(fake.data.synthetic_shape) == (24, 24, 1)
  assert fake.data.synthetic_examples == c.batch_size and c.data.name == 'digits'  # the recipe is untouched
  c.data.name, c.data.image_size = 'imagenet2012', 64  # variable size: the views' size, cropped on the device
  fake = benchmark.synthetic_like(c)
  assert tuple(fake.data.synthetic_shape) == (64, 64, 3) and fake.data.synthetic_classes == 1000


def test_end_to_end_reports_every_measurement(tmp_path, capsys, data_dir):
  out = tmp_path / 'bench.json'
  code = benchmark.main(['--config', DIGITS, f'--config.data.data_dir={data_dir}', '--mode', 'end_to_end',
                         '--steps', '2', '--peak_tflops', '0.5', '--out', str(out)])
  assert code == 0
  saved = json.loads(out.read_text())
  r = saved['runs']['config']
  for key in ('compile_s', 'step_s', 'views_per_s', 'peak_bytes', 'temp_bytes', 'flops_per_step',
              'tflops_per_s', 'peak_fraction', 'pipeline_images_per_s', 'e2e_views_per_s', 'e2e_ratio'):
    assert r[key] > 0, key
  assert r['views_per_example'] == 2 and r['batch_size'] == 32 and r['devices'] == 8
  assert r['views_per_s'] == pytest.approx(64 / r['step_s'])
  assert r['peak_fraction'] == pytest.approx(r['tflops_per_s'] / 8 / 0.5)
  # SimCLR's step is at least the encoder's forward and backward convolutions: far above 1 MFLOP per view.
  assert r['flops_per_step'] > 64 * 1e6
  printed = capsys.readouterr().out  # tfds may print its own lines first
  assert printed.endswith(saved['markdown'])
  header, _, row = saved['markdown'].splitlines()[:3]
  assert row.count('|') == header.count('|') and row.startswith('| config | `configs/simclr_digits.py')
  assert '—' not in row  # every cell measured


def test_two_recipe_comparison_of_a_recipe_with_itself(tmp_path, data_dir):
  # Each recipe is compiled by `benchmark.build` (the trainer's `train.setup`): the same program twice, so the
  # same memory; a bigger batch needs more temporaries.
  out = tmp_path / 'ratio.json'
  data = [f'--config.data.data_dir={data_dir}', f'--baseline.data.data_dir={data_dir}']
  assert benchmark.main(['--config', DIGITS, '--baseline', DIGITS, *data, '--steps', '1', '--out', str(out)]) == 0
  r = json.loads(out.read_text())
  assert r['ratio']['peak_bytes'] == 1.0 and r['ratio']['temp_bytes'] == 1.0 and r['ratio']['step_s'] > 0
  assert r['runs']['baseline']['views_per_example'] == 2 and r['runs']['baseline']['devices'] == 8
  assert r['markdown'].splitlines()[3].startswith('| baseline |') and 'config / baseline: step_s' in r['markdown']
  assert benchmark.main(['--config', DIGITS, '--baseline', DIGITS, *data, '--config.batch_size=64',
                         '--steps', '0', '--out', str(out)]) == 0
  r = json.loads(out.read_text())
  assert r['ratio']['temp_bytes'] > 1.5 and math.isnan(r['runs']['config']['step_s'])  # --steps 0: none ran


def test_pipeline_mode_reads_the_host_pipeline_only(tmp_path, data_dir):
  out = tmp_path / 'bench.json'
  assert benchmark.main(['--config', DIGITS, f'--config.data.data_dir={data_dir}', '--mode', 'pipeline',
                         '--steps', '3', '--out', str(out)]) == 0
  r = json.loads(out.read_text())
  assert r['runs']['config']['pipeline_images_per_s'] > 0 and 'step_s' not in r['runs']['config']
  assert r['markdown'].splitlines()[2].count('—') == 8


@pytest.mark.parametrize('args, message', [
    (['--mode', 'fast'], '--mode=fast is unknown'),
    (['--steps', '-1'], 'must be >= 0'),
    (['--mode', 'pipeline', '--steps', '0'], 'at least 1 in pipeline mode'),
    (['--steps', 'x'], 'invalid int value'),  # argparse's own errors too: one line, no usage block
    (['--config.model.nonexistent=3'], 'no field'),
    (['--baseline.batch_size=8'], 'unknown argument'),  # no --baseline: its overrides are refused
    (['--verbose'], 'unknown argument'),
    (['--set', 'batch_size=8'], 'unknown argument'),  # the old dialect
    (['--torch', '--config.method=byol'], "method 'byol' is not compared"),
    (['--torch', '--baseline', DIGITS], '--torch compares one recipe'),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, args, message):
  assert benchmark.main(['--config', DIGITS, *args]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count('\n') == 1 and err.startswith('error: ')


def test_without_pytorch_the_torch_option_says_how_to_install_it_and_runs_nothing(tmp_path):
  (tmp_path / 'torch.py').write_text("raise ImportError('PyTorch blocked by the test')\n")
  path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get('PYTHONPATH', '')) if p)
  proc = subprocess.run([sys.executable, '-m', 'ssl_jax.benchmark', '--config', 'simclr_cifar10:synthetic',
                         '--torch', '--steps', '1', '--out', str(tmp_path / 'out.json')], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, env={**os.environ, 'PYTHONPATH': path})
  assert proc.returncode == 2 and proc.stdout == ''
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: PyTorch is not installed'), proc.stderr
  assert not (tmp_path / 'out.json').exists()  # the JAX side never started


def _xla_flags_after_import(flags):
  code = ('import os, ssl_jax, jax, jax.numpy as jnp\n'
          'hlo = jax.jit(lambda x: jnp.exp(x).sum()).lower(jnp.ones((64, 64))).compile().as_text()\n'
          "print(os.environ['XLA_FLAGS'] + '|' + str('ynn_fusion' in hlo))")
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env={**os.environ, 'XLA_FLAGS': flags}, check=True)
  return proc.stdout.strip().split('|')


def test_opt_in_cpu_flags_turn_ynnpack_fusions_off_unless_the_user_set_them(monkeypatch):
  from ssl_jax import xla_defaults  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv('SSL_JAX_XLA_DEFAULTS', raising=False)
  assert _xla_flags_after_import('') == ['', 'True']  # jaxlib's own defaults unless asked
  monkeypatch.setenv('SSL_JAX_XLA_DEFAULTS', '1')
  assert _xla_flags_after_import('') == ['--xla_cpu_experimental_ynn_fusion_type=', 'False']
  users = '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE'
  assert _xla_flags_after_import(users) == [users, 'True']  # the user's value stands: YNNPACK reduces
  assert xla_defaults._known_to_jaxlib({'xla_no_such_flag_in_any_jaxlib'}) == set()
