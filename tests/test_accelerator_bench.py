"""launch/accelerator_bench.sh at toy sizes (--tiny): the parts of the accelerator table run through the code an
accelerator runs, without TensorFlow, and the table comes back even when the budget runs out. The suite runs the
parts that cover each kind of measurement (steps, the PyTorch child and its ratio, the pipeline) to keep its
time; `launch/accelerator_bench.sh DIR --tiny` runs them all (about 4 CPU-minutes)."""
import json
import os
import pathlib
import subprocess
import sys

import jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
PARTS = 'pytorch,resnet18,pytorch ratio,pipeline'
MEASURED = ('SimCLR R18 float32', 'SimCLR R18 bfloat16', 'pipeline')


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
  proc = _bench(tmp_path, '--steps', '1', '--budget_s', '3000', '--parts', PARTS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (tmp_path / 'out' / 'accelerator.md').read_text()
  results = json.loads((tmp_path / 'out' / 'accelerator.json').read_text())
  assert proc.stdout.endswith(table) and table.startswith('Accelerator table, ')
  for part in MEASURED:
    assert results[part]['step_s'] > 0 and results[part]['views_per_s'] > 0, part
  assert 'failed' not in table, table
  # Every comparison has its row: the pipeline's share, PyTorch's ratio.
  assert '| in-memory uint8 source end to end' in table
  assert 0 < results['pipeline']['e2e_ratio'] and results['SimCLR R18 float32']['flops_per_step'] > 0
  assert (results.get('pytorch', {}).get('views_per_s', 0) > 0 and '| SimCLR R18 bf16: ssl_jax / PyTorch' in table
          or 'PyTorch: skipped' in table)


def test_a_spent_budget_skips_parts_with_a_note_and_still_writes_the_table(tmp_path):
  proc = _bench(tmp_path, '--budget_s', '1')
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (tmp_path / 'out' / 'accelerator.md').read_text()
  assert table.count(': skipped, ') >= 10 and '| part |' in table and proc.stdout.endswith(table)
  proc = _bench(tmp_path, '--parts', 'resnet18,nope')
  assert proc.returncode == 2 and proc.stderr.startswith('error: --parts: unknown nope')
