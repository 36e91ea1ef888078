"""ssl_jax.load_encoder: the trained weights come back, inference mode, any batch size, bad paths."""
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import ssl_jax
from ssl_jax import methods, train
from ssl_jax.data import augment
from ssl_jax.errors import UserError

import runs

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp('encoder') / 'run'
  train.train_and_evaluate(runs.tiny_synthetic(), path)
  return path


@pytest.fixture(scope='module')
def encoder(workdir):
  return ssl_jax.load_encoder(workdir)


def _images(n, size=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), np.uint8)


_saved_state = runs.final_state


def test_loads_the_trained_weights_and_embeds_like_the_model(workdir, encoder):
  saved = _saved_state(workdir)
  for got, want in ((encoder.params, saved['params']), (encoder.batch_stats, saved['batch_stats'])):
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got) == len(want)
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, b)
  assert encoder.config.method == 'simclr' and encoder.feature_dim == 64
  # The features of the loaded weights: an independent forward pass in inference mode.
  x = _images(5)
  model = nnx.merge(encoder.graphdef, encoder.params, encoder.batch_stats)
  want = model.features(jax.numpy.asarray(x, np.float32) / 255.0, train=False)
  np.testing.assert_allclose(encoder.embed(x), want, rtol=1e-5, atol=1e-5)
  # ... which are not those of the random initialisation the run started from.
  init = methods.get_method(encoder.config).build_model(encoder.config, in_channels=3,
                                                 rngs=nnx.Rngs(encoder.config.seed))
  assert np.abs(np.asarray(init.features(x / 255.0, train=False)) - encoder.embed(x)).max() > 1e-3


def test_a_step_directory_loads_that_step(workdir, encoder):
  step = ssl_jax.load_encoder(workdir / 'checkpoints' / '3')
  np.testing.assert_array_equal(step.embed(_images(2)), encoder.embed(_images(2)))


def test_inference_mode_any_batch_size_uint8_and_float(encoder):
  x = _images(300, seed=1)
  features = encoder.embed(x)
  assert features.shape == (300, 64) and features.dtype == np.float32 and np.isfinite(features).all()
  # An image's feature does not depend on the rest of its batch (BatchNorm running statistics).
  np.testing.assert_allclose(encoder.embed(x[7:8]), features[7:8], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(encoder.embed(x[:5]), features[:5], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(encoder.embed(x[:5] / 255.0), features[:5], rtol=1e-5, atol=1e-5)
  assert encoder.embed(x[:0]).shape == (0, 64)


def test_other_sizes_are_centre_cropped_and_resized(encoder):
  x = _images(3, size=24)
  resized = np.asarray(jax.vmap(lambda im: augment.center_crop_resize(im, 16))(x / 255.0))
  np.testing.assert_allclose(encoder.embed(x), encoder.embed(resized), rtol=1e-5, atol=1e-5)


def test_bad_paths_and_images_are_one_line_errors(tmp_path, workdir, encoder):
  (tmp_path / 'empty').mkdir()
  broken = tmp_path / 'broken'
  shutil.copytree(workdir / 'checkpoints' / '3', broken / 'checkpoints' / '3')
  shutil.rmtree(broken / 'checkpoints' / '3' / 'state' / 'd')
  for path, expected in ((tmp_path / 'nope', 'does not exist'), (tmp_path / 'empty', 'no checkpoint'),
                         (broken, 'unreadable')):
    with pytest.raises(UserError, match=expected) as info:
      ssl_jax.load_encoder(path)
    assert '\n' not in str(info.value)
  with pytest.raises(UserError, match='embed wants images'):
    encoder.embed(_images(2)[..., :1])


def test_import_is_cheap():
  script = ('import sys, ssl_jax; heavy = {"tensorflow", "orbax", "flax"} & {m.split(".")[0] for m in '
            'sys.modules}; assert not heavy, heavy; assert callable(ssl_jax.load_encoder); print("ok")')
  proc = subprocess.run([sys.executable, '-c', script], check=False, cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-2000:]
