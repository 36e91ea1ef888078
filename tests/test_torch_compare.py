"""launch/torch_compare.py's bad-input paths, with PyTorch made unimportable (CI has no PyTorch)."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RECIPE = 'configs/simclr_cifar10.py:synthetic'


def _compare(tmp_path, *args):
  """Runs the script with a `torch` module that raises ImportError first on the path."""
  (tmp_path / 'torch.py').write_text("raise ImportError('PyTorch blocked by the test')\n")
  path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get('PYTHONPATH', '')) if p)
  return subprocess.run([sys.executable, 'launch/torch_compare.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=60, env={**os.environ, 'PYTHONPATH': path})


def test_without_pytorch_it_says_how_to_install_it_and_runs_nothing(tmp_path):
  proc = _compare(tmp_path, '--config', RECIPE, '--steps', '1', '--out', str(tmp_path / 'out.json'))
  assert proc.returncode == 2 and proc.stdout == ''
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: PyTorch is not installed'), proc.stderr
  assert not (tmp_path / 'out.json').exists()  # the JAX side never started


@pytest.mark.parametrize('args, message', [
    (['--steps', '0'], '--steps=0 must be at least 1'),
    (['--steps', 'x'], 'invalid int value'),  # argparse's own errors too: no usage block
    (['--config.method=byol'], "method 'byol' is not compared"),
])
def test_bad_input_is_one_line_and_exit_2_before_pytorch_is_needed(tmp_path, args, message):
  proc = _compare(tmp_path, '--config', RECIPE, *args)
  lines = proc.stderr.splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  assert message in lines[0]
