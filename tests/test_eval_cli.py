"""The offline linear evaluation and fine-tuning CLIs, on a tiny run pretrained on easy in-memory data."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import ssl_jax
from configs import simclr_cifar10
from ssl_jax import data, report, train
from ssl_jax.encoder import build_from_checkpoint
from ssl_jax.errors import UserError
from ssl_jax.evaluate import finetune_cli as finetune, linear_cli as linear

import runs

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLASSES = 4


def _easy_split(n, seed):
  """Class c: a 16-px image of brightness about 40 + 60c with pixel noise; any encoder can tell them apart."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % CLASSES
  images = 40 + 60 * labels[:, None, None, None] + rng.integers(-20, 21, (n, 16, 16, 3))
  return images.astype(np.uint8), labels


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  for split, n, seed in (('train', 128, 0), ('test', 64, 1)):
    data.register_memory_dataset('easy_brightness', *_easy_split(n, seed), split=split, num_classes=CLASSES)
  c = simclr_cifar10.get_config('runlocal')
  c.data.name = 'easy_brightness'
  c.total_steps, c.log_every_steps, c.checkpoint_every_steps = 2, 1, 2
  c.eval.final = False
  path = tmp_path_factory.mktemp('eval') / 'run'
  train.train_and_evaluate(c, path)
  return path


def _leaves(tree):
  return [np.array(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize('optimizer,lr', [('sgd', 0.1), ('lars', 1.0), ('adamw', 0.01)])
def test_classifier_separates_separable_features(optimizer, lr):
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 3, (5, 16))
  labels = np.arange(400) % 5
  feats = centres[labels] + rng.normal(0, 0.5, (400, 16))
  cfg = linear.default_config()
  cfg.update(epochs=20, batch_size=64, optimizer=optimizer, lr=lr)
  scores = linear.train_classifier(feats[:300], labels[:300], feats[300:], labels[300:], num_classes=5,
                                   cfg=cfg)
  assert scores['best_top1'] >= 0.98 and scores['top5'] == 1.0
  assert len(scores['top1_per_epoch']) == 20 and scores['best_top1'] == max(scores['top1_per_epoch'])


def test_linear_eval_keeps_the_encoder_frozen_and_writes_results(workdir):
  encoder = ssl_jax.load_encoder(workdir)
  before = _leaves((encoder.params, encoder.batch_stats))
  cfg = linear.default_config()
  cfg.update(epochs=3, protocol='augmented', optimizer='lars', lr=0.5, embed_batch_size=64)
  results = linear.evaluate_linear(workdir, cfg, encoder=encoder)
  for a, b in zip(before, _leaves((encoder.params, encoder.batch_stats)), strict=True):
    np.testing.assert_array_equal(a, b)
  cfg.update(protocol='frozen_features', optimizer='sgd', lr=0.1, epochs=10)
  frozen = linear.evaluate_linear(workdir, cfg, encoder=encoder)
  saved = json.loads((workdir / 'results.json').read_text())
  assert saved['steps'] == 2  # the trainer's results are kept
  assert saved['linear_eval']['protocol'].startswith('frozen_features') and 'augmented' in results['protocol']
  for key in ('top1', 'top5', 'best_top1', 'best_top5', 'best_epoch'):
    assert saved['linear_eval'][key] == frozen[key]
  assert frozen['best_top1'] >= 0.9 and results['best_top1'] > 1 / CLASSES


def test_finetune_learns_and_frozen_stages_do_not_change(workdir):
  run_config, backbone = build_from_checkpoint(workdir)
  stem_and_first = lambda m: _leaves((nnx.state(m.encoder.stem_conv), nnx.state(m.encoder.stem_bn),
                                      nnx.state(m.encoder.stages[0])))
  before, later = stem_and_first(backbone), _leaves(nnx.state(backbone.encoder.stages[1]))
  cfg = finetune.default_config()
  cfg.update(epochs=3, batch_size=32, eval_batch_size=64, frozen_stages=1, mixup_alpha=0.2, lr=0.1)
  scores, model = finetune.fine_tune(run_config, backbone, cfg)
  for a, b in zip(before, stem_and_first(model.backbone), strict=True):
    np.testing.assert_array_equal(a, b)
  after = _leaves(nnx.state(model.backbone.encoder.stages[1]))
  assert any(np.abs(a - b).max() > 0 for a, b in zip(later, after, strict=True))
  assert scores['best_top1'] > 1.5 / CLASSES and len(scores['top1_per_epoch']) == 3


def test_finetune_writes_results(workdir):
  cfg = finetune.default_config()
  cfg.update(epochs=1, batch_size=32, eval_batch_size=64)
  results = finetune.evaluate_finetune(workdir, cfg)
  saved = json.loads((workdir / 'results.json').read_text())
  assert saved['finetune']['top1'] == results['top1'] and 'frozen: none' in saved['finetune']['protocol']
  assert saved['steps'] == 2


@pytest.mark.parametrize('module,args,expected', [
    ('linear_cli', ['--workdir=/nonexistent/run'], 'does not exist'),
    ('finetune_cli', ['--workdir=/nonexistent/run', '--config.nope=1'], 'nope'),
])
def test_cli_bad_input_is_one_line_and_exit_2(module, args, expected):
  proc = subprocess.run([sys.executable, '-m', f'ssl_jax.evaluate.{module}', *args], check=False, cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and expected in lines[-1] and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert all(l.startswith('[') for l in lines[:-1]), proc.stderr  # progress lines before the error


@pytest.fixture(scope='module')
def home_run(tmp_path_factory):
  """A synthetic run trained at '~/run' (HOME set to a temporary folder): data a subprocess can read too."""
  home = tmp_path_factory.mktemp('home')
  saved = os.environ.get('HOME')
  os.environ['HOME'] = str(home)
  try:
    train.train_and_evaluate(runs.tiny_synthetic(), '~/run')
  finally:
    os.environ['HOME'] = saved
  return home


def test_relative_home_and_step_paths_everywhere(home_run, monkeypatch, tmp_path):
  assert (home_run / 'run' / 'checkpoints' / '3').is_dir()  # the trainer expanded '~'
  monkeypatch.chdir(home_run)
  want = ssl_jax.load_encoder(home_run / 'run').embed(np.zeros((1, 16, 16, 3), np.uint8))
  monkeypatch.setenv('HOME', str(home_run))
  for path in ('run', './run/checkpoints', 'run/checkpoints/3', '~/run', '~/run/checkpoints/3'):
    np.testing.assert_array_equal(ssl_jax.load_encoder(path).embed(np.zeros((1, 16, 16, 3), np.uint8)), want)
  # The CLI, given a step directory under '~' from another directory: results.json goes to the run.
  proc = subprocess.run([sys.executable, '-m', 'ssl_jax.evaluate.linear_cli', '--workdir=~/run/checkpoints/3',
                         '--config.epochs=2', '--config.embed_batch_size=64'], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300, env={**os.environ, 'PYTHONPATH': str(ROOT), 'XLA_FLAGS': ''})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'linear evaluation: epoch 2/2' in proc.stderr and ' I1' not in proc.stderr  # progress, no INFO logs
  assert json.loads((home_run / 'run' / 'results.json').read_text())['linear_eval']['config']['epochs'] == 2
  assert not (home_run / 'run' / 'checkpoints' / '3' / 'results.json').exists()
  # The trainer refuses a checkpoint as its workdir (it would nest a run inside a run), changing nothing.
  before = sorted(p.relative_to(home_run) for p in home_run.rglob('*'))
  with pytest.raises(UserError, match=r'checkpoints/3 is a checkpoint inside the run .*/run; pass that run'):
    train.train_and_evaluate(runs.tiny_synthetic(), 'run/checkpoints/3')
  assert sorted(p.relative_to(home_run) for p in home_run.rglob('*')) == before
  # The report, given relative paths and a checkpoint.
  png, md = report.write_report(['run/checkpoints/3'], out='report')
  rows = [l for l in md.read_text().splitlines() if l.startswith('| run |')]
  assert md == home_run / 'report' / 'report.md' and len(rows) == 2  # the header and the run, named 'run'
