"""One live run per workdir: `<workdir>/run.lock`, held with an advisory file lock while a run is alive.

The kernel drops the lock when its process ends, however it ends (`kill -9` included), so a lock left behind
by a dead run never blocks the next one: the next run takes it over. The file records who holds it (pid,
host, start time) for the message a second run gets. Where the filesystem cannot lock files, the record
decides instead: a lock of a process that no longer exists on this host is taken over; one held on another
host is refused, since its liveness cannot be checked from here.
"""
import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import time

from ssl_jax.errors import UserError

LOCK_NAME = 'run.lock'


class WorkdirLock:
  """Context manager: holds `<workdir>/run.lock` (creating the workdir) until the run ends.

  On release the lock file is removed, and so is the workdir itself when this lock created it and nothing
  else was written there (a run that stops on bad input leaves nothing behind).
  """

  def __init__(self, workdir, *, enabled: bool = True):
    """Args: workdir: the run's directory. enabled: False on every process but the first (multi-host)."""
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / LOCK_NAME
    self.enabled = enabled
    self._fd = None
    self._created_workdir = False

  def __enter__(self):
    if self.enabled:
      self._created_workdir = not self.workdir.exists()
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._acquire()
    return self

  def __exit__(self, *exc_info):
    if self._fd is not None:
      with contextlib.suppress(OSError):
        self.path.unlink()  # before unlocking: a run waiting on this file then retries on a fresh one
      os.close(self._fd)
      self._fd = None
    if self._created_workdir:
      with contextlib.suppress(OSError):
        self.workdir.rmdir()  # only succeeds when the run wrote nothing
    return False

  def _acquire(self) -> None:
    for _ in range(10):  # retried only when another run removed or replaced the file in between
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        locked = _try_lock(fd)
      except BaseException:
        os.close(fd)
        raise
      if locked is None:  # the filesystem has no file locks: judge by the record
        locked = not _alive(_read_record(self.path))
      if not locked:
        os.close(fd)
        raise UserError(self._busy_message())
      if _same_file(fd, self.path):
        self._fd = fd
        _write_record(fd)
        return
      os.close(fd)
    raise UserError(f'could not take the lock {self.path}; another run keeps replacing it: use another '
                    '--workdir')

  def _busy_message(self) -> str:
    owner = _read_record(self.path)
    who = (f'process {owner.get("pid")} on host {owner.get("host")} since {owner.get("started")}'
           if owner else 'another process')
    return (f'workdir {self.workdir} is in use by another run ({who}); wait for it to finish or stop it, or '
            f'use another --workdir (if that run is gone for good, delete {self.path})')


def _try_lock(fd: int) -> bool | None:
  """True: locked; False: another process holds it; None: this filesystem does not support file locks."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    return False
  except OSError as e:
    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
      return None
    raise


def _same_file(fd: int, path: pathlib.Path) -> bool:
  """Whether `path` still names the file `fd` locked (a finishing run removes its lock file)."""
  try:
    return os.fstat(fd).st_ino == os.stat(path).st_ino
  except FileNotFoundError:
    return False


def _write_record(fd: int) -> None:
  record = {'pid': os.getpid(), 'host': socket.gethostname(),
            'started': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(record) + '\n').encode(), 0)


def _read_record(path: pathlib.Path) -> dict:
  try:
    record = json.loads(path.read_text() or '{}')
  except (OSError, ValueError):
    return {}
  return record if isinstance(record, dict) else {}


def _alive(record: dict) -> bool:
  """Whether the run a lock record names may still be running (unknowable for another host: assume so)."""
  pid = record.get('pid')
  if not isinstance(pid, int) or pid <= 0:
    return False  # no readable owner: nothing to wait for
  if record.get('host') != socket.gethostname():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError):
    return True  # it exists but belongs to someone else
  return True
