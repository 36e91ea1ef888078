"""The benchmark harness `python -m ssl_jax.bench` on the quickstart's small variant (embedded digits)."""
import json
import math

import pytest

from configs import simclr_digits
from ssl_jax import bench, benchmark

DIGITS = 'configs/simclr_digits.py:runlocal'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """Where the embedded digits are prepared once for this module's runs."""
  return f'--config.data.data_dir={tmp_path_factory.mktemp("tfds")}'


def test_synthetic_data_take_the_recipes_image_shape():
  c = simclr_digits.get_config('runlocal')
  fake = bench.synthetic_like(c)
  assert fake.data.name == 'synthetic' and tuple(fake.data.synthetic_shape) == (24, 24, 1)
  assert fake.data.synthetic_examples == c.batch_size and c.data.name == 'digits'  # the recipe is untouched
  c.data.name, c.data.image_size = 'imagenet2012', 64  # variable size: the views' size, cropped on the device
  fake = bench.synthetic_like(c)
  assert tuple(fake.data.synthetic_shape) == (64, 64, 3) and fake.data.synthetic_classes == 1000


def test_end_to_end_reports_every_measurement(tmp_path, capsys, data_dir):
  out = tmp_path / 'bench.json'
  code = bench.main(['--config', DIGITS, data_dir, '--mode', 'end_to_end',
                     '--steps', '2', '--peak_tflops', '0.5', '--out', str(out)])
  assert code == 0
  r = json.loads(out.read_text())
  for key in ('compile_s', 'step_s', 'views_per_s', 'peak_bytes', 'temp_bytes', 'flops_per_step',
              'tflops_per_s', 'peak_fraction', 'pipeline_images_per_s', 'e2e_views_per_s', 'e2e_ratio'):
    assert r[key] > 0, key
  assert r['views_per_example'] == 2 and r['batch_size'] == 32 and r['devices'] == 8
  assert r['views_per_s'] == pytest.approx(64 / r['step_s'])
  assert r['peak_fraction'] == pytest.approx(r['tflops_per_s'] / 8 / 0.5)
  # SimCLR's step is at least the encoder's forward and backward convolutions: far above 1 MFLOP per view.
  assert r['flops_per_step'] > 64 * 1e6
  printed = capsys.readouterr().out  # tfds may print its own lines first
  assert printed.endswith(f'{bench.HEADER}\n{r["markdown_row"]}\n')
  assert r['markdown_row'].count('|') == bench.HEADER.splitlines()[0].count('|')
  assert '—' not in r['markdown_row']  # every cell measured


def test_two_recipe_comparison_of_a_recipe_with_itself(tmp_path, data_dir):
  # `ssl_jax.benchmark` compiles each recipe with `bench.compile_step`: the same program twice, so the same
  # memory; a bigger batch needs more temporaries.
  out = tmp_path / 'ratio.json'
  set_data = data_dir[len('--config.'):]
  assert benchmark.main(['--baseline', DIGITS, '--candidate', DIGITS, '--set', set_data,
                         '--steps', '1', '--out', str(out)]) == 0
  r = json.loads(out.read_text())
  assert r['ratio']['peak_bytes'] == 1.0 and r['ratio']['temp_bytes'] == 1.0 and r['ratio']['step_s'] > 0
  assert r['baseline']['views'] == 2 and r['baseline']['devices'] == 8
  assert benchmark.main(['--baseline', DIGITS, '--candidate', DIGITS, '--set', set_data,
                         '--candidate_set', 'batch_size=64', '--steps', '0', '--out', str(out)]) == 0
  r = json.loads(out.read_text())
  assert r['ratio']['temp_bytes'] > 1.5 and math.isnan(r['candidate']['step_s'])  # --steps 0: none ran


def test_pipeline_mode_reads_the_host_pipeline_only(tmp_path, data_dir):
  out = tmp_path / 'bench.json'
  assert bench.main(['--config', DIGITS, data_dir, '--mode', 'pipeline',
                     '--steps', '3', '--out', str(out)]) == 0
  r = json.loads(out.read_text())
  assert r['pipeline_images_per_s'] > 0 and 'step_s' not in r and r['markdown_row'].count('—') == 8


@pytest.mark.parametrize('args, message', [
    (['--mode', 'fast'], '--mode=fast is unknown'),
    (['--steps', '0'], 'at least 1'),
    (['--config.model.nonexistent=3'], 'no field'),
    (['--verbose'], 'unknown argument'),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, args, message):
  assert bench.main(['--config', DIGITS, *args]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count('\n') == 1
