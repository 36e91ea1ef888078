"""Checkpoints: an orbax CheckpointManager over the whole train state, plus the config it was trained with.

Resume order: the newest complete checkpoint in `<workdir>/checkpoints`, else a fresh start. Orbax writes each
checkpoint into `<step>.orbax-checkpoint-tmp`, writes a `commit_success.txt` marker and renames the directory
to `<step>` only when everything is on disk, so a save interrupted at any moment (`kill -9` included) leaves
no step directory; leftover temporary directories are removed when the next run opens the workdir. A step
counts as complete only with orbax's commit markers in it, so a directory left half-deleted by an interrupted
clean-up of old checkpoints is never restored either (tests/test_train.py kills runs during saves).
The data stream needs no saved position: the input pipeline regenerates the batches of any step from the seed.

A full disk during a save is a UserError (exit code 2) naming the newest complete checkpoint, which the failed
save never touches: orbax deletes old checkpoints only after a new one is complete.
"""
import contextlib
import errno
import json
import logging as py_logging
import pathlib
import shutil

from absl import logging
import jax
import orbax.checkpoint as ocp

from ssl_jax.config_schema import flatten
from ssl_jax.errors import UserError

# Fields that may change between a run and its resumption without making the checkpoint incompatible.
RESUMABLE_CHANGES = ('total_steps', 'total_epochs', 'log_every_steps', 'eval_every_steps',
                     'checkpoint_every_steps', 'keep_checkpoints', 'eval', 'distributed', 'on_nan',
                     'nan_max_rollbacks', 'resume_from_different_config')
_COMMIT_MARKER = 'commit_success.txt'


def config_differences(saved: dict, current: dict) -> list[str]:
  """Dotted names of the fields that differ, ignoring the ones a resumed run may change."""
  a, b = flatten(saved), flatten(current)
  keep = lambda k: k.split('.')[0] not in RESUMABLE_CHANGES
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


class Checkpointer:
  """Saves and restores the train state of one workdir."""

  def __init__(self, workdir, *, keep: int):
    py_logging.getLogger('absl').addFilter(_DISK_FULL_FILTER)  # the same object once: adding it is idempotent
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    # Leftover temporary directories of interrupted saves are removed here, before the manager exists and
    # synchronously (the caller holds the workdir lock). Orbax's own clean-up option runs in a background
    # thread, which a run refused right after opening the workdir leaves behind to race the next run's.
    if jax.process_index() == 0:
      for tmp in self.directory.glob('*.orbax-checkpoint-tmp*'):
        shutil.rmtree(tmp, ignore_errors=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'config'))
    self._failed = False

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    if not self.directory.exists():
      return None
    steps = [s for s in self.manager.all_steps() if is_complete(self.directory / str(s))]
    return max(steps, default=None)

  def check_compatible(self, config) -> None:
    """Raises UserError when the workdir holds a checkpoint of a different run; reads only, changes nothing.

    With `config.resume_from_different_config` the differences are logged instead and the run resumes from
    that checkpoint with the new config (the train state must still fit the new model and optimizer).
    """
    step = self.latest_step()
    if step is None:
      return
    try:
      saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    except Exception as e:  # orbax raises many types for unreadable files
      raise UserError(f'the checkpoint at {self.directory}/{step} is unreadable ({type(e).__name__}); '
                      'use a fresh --workdir or delete that step directory') from None
    diff = config_differences(saved, _comparable(config))
    if not diff:
      return
    before, now = flatten(saved), flatten(_comparable(config))
    shown = ', '.join(f'{k} (checkpoint {before.get(k)!r}, now {now.get(k)!r})' for k in diff[:6])
    shown += f' and {len(diff) - 6} more' if len(diff) > 6 else ''
    if config.resume_from_different_config:
      logging.warning('Resuming from the checkpoint of step %d, trained with a different config: %s', step,
                      shown)
      return
    raise UserError(f'the workdir holds a checkpoint of a different config: {shown}; use a fresh --workdir, '
                    'the same config to resume, or --config.resume_from_different_config=True to continue '
                    'that checkpoint with the new config')

  def restore(self, abstract_state):
    """The newest complete checkpoint restored into `abstract_state`'s structure and shardings, or None.

    Waits for a save in flight first, so the newest checkpoint includes it.
    """
    with self._disk_full_is_a_user_error():
      self.manager.wait_until_finished()
    step = self.latest_step()
    if step is None:
      return None
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:
      raise UserError(f'cannot restore the checkpoint at {self.directory}/{step} into this model '
                      f'({type(e).__name__}: {str(e).splitlines()[0][:120]}); use a fresh --workdir'
                     ) from None
    return restored['state']

  def save(self, step: int, state, config) -> None:
    """Saves `state` as step `step` (in the background; `close` waits for it)."""
    with self._disk_full_is_a_user_error():
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(_comparable(config))), force=True)

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


def abstract_like(state):
  """ShapeDtypeStructs with the shardings of `state`: the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
