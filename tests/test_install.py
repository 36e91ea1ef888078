"""ssl_jax as users get it: a wheel built from the checkout, installed into a fresh venv outside it, runs a
recipe by name and loads and exports the encoder from a script in another directory.

The fresh venv sees this environment's packages (a .pth file) for the dependencies, so the test takes seconds
rather than a download of TensorFlow and jaxlib; ssl_jax itself comes only from the wheel.
"""
import os
import pathlib
import site
import subprocess
import sys
import textwrap

import jax

ROOT = pathlib.Path(__file__).resolve().parent.parent

_SCRIPT = textwrap.dedent('''
    import pathlib, sys
    import numpy as np
    import ssl_jax
    from ssl_jax import export, recipes
    venv = pathlib.Path(sys.argv[1])
    assert venv in pathlib.Path(ssl_jax.__file__).resolve().parents, ssl_jax.__file__
    assert pathlib.Path(recipes.resolve('configs/simclr_digits.py')).is_relative_to(venv)
    encoder = ssl_jax.load_encoder(sys.argv[2])
    features = encoder.embed(np.zeros((3, 16, 16, 3), np.uint8))
    metadata = export.export(sys.argv[2], 'encoder.safetensors')
    print('features', features.shape, 'step', metadata['step'], 'version', metadata['ssl_jax_version'])
''')


def _run(args, cwd, env, timeout=600):
  proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, f'{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}'
  return proc


def test_wheel_installs_into_a_fresh_venv_and_runs_outside_the_checkout(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  # The suite's compilation cache: the run below compiles tests/runs.tiny_synthetic's step.
  env.update(JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', str(tmp_path / 'dist'), str(ROOT)],
       tmp_path, env)
  wheel, = (tmp_path / 'dist').glob('ssl_jax-*.whl')
  venv = tmp_path / 'venv'
  _run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], tmp_path, env)
  python = venv / 'bin' / 'python'
  venv_site = _run([str(python), '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'], tmp_path,
                   env).stdout.strip()
  pathlib.Path(venv_site, 'dependencies.pth').write_text('\n'.join(site.getsitepackages()) + '\n')
  # --ignore-installed: this environment's editable ssl_jax is visible but is neither used nor touched.
  _run([sys.executable, '-m', 'pip', '--python', str(python), 'install', '-q', '--no-deps', '--ignore-installed',
        str(wheel)], tmp_path, env)

  work = tmp_path / 'elsewhere'
  work.mkdir()
  run = _run([str(python), '-m', 'ssl_jax.main', '--config', 'simclr_cifar10:runlocal,synthetic',
              '--workdir', 'run', '--config.total_steps=3', '--config.log_every_steps=1',
              '--config.checkpoint_every_steps=3', '--config.data.synthetic_examples=64',
              '--config.data.synthetic_shape=(16, 16, 3)', '--config.eval.final=False'], work, env)
  assert 'results: steps=3' in run.stdout, run.stdout
  (tmp_path / 'scripts').mkdir()
  (tmp_path / 'scripts' / 'use.py').write_text(_SCRIPT)
  used = _run([str(python), 'use.py', str(venv), str(work / 'run')], tmp_path / 'scripts', env)
  assert 'features (3, 64) step 3 version' in used.stdout, used.stdout
  assert (tmp_path / 'scripts' / 'encoder.safetensors').stat().st_size > 0
