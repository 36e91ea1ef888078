"""Reliability: on_nan policies, broken checkpoints, relaunching a finished run, training time over launches,
a full disk, resuming a changed config, the workdir lock, unreadable images.

Crashes (`kill -9` during saves) and SIGTERM are tested in tests/test_train.py, next to the run they compare
with. The trainer runs here use `runs.shared_synthetic()` on one device, whose step test_train.py compiles too
(one persistent-cache entry for both files), also when they go through the command line (`_cli`); the
skip_step runs compile a (small) step of their own, and following the advice of a non-finite stop (a lower
learning rate) compiles one more.
"""
import dataclasses
import errno
import functools
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import checkpoint, main, methods, train
from ssl_jax.data import sources
from ssl_jax.errors import NonFiniteLoss, UserError
from ssl_jax import workdir_lock
from ssl_jax.workdir_lock import WorkdirLock

import runs


def _records(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]


def _events(workdir):
  return [(r['step'], r['event']) for r in _records(workdir) if 'event' in r]


def _counts(opt_state) -> list:
  """The optimizer step counts in a restored opt_state (nested dicts of arrays)."""
  leaves = jax.tree_util.tree_flatten_with_path(opt_state)[0]
  return [int(x) for path, x in leaves if 'count' in jax.tree_util.keystr(path)]


def _same(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_rollback_restores_the_last_checkpoint_and_gives_up_after_the_limit(tmp_path, monkeypatch):
  # The parameters turn NaN just before the steps at 0-based positions 2 and 4 (what a diverging update
  # would do). The compiled step is unchanged; the rollback must bring back the checkpoint.
  runs.poison_params_before(monkeypatch, steps=(2, 4))
  c = runs.shared_synthetic()
  c.checkpoint_every_steps, c.keep_checkpoints = 1, 10
  c.on_nan, c.nan_max_rollbacks = 'rollback', 1
  with pytest.raises(NonFiniteLoss, match=r'at step 5 after 1 rollback') as info:
    train.train_and_evaluate(c, tmp_path / 'run', devices=jax.devices()[:1])
  assert '\n' not in str(info.value)

  assert _events(tmp_path / 'run') == [(3, 'nan_rollback'), (5, 'nan_stop')]
  assert [r['step'] for r in _records(tmp_path / 'run') if 'loss' in r] == [1, 2, 4]
  saved = runs.checkpoints(tmp_path / 'run')
  assert sorted(saved) == [0, 1, 2, 3, 4]  # 0: the initial state, saved to have something to roll back to
  # Step 3 is checkpoint 2's state moved on to step 3: same weights, step and optimizer counts advanced.
  assert _same(saved[3]['params'], saved[2]['params'])
  assert _same(saved[3]['batch_stats'], saved[2]['batch_stats'])
  assert int(saved[3]['step']) == 3 and set(_counts(saved[3]['opt_state'])) == {3}
  assert set(_counts(saved[2]['opt_state'])) == {2}
  # Then training went on with the next batch.
  assert not _same(saved[4]['params'], saved[3]['params'])
  assert all(np.isfinite(p).all() for s in saved.values() for p in jax.tree.leaves(s['params']))


def test_skip_step_drops_the_update_on_device_and_counts_it(tmp_path, monkeypatch):
  get_method = methods.get_method

  def poisoned_method(config):  # a loss that is NaN at the step of 0-based position 2 only
    method = get_method(config)

    def loss_fn(model, views, batch, key, ctx):
      loss, aux = method.loss_fn(model, views, batch, key, ctx)
      return loss * jnp.where(ctx.step == 2, jnp.nan, 1.0), aux
    return dataclasses.replace(method, loss_fn=loss_fn)

  monkeypatch.setattr(methods, 'get_method', poisoned_method)
  # The count of unreadable images a source reports is logged with every record (image_folder sets it).
  monkeypatch.setattr(sources.SyntheticSource, 'skipped_images', 2, raising=False)
  c = runs.tiny_synthetic(steps=4)
  # This step is compiled for this test only: the smallest model, and no augmentation ops in the graph.
  c.model.num_stages = 1
  c.augment.update(crop=False, flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0)
  c.checkpoint_every_steps, c.keep_checkpoints, c.on_nan = 1, 10, 'skip_step'
  train.train_and_evaluate(c, tmp_path / 'run', devices=jax.devices()[:1])

  records = [r for r in _records(tmp_path / 'run') if 'loss' in r]
  assert [r['nan_skipped_steps'] for r in records] == [0, 0, 1, 0]
  assert all(r['data/skipped_images'] == 2 for r in records)
  assert np.isfinite([records[i]['loss'] for i in (0, 1, 3)]).all()
  assert _events(tmp_path / 'run') == [(3, 'nan_skip_step')]
  saved = runs.checkpoints(tmp_path / 'run')
  for part in ('params', 'batch_stats', 'opt_state', 'probe', 'extra'):
    assert _same(saved[3][part], saved[2][part]), part  # bitwise: the update of step 3 was dropped
  assert int(saved[3]['step']) == 3 and not _same(saved[4]['params'], saved[3]['params'])


# `runs.shared_synthetic()` as command-line flags: the same config, so the same compiled step.
_SHARED_FLAGS = ('--config.total_steps=6', '--config.log_every_steps=1', '--config.checkpoint_every_steps=3',
                 '--config.data.synthetic_examples=64', '--config.data.synthetic_shape=(16,16,3)',
                 '--config.eval.final=False', '--config.model.bn_group_size=4')
_RECIPE = str(pathlib.Path(__file__).resolve().parent.parent / 'configs' / 'simclr_cifar10.py')


def _cli(monkeypatch, capsys, workdir, *flags) -> tuple[int, str]:
  """(exit code, stderr) of the real command line (flags, exit codes, error lines) on one device."""
  monkeypatch.setattr(train, 'train_and_evaluate', functools.partial(train.train_and_evaluate,
                                                                     devices=jax.devices()[:1]))
  monkeypatch.setattr(sys, 'argv', list(sys.argv))  # main.run installs its argv there; restored afterwards
  try:
    main.run(['ssl_jax.main', '--config', f'{_RECIPE}:runlocal,synthetic', '--workdir', str(workdir),
              *_SHARED_FLAGS, *flags])
    code = 0
  except SystemExit as e:
    code = e.code
  finally:
    monkeypatch.undo()
  return code, capsys.readouterr().err


def _poison_batch_stats_before(monkeypatch, step: int) -> None:
  """The BatchNorm running statistics turn NaN just before the step at this 0-based position: the loss of
  that step (train-mode BatchNorm uses the batch's statistics) and the parameters stay finite."""
  make = train.make_train_step

  def make_poisoned(*args, **kwargs):
    step_fn = make(*args, **kwargs)

    def poisoned(state, batch):
      if int(state.step) == step:
        state = state.replace(batch_stats=jax.tree.map(lambda x: x * jnp.nan, state.batch_stats))
      return step_fn(state, batch)
    return poisoned

  monkeypatch.setattr(train, 'make_train_step', make_poisoned)


def _finite(state) -> bool:
  return all(np.isfinite(x).all() for part in ('params', 'batch_stats', 'opt_state', 'extra', 'probe')
             for x in jax.tree.leaves(state[part]) if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_stop_on_a_non_finite_state_keeps_the_finite_checkpoint_and_its_advice_resumes(tmp_path, monkeypatch,
                                                                                      capsys, caplog):
  # Only the batch statistics diverge: the loss of every step is finite, the state saved after step 4 is not.
  workdir = tmp_path / 'run'
  with monkeypatch.context() as patch:
    _poison_batch_stats_before(patch, step=3)
    code, err = _cli(patch, capsys, workdir)
  assert code == 1 and 'Traceback' not in err, err
  error = [line for line in err.splitlines() if line.startswith('error: ')]
  assert len(error) == 1, err
  assert ('the train state became non-finite (in batch_stats) at step 4; the last good checkpoint is kept '
          '(step 3)') in error[0]
  saved = runs.checkpoints(workdir)
  assert sorted(saved) == [3] and _finite(saved[3])

  # Any other change is still refused after the stop; the printed advice is accepted as printed and recovers.
  code, err = _cli(monkeypatch, capsys, workdir, '--config.optimizer.momentum=0.5')
  assert code == 2 and 'different config: optimizer.momentum' in err, err
  advice = re.search(r'running the same command with (--config\.optimizer\.base_lr=\S+) ', error[0]).group(1)
  code, err = _cli(monkeypatch, capsys, workdir, advice)
  assert code == 0, err
  assert any('after a non-finite stop, with optimizer.base_lr' in r.getMessage() for r in caplog.records)
  saved = runs.checkpoints(workdir)
  assert sorted(saved) == [3, 6] and _finite(saved[6])
  assert not (workdir / 'non_finite_stop.json').exists()  # the next launch compares with the new config
  assert json.loads((workdir / 'results.json').read_text())['steps'] == 6


def test_skip_step_gives_up_when_every_update_diverges(tmp_path):
  # The run: a learning rate of 1e30 makes every update non-finite, so every step is skipped.
  c = runs.tiny_synthetic(steps=4)
  c.model.num_stages = 1
  c.augment.update(crop=False, flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0)
  c.checkpoint_every_steps, c.on_nan, c.optimizer.base_lr = 1, 'skip_step', 1e30
  c.optimizer.warmup_epochs = 0.0  # no step with a learning rate of 0
  with pytest.raises(NonFiniteLoss, match=r'4 steps in a row were skipped as non-finite .* at step 4; the last '
                     r'good checkpoint is kept \(step 3\)'):
    train.train_and_evaluate(c, tmp_path / 'run', devices=jax.devices()[:1])
  assert _events(tmp_path / 'run') == [(s, 'nan_skip_step') for s in (1, 2, 3, 4)] + [(4, 'nan_stop')]
  assert all(_finite(s) for s in runs.checkpoints(tmp_path / 'run').values())


def _recorded_train_time(workdir, step: int) -> float:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.CheckpointManager(workdir / 'checkpoints') as mgr:
    return mgr.metadata(step).custom_metadata['train_time_s']


def test_broken_newest_checkpoint_is_moved_aside_train_time_adds_up_and_a_finished_run_is_not_rerun(
    tmp_path, monkeypatch, caplog):
  workdir, config = tmp_path / 'run', runs.shared_synthetic()
  config.checkpoint_every_steps = 1
  one_device = functools.partial(train.train_and_evaluate, devices=jax.devices()[:1])
  # Launch 1, preempted after step 3, on a clock running 1000 times fast: its training time dwarfs launch 2's.
  with monkeypatch.context() as patch:
    patch.setattr(train, 'train_and_evaluate', one_device)
    patch.setattr(checkpoint, 'time', types.SimpleNamespace(perf_counter=lambda: 1000 * time.perf_counter(),
                                                            strftime=time.strftime))
    runs.preempt_after_step_3(config, workdir, patch)
  earlier = _recorded_train_time(workdir, 2)
  assert earlier > 0

  # Step 3's files are cut short on disk: readers fall back to step 2 and leave the workdir alone.
  for f in (workdir / 'checkpoints' / '3' / 'state').rglob('d/*'):
    f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
  from ssl_jax import encoder  # pylint: disable=g-import-not-at-top
  assert encoder.read_checkpoint(workdir)[2].name == '2'
  assert any('newest readable one (step 3: ' in r.getMessage() for r in caplog.records)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1', '2', '3']

  # Launch 2 moves step 3 aside (kept), says why, resumes from step 2 and adds its time to launch 1's.
  caplog.clear()
  started = time.perf_counter()
  results = one_device(config, workdir)
  launch_2 = time.perf_counter() - started
  warning = next(r.getMessage() for r in caplog.records if 'moved aside' in r.getMessage())
  assert re.search(r'checkpoint of step 3 .* is unreadable \(its state: \w+: .*OUT_OF_RANGE', warning), warning
  assert 'Resuming from the checkpoint of step 2' in caplog.text
  broken = [p for p in os.listdir(workdir / 'checkpoints') if p.startswith('broken-3-')]
  assert len(broken) == 1 and (workdir / 'checkpoints' / broken[0] / 'state').is_dir(), broken
  assert earlier < _recorded_train_time(workdir, 6) <= results['train_time_s'] + 0.05  # saved before the end
  assert results['train_time_s'] <= earlier + launch_2 + 0.05

  # Launch 3 of the same command: done already, nothing recomputed or rewritten.
  caplog.clear()
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob('*')}
  assert one_device(config, workdir) == json.loads((workdir / 'results.json').read_text()) == results
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob('*')} == before
  assert f'already done (step 6): its results are in {workdir / "results.json"}' in caplog.text


def test_full_disk_keeps_the_last_checkpoint_then_resume_with_a_changed_config(tmp_path, monkeypatch, caplog):
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  commit = atomicity.AtomicRenameTemporaryPath.finalize

  async def disk_full_at_step_6(self, *args, **kwargs):
    # In orbax's background thread, when step 6 is written and its commit marker is due: the disk is full.
    if self.get_final().name == '6':
      raise OSError(errno.ENOSPC, 'No space left on device')
    return await commit(self, *args, **kwargs)

  workdir = tmp_path / 'run'
  with monkeypatch.context() as patch:
    patch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', disk_full_at_step_6)
    with pytest.raises(UserError, match='no space left on device') as info:
      train.train_and_evaluate(runs.shared_synthetic(), workdir, devices=jax.devices()[:1])
  assert 'checkpoint of step 3 is intact' in str(info.value) and '\n' not in str(info.value)
  assert not [r for r in caplog.records if r.exc_info]  # orbax's tracebacks of it are not shown
  assert [p.name for p in (workdir / 'checkpoints').iterdir() if checkpoint.is_complete(p)] == ['3']
  assert list((workdir / 'checkpoints').glob('6.orbax-checkpoint-tmp*'))  # written, never committed
  assert not (workdir / 'run.lock').exists()

  changed = runs.shared_synthetic()
  changed.data.synthetic_examples = 96  # e.g. going on with more data
  with pytest.raises(UserError, match=r'data\.synthetic_examples \(checkpoint 64, now 96\).*'
                     r'resume_from_different_config=True'):
    train.train_and_evaluate(changed, workdir, devices=jax.devices()[:1])
  changed.resume_from_different_config = True
  train.train_and_evaluate(changed, workdir, devices=jax.devices()[:1])
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3', '6']  # the half-written step 6 is cleaned up
  # The steps the failed run logged after its checkpoint are logged once, by the run that redid them.
  assert [r['step'] for r in _records(workdir)] == [1, 2, 3, 4, 5, 6]


def test_a_live_workdir_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  with WorkdirLock(workdir):
    with pytest.raises(UserError, match=f'in use by another run \\(process {os.getpid()} on host') as info:
      train.train_and_evaluate(runs.shared_synthetic(), workdir)
    assert '\n' not in str(info.value) and 'run.lock' in str(info.value)
  assert not workdir.exists()  # the lock made the workdir; nothing else was written, so it is gone again

  # A lock file left by a killed run holds no lock: the next run takes it over.
  dead = subprocess.Popen(['true'])
  dead.wait()
  pid = dead.pid
  workdir.mkdir()
  (workdir / 'run.lock').write_text(json.dumps({'pid': pid, 'host': 'elsewhere', 'started': 'then'}))
  with WorkdirLock(workdir):
    assert json.loads((workdir / 'run.lock').read_text())['pid'] == os.getpid()
  assert not (workdir / 'run.lock').exists() and workdir.exists()

  # Without file locks (some network filesystems) the record decides: a dead pid on this host is taken over,
  # a live one is refused.
  monkeypatch.setattr(workdir_lock, '_try_lock', lambda fd: None)
  (workdir / 'run.lock').write_text(json.dumps({'pid': pid, 'host': socket.gethostname()}))
  with WorkdirLock(workdir):
    pass
  (workdir / 'run.lock').write_text(json.dumps({'pid': os.getppid(), 'host': socket.gethostname()}))
  with pytest.raises(UserError, match=f'process {os.getppid()}'):
    with WorkdirLock(workdir):
      pass


def _write_images(root):
  """root/train/c{0,1}/: 3 readable PNGs per class, a truncated JPEG, junk named .png and an empty .jpg."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for c in range(2):
    folder = root / 'train' / f'c{c}'
    folder.mkdir(parents=True)
    for i in range(3):
      pixels = tf.constant((rng.random((20 + i, 24, 3)) * 255).astype(np.uint8))
      (folder / f'{i}.png').write_bytes(tf.io.encode_png(pixels).numpy())
  jpeg = tf.io.encode_jpeg(tf.zeros((32, 32, 3), tf.uint8)).numpy()
  (root / 'train' / 'c0' / 'cut.jpg').write_bytes(jpeg[:len(jpeg) // 2])
  (root / 'train' / 'c1' / 'junk.png').write_bytes(b'not an image')
  (root / 'train' / 'c1' / 'empty.jpg').write_bytes(b'')


def test_unreadable_images_are_skipped_and_counted(tmp_path):
  from ssl_jax import data  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  _write_images(tmp_path / 'mixed')
  cfg = common.base_config().data
  cfg.name, cfg.root, cfg.image_size = 'image_folder', str(tmp_path / 'mixed'), 16
  src = data.get_source(cfg, split='train', train=True, crops=(data.HostCrop(),) * 2)
  assert (src.num_examples, src.skipped_images) == (6, 3)
  batches = src.train_batches(global_batch_size=2, seed=0)
  labels = np.concatenate([next(batches)['label'] for _ in range(3)])  # one epoch, nothing crashes
  assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
  evals = data.get_source(cfg, split='train', train=False).eval_batches(global_batch_size=4)
  assert sum(int(b['mask'].sum()) for b in evals) == 6

  (tmp_path / 'junk' / 'train' / 'c0').mkdir(parents=True)
  for name in ('a.jpg', 'b.png'):
    (tmp_path / 'junk' / 'train' / 'c0' / name).write_bytes(b'\x00' * 10)
  cfg.root = str(tmp_path / 'junk')
  with pytest.raises(UserError, match=r'none of the 2 images .* can be decoded \(e\.g\. train/c0/') as info:
    data.get_source(cfg, split='train', train=True, crops=(data.HostCrop(),) * 2)
  assert '\n' not in str(info.value)
