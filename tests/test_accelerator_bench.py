"""launch/accelerator_bench.sh at toy sizes (--tiny): every part of the accelerator table runs through the code
an accelerator runs, without TensorFlow, and the table comes back even when the budget runs out."""
import json
import os
import pathlib
import subprocess
import sys

import jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
MEASURED = ('SimCLR R18 float32', 'SimCLR R18 bfloat16', 'ResNet-50 224 px',
            'SelfCon / SupCon (R50, 224 px): candidate', 'SelfCon / SupCon (R50, 224 px): baseline',
            'S3L 112 px / 224 px (R50): candidate', 'batch fusion on / off (SimCLR R18): candidate',
            'rotation add-on / SimCLR (R18): candidate', 'RepMix / SimCLR (R18): baseline', 'pipeline')


def _bench(tmp_path, *args):
  """The script, with TensorFlow and tfds unimportable, sharing the suite's compilation cache."""
  blocked = tmp_path / 'blocked'
  blocked.mkdir(exist_ok=True)
  for name in ('tensorflow', 'tensorflow_datasets'):
    (blocked / f'{name}.py').write_text(f"raise ImportError('{name} blocked by the test')\n")
  # One device, as on the accelerator (the suite's 8 fake CPU devices would only slow the compiles down).
  xla_flags = ' '.join(f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f)
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(blocked), os.environ.get('PYTHONPATH')])),
         'JAX_COMPILATION_CACHE_DIR': jax.config.jax_compilation_cache_dir, 'PYTHON': sys.executable,
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
         'XLA_FLAGS': xla_flags}
  return subprocess.run(['bash', 'launch/accelerator_bench.sh', str(tmp_path / 'out'), '--tiny', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_every_part_measures_at_toy_sizes_without_tensorflow(tmp_path):
  proc = _bench(tmp_path, '--steps', '1', '--budget_s', '3000')
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (tmp_path / 'out' / 'accelerator.md').read_text()
  results = json.loads((tmp_path / 'out' / 'accelerator.json').read_text())
  assert proc.stdout.endswith(table) and table.startswith('Accelerator table, ')
  for part in MEASURED:
    assert results[part]['step_s'] > 0 and results[part]['views_per_s'] > 0, part
  assert 'failed' not in table, table
  # Every comparison has its row: the four step-cost ratios, SelfCon's memory ratio, the pipeline's share.
  for name in ('SelfCon / SupCon', 'S3L 112 px / 224 px', 'batch fusion on / off', 'rotation add-on / SimCLR',
               'RepMix / SimCLR', 'in-memory uint8 source end to end'):
    assert f'| {name}' in table, name
  assert 0 < results['pipeline']['e2e_ratio'] and results['SimCLR R18 float32']['flops_per_step'] > 0
  assert 'ViT-S/16' in table  # a row, or the note that this ssl_jax has no vit_small
  assert results.get('pytorch', {}).get('views_per_s', 0) > 0 or 'PyTorch: skipped' in table


def test_a_spent_budget_skips_parts_with_a_note_and_still_writes_the_table(tmp_path):
  proc = _bench(tmp_path, '--budget_s', '1')
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (tmp_path / 'out' / 'accelerator.md').read_text()
  assert table.count(': skipped, ') >= 10 and '| part |' in table and proc.stdout.endswith(table)
