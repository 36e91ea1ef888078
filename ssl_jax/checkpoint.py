"""Checkpoints: an orbax CheckpointManager over the whole train state, plus the config it was trained with.

Resume order: the newest complete checkpoint in `<workdir>/checkpoints`, else a fresh start. Orbax writes each
checkpoint into `<step>.orbax-checkpoint-tmp`, writes a `commit_success.txt` marker and renames the directory
to `<step>` only when everything is on disk, so a save interrupted at any moment (`kill -9` included) leaves
no step directory; leftover temporary directories are removed when the next run opens the workdir. A step
counts as complete only with orbax's commit markers in it, so a directory left half-deleted by an interrupted
clean-up of old checkpoints is never restored either (tests/test_train.py kills runs during saves).
The data stream needs no saved position: the input pipeline regenerates the batches of any step from the seed.

A complete checkpoint that cannot be used all the same (a file truncated or damaged after the save, or a state
that is not finite, written by an older version) is moved aside, never deleted, to
`checkpoints/broken-<step>-<time>` or `checkpoints/non-finite-<step>-<time>` (outside orbax's step names), with
a warning saying what was wrong, and the run resumes from the newest usable checkpoint before it. A checkpoint
that reads but does not fit the model (another architecture) is bad input instead: a UserError, nothing moved.
Readers of a workdir (`ssl_jax.load_encoder`, the evaluation CLIs) fall back the same way but move nothing
(`read_newest`): they hold no lock on a workdir that a run may be writing.

Each checkpoint records the training time up to its step (summed over launches: a resumed run goes on from
the restored checkpoint's), and a run whose newest checkpoint is its last step and whose results.json exists
is not run again (`finished`).

A full disk during a save is a UserError (exit code 2) naming the newest complete checkpoint, which the failed
save never touches: orbax deletes old checkpoints only after a new one is complete.
"""
import contextlib
import errno
import json
import logging as py_logging
import pathlib
import re
import shutil
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from ssl_jax import non_finite
from ssl_jax.config_schema import flatten
from ssl_jax.errors import UserError

# Fields that may change between a run and its resumption without making the checkpoint incompatible.
RESUMABLE_CHANGES = ('total_steps', 'total_epochs', 'log_every_steps', 'eval_every_steps',
                     'checkpoint_every_steps', 'keep_checkpoints', 'eval', 'distributed', 'on_nan',
                     'nan_max_rollbacks', 'nan_max_skipped_steps', 'resume_from_different_config')
# Fields that may also change on the resume after a non-finite stop (ssl_jax/non_finite.py): the advice that
# stop prints, a lower learning rate or a longer warm-up, works as printed.
AFTER_NON_FINITE_STOP = ('optimizer.base_lr', 'optimizer.warmup_epochs')
# Of RESUMABLE_CHANGES, those that change what a finished run computes: with other values it is not done.
_CHANGE_RESULTS = ('total_steps', 'total_epochs', 'eval')
_COMMIT_MARKER = 'commit_success.txt'
_NON_FINITE_STOP = 'non_finite_stop.json'  # in the workdir, from a non-finite stop until the next save


def config_differences(saved: dict, current: dict, ignore=RESUMABLE_CHANGES) -> list[str]:
  """Dotted names of the fields that differ, ignoring those whose first part is in `ignore`."""
  a, b = flatten(saved), flatten(current)
  keep = lambda k: k.split('.')[0] not in ignore
  return sorted(k for k in set(a) | set(b) if keep(k) and a.get(k) != b.get(k))


def _comparable(config) -> dict:
  # A JSON round trip turns tuples into lists, as they are in the saved file.
  return json.loads(config.to_json())


def is_complete(step_dir: pathlib.Path) -> bool:
  """Whether a step directory holds a whole checkpoint: orbax's commit markers for it and its items."""
  return all((step_dir / part / _COMMIT_MARKER).exists() for part in ('.', 'state', 'config'))


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or one it was raised from, says the disk is full (orbax and TensorStore wrap it)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


class _WithoutDiskFullTracebacks(py_logging.Filter):
  """Drops orbax's logged tracebacks of a full disk: the Checkpointer reports it as one line instead."""

  def filter(self, record):
    return not (record.exc_info and is_disk_full(record.exc_info[1]))


_DISK_FULL_FILTER = _WithoutDiskFullTracebacks()


def describe_error(error: BaseException) -> str:
  """What went wrong, in one untruncated line: the innermost cause (orbax wraps TensorStore's precise error
  in generic ones), without the TensorStore specs that follow it."""
  seen = set()
  while id(error) not in seen and (error.__cause__ or error.__context__) is not None:
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  text = re.split(r' \[tensorstore_spec|\. See full TensorStore details', str(error))[0]
  return f'{type(error).__name__}: {" ".join(text.split())}'


def _names(tree) -> dict:
  """{dotted path: shape} of the arrays of a train state or of orbax's metadata tree of one."""
  def name(key):
    return str(next(getattr(key, a) for a in ('key', 'name', 'idx') if hasattr(key, a)))
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'.'.join(map(name, path)): tuple(x.shape) for path, x in leaves if hasattr(x, 'shape')}


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def step_dirs(folder: pathlib.Path) -> list[pathlib.Path]:
  """The complete checkpoints in a `checkpoints` folder, newest first."""
  steps = [p for p in folder.iterdir() if p.name.isdigit() and is_complete(p)] if folder.is_dir() else []
  return sorted(steps, key=lambda p: int(p.name), reverse=True)


def read_newest(folder: pathlib.Path, read):
  """`read(step_dir)` of the newest checkpoint in `folder` that it can read, with a warning naming each newer
  one it failed on and why; the readers' fallback (nothing is moved: they hold no lock on the workdir).

  Raises:
    UserError: no complete checkpoint in `folder`, or none that `read` can read.
  """
  failed = []
  for step_dir in step_dirs(folder):
    try:
      result = read(step_dir)
    except Exception as e:  # noqa: BLE001  (orbax raises many types for unreadable files)
      failed.append(f'step {step_dir.name}: {e if isinstance(e, UserError) else describe_error(e)}')
      continue
    if failed:
      logging.warning('using the checkpoint of step %s in %s, the newest readable one (%s)', step_dir.name,
                      folder, '; '.join(failed))
    return result
  if failed:
    raise UserError(f'no checkpoint in {folder} is readable ({"; ".join(failed)}); retrain, or restore the '
                    'files from a copy')
  raise UserError(f'no checkpoint in {folder}; pass a workdir that holds checkpoints/<step>/ '
                  '(train it first with python -m ssl_jax.main)')


class Checkpointer:
  """Saves and restores the train state of one workdir."""

  def __init__(self, workdir, *, keep: int):
    py_logging.getLogger('absl').addFilter(_DISK_FULL_FILTER)  # the same object once: adding it is idempotent
    self.workdir = pathlib.Path(workdir).absolute()
    self.directory = self.workdir / 'checkpoints'
    # Leftover temporary directories of interrupted saves are removed here, before the manager exists and
    # synchronously (the caller holds the workdir lock). Orbax's own clean-up option runs in a background
    # thread, which a run refused right after opening the workdir leaves behind to race the next run's.
    if jax.process_index() == 0:
      for tmp in self.directory.glob('*.orbax-checkpoint-tmp*'):
        shutil.rmtree(tmp, ignore_errors=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=False)
    # Handlers named up front: the metadata of a step can be read before anything is restored.
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
        'state': ocp.StandardCheckpointHandler(), 'config': ocp.JsonCheckpointHandler()})
    self._failed = False
    self._newest = None         # (step, saved config) of the newest readable checkpoint, by check_compatible
    self._earlier_time = 0.0    # training time up to the restored checkpoint, in the launches before this one
    self._clock_start = None

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    if not self.directory.exists():
      return None
    steps = [s for s in self.manager.all_steps() if is_complete(self.directory / str(s))]
    return max(steps, default=None)

  def newest_step(self) -> int | None:
    """`latest_step` once a save in flight is on disk."""
    with self._disk_full_is_a_user_error():
      self.manager.wait_until_finished()
    return self.latest_step()

  def _steps(self) -> list[int]:
    return sorted((s for s in self.manager.all_steps() if is_complete(self.directory / str(s))), reverse=True)

  def _move_aside(self, step: int, kind: str, what: str) -> None:
    """Renames an unusable checkpoint out of orbax's step names (kept for inspection) and warns."""
    _sync(f'ssl_jax move aside {step}: read')  # every process has judged it before it goes
    target = self.directory / f'{kind}-{step}-{time.strftime("%Y%m%dT%H%M%S")}'
    while target.exists():
      target = target.with_name(target.name + '-1')
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(target)
    _sync(f'ssl_jax move aside {step}: moved')
    self.manager.reload()
    logging.warning('the checkpoint of step %d in %s %s; it is moved aside to %s (delete it when it is no '
                    'longer needed) and the run goes on from the checkpoint before it', step, self.directory,
                    what, target.name)

  def check_compatible(self, config) -> None:
    """Raises UserError when the workdir holds a checkpoint of a different run.

    Reads only, except that checkpoints whose config cannot be read are moved aside (see the module
    docstring). With `config.resume_from_different_config` the differences are logged instead and the run
    resumes from that checkpoint with the new config (the train state must still fit the new model and
    optimizer). After a non-finite stop, AFTER_NON_FINITE_STOP may differ too.
    """
    for step in self._steps() if self.directory.exists() else []:
      try:
        saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
      except Exception as e:  # noqa: BLE001  (orbax raises many types for unreadable files)
        self._move_aside(step, 'broken', f'is unreadable (its config: {describe_error(e)})')
        continue
      self._newest = step, saved
      break
    else:
      return
    step, saved = self._newest
    diff = config_differences(saved, _comparable(config))
    if not diff:
      return
    before, now = flatten(saved), flatten(_comparable(config))
    shown = ', '.join(f'{k} (checkpoint {before.get(k)!r}, now {now.get(k)!r})' for k in diff[:6])
    shown += f' and {len(diff) - 6} more' if len(diff) > 6 else ''
    if (self.workdir / _NON_FINITE_STOP).exists() and set(diff) <= set(AFTER_NON_FINITE_STOP):
      logging.warning('Resuming from the checkpoint of step %d after a non-finite stop, with %s', step, shown)
      return
    if config.resume_from_different_config:
      logging.warning('Resuming from the checkpoint of step %d, trained with a different config: %s', step,
                      shown)
      return
    raise UserError(f'the workdir holds a checkpoint of a different config: {shown}; use a fresh --workdir, '
                    'the same config to resume, or --config.resume_from_different_config=True to continue '
                    'that checkpoint with the new config')

  def finished(self, config, results_file: pathlib.Path) -> dict | None:
    """The results of this very run when it is already done, else None.

    Done: `results_file` names the newest checkpoint's step (the run's last: results are written after it)
    and the config differs from that checkpoint's at most in fields that do not change the results (how
    often to log or save, on_nan, ...). Call after `check_compatible`.
    """
    if self._newest is None or not results_file.exists():
      return None
    step, saved = self._newest
    try:
      results = json.loads(results_file.read_text())
    except ValueError:
      return None
    if not isinstance(results, dict):
      return None
    ignore = tuple(k for k in RESUMABLE_CHANGES if k not in _CHANGE_RESULTS)
    if results.get('steps') != step or config_differences(saved, _comparable(config), ignore):
      return None
    return results

  def restore(self, like):
    """The newest usable checkpoint restored into the structure and shardings of the state `like`, or None.

    Waits for a save in flight first, so the newest checkpoint includes it. Checkpoints that cannot be read,
    or whose state is not finite, are moved aside (see the module docstring) and the one before is tried.

    Raises:
      UserError: the newest readable checkpoint holds a state of another shape (a different model).
    """
    with self._disk_full_is_a_user_error():
      self.manager.wait_until_finished()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    for step in self._steps() if self.directory.exists() else []:
      try:
        self._check_fits(step, abstract)
        state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
      except UserError:
        raise
      except Exception as e:  # noqa: BLE001  (orbax raises many types for unreadable files)
        self._move_aside(step, 'broken', f'is unreadable (its state: {describe_error(e)})')
        continue
      bad = non_finite.non_finite_parts(state['state'])
      if bad:
        self._move_aside(step, 'non-finite', f'holds a non-finite state (in {", ".join(bad)})')
        continue
      if self._clock_start is None:  # the launch's restore, not a rollback's
        self._earlier_time = self._recorded_time(step)
      return state['state']
    return None

  def _check_fits(self, step: int, abstract) -> None:
    """Raises UserError when the checkpoint's arrays (read from its metadata) are not the model's.

    An unreadable metadata file raises what orbax raises: the checkpoint is broken, not incompatible.
    """
    saved, wanted = _names(self.manager.item_metadata(step)['state']), _names(abstract)
    if saved == wanted:
      return
    diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    shown = ', '.join(f'{k} (checkpoint {saved.get(k)}, model {wanted.get(k)})' for k in diff[:4])
    shown += f' and {len(diff) - 4} more' if len(diff) > 4 else ''
    raise UserError(f'the checkpoint of step {step} in {self.directory} does not fit this model: {shown}; it '
                    'was trained with another model: use a fresh --workdir, or the config it was trained with')

  def _recorded_time(self, step: int) -> float:
    try:
      return float((self.manager.metadata(step).custom_metadata or {}).get('train_time_s', 0.0))
    except Exception:  # noqa: BLE001  (an unreadable step metadata file costs the time record only)
      return 0.0

  def start_clock(self) -> None:
    """Starts counting this launch's training time, on top of that of the restored checkpoint."""
    self._clock_start = time.perf_counter()

  def train_time_s(self) -> float:
    """The training time of all launches up to the restored checkpoint, plus this launch's so far."""
    running = time.perf_counter() - self._clock_start if self._clock_start is not None else 0.0
    return self._earlier_time + running

  def save(self, step: int, state, config) -> None:
    """Saves `state` as step `step` (in the background; `close` waits for it) with the training time."""
    with self._disk_full_is_a_user_error():
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(_comparable(config))), force=True,
          custom_metadata={'train_time_s': self.train_time_s()})
    if jax.process_index() == 0:  # this checkpoint has the new config: its resume needs no exception
      (self.workdir / _NON_FINITE_STOP).unlink(missing_ok=True)

  def mark_non_finite_stop(self, step: int) -> None:
    """Records that the run stopped non-finite at `step`: its resume may change AFTER_NON_FINITE_STOP."""
    if jax.process_index() == 0:
      (self.workdir / _NON_FINITE_STOP).write_text(json.dumps({'step': step}))

  def close(self) -> None:
    """Waits for a background save to finish."""
    if self._failed:  # a full disk was reported already; what is left of the failed save only needs closing
      with contextlib.suppress(Exception):
        self.manager.close()
      return
    with self._disk_full_is_a_user_error():
      self.manager.wait_until_finished()
    self.manager.close()

  @contextlib.contextmanager
  def _disk_full_is_a_user_error(self):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  (orbax wraps the OSError in its own types)
      if not is_disk_full(e):
        raise
      self._failed = True
      # The failed save's '<step>.orbax-checkpoint-tmp' stays until the next run opens the workdir: orbax's
      # other writers may still be finishing into it now.
      kept = max((int(d.name) for d in self.directory.glob('*') if d.name.isdigit() and is_complete(d)),
                 default=None)
      intact = (f'the checkpoint of step {kept} is intact' if kept is not None
                else 'no checkpoint was complete')
      raise UserError(f'no space left on device while saving a checkpoint in {self.directory}; {intact}: '
                      'free some space (or lower keep_checkpoints) and run the same command to resume'
                     ) from None

