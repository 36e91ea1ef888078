"""Paths as users type them, and the checks that a workdir can be used before anything is written there.

Every entry point (the trainer's --workdir, `load_encoder`, the evaluation CLIs, the report) takes relative
paths (to the current directory), absolute ones and `~`; orbax reads only absolute paths.
"""
import os
import pathlib

from ssl_jax.errors import UserError


def user_path(path) -> pathlib.Path:
  """`path` as the user meant it: `~` expanded, made absolute against the current directory."""
  return pathlib.Path(os.path.expanduser(str(path))).resolve()


def workdir_of(path) -> pathlib.Path:
  """The training run's workdir, given the workdir, its `checkpoints` folder or one of its step directories."""
  path = user_path(path)
  if path.name == 'checkpoints' and path.is_dir() and any(map(_is_step, path.iterdir())):
    return path.parent
  if path.parent.name == 'checkpoints' and _is_step(path):
    return path.parent.parent
  return path


def _is_step(path: pathlib.Path) -> bool:
  """Whether `path` is a checkpoint's step directory, `<workdir>/checkpoints/<step>`."""
  return path.name.isdigit() and (path / 'state').is_dir()


def check_workdir(workdir) -> pathlib.Path:
  """The absolute workdir, after checking (without writing anything) that a run can create and write it.

  Raises:
    UserError: it is a file, lies under a file, is a checkpoint inside another workdir, or cannot be written.
  """
  workdir = user_path(workdir)
  if workdir != workdir_of(workdir):
    raise UserError(f'--workdir {workdir} is a checkpoint inside the run {workdir_of(workdir)}; pass that '
                    'run\'s directory to resume it, or a new directory for a new run')
  existing = next(p for p in (workdir, *workdir.parents) if p.exists())
  if not existing.is_dir():
    what = 'is a file' if existing == workdir else f'lies under {existing}, which is a file'
    raise UserError(f'--workdir {workdir} {what}; pass a directory (new or a run\'s workdir)')
  if not _writable(existing):
    raise UserError(f'--workdir {workdir} cannot be written ({existing} is read-only); pass a directory you '
                    'can write to')
  return workdir


def _writable(directory: pathlib.Path) -> bool:
  # os.access answers for root too (it ignores permission bits only where root may really write).
  return os.access(directory, os.W_OK | os.X_OK)
