"""Progress lines on stderr: what a run is doing, with the seconds since it started and an ETA.

    [   0.0 s] reading the config configs/simclr_digits.py:runlocal
    [  41.3 s] final evaluation 2/2: the random initialisation (the baseline) | ETA 0m07s

Imports nothing heavy, so the CLIs print their first line before jax and TensorFlow are imported. The trainer
turns the lines off on every process but process 0 once jax.distributed has started (`enabled`); before
that each process prints its own (each host has its own log).
"""
import os
import sys
import time

_START = time.perf_counter()
LINE_PREFIX = '['  # every progress line starts with '[<seconds> s] '
enabled = True


def elapsed() -> float:
  """Seconds since this module was first imported (the CLIs import it first thing)."""
  return time.perf_counter() - _START


def duration(seconds: float) -> str:
  """'0m07s', '12m30s', '2h05m'."""
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'
  return f'{seconds // 60}m{seconds % 60:02d}s'


def note(message: str) -> None:
  """Prints `[<seconds since start> s] message` on stderr."""
  if enabled:
    print(f'[{elapsed():6.1f} s] {message}', file=sys.stderr, flush=True)


class Progress:
  """A phase of `total` units (epochs, batches): a line at most every `every` seconds and after the last unit,
  each with the ETA of the phase.

  Args:
    what: the phase, e.g. 'linear evaluation: epoch' (the line reads 'linear evaluation: epoch 3/100').
    total: number of units.
    every: the least number of seconds between two lines (0: a line per unit).
    brief: whether a phase shorter than `every` prints its last line (False: it prints nothing).
  """

  def __init__(self, what: str, total: int, *, every: float = 10.0, brief: bool = True):
    self.what, self.total, self.every, self.brief = what, total, every, brief
    self.started = self.last = time.perf_counter()

  def update(self, done: int, extra: str = '') -> None:
    """`done` units are finished; `extra` (e.g. 'top1 0.512') is shown in the line."""
    now = time.perf_counter()
    last = done >= self.total and (self.brief or now - self.started >= self.every)
    if not (last or now - self.last >= self.every):
      return
    self.last = now
    eta = (now - self.started) / max(done, 1) * (self.total - done)
    parts = [f'{self.what} {done}/{self.total}', extra,
             f'ETA {duration(eta)}' if done < self.total else f'done in {duration(now - self.started)}']
    note(' | '.join(p for p in parts if p))


def counted(items, what: str, total: int, *, every: float = 30.0):
  """Yields `items`, reporting them as a `Progress` phase (e.g. batches of a feature extraction) when it
  lasts longer than `every` seconds."""
  phase = Progress(what, total, every=every, brief=False)
  for done, item in enumerate(items, 1):
    yield item
    phase.update(min(done, total))


def set_verbosity(verbose: bool) -> None:
  """The INFO logs of TensorFlow (C++), tfds and orbax (absl) only when `verbose` (the CLIs' --verbose).

  Call it before TensorFlow is imported (the input pipeline imports it on first use).
  """
  from absl import logging  # pylint: disable=g-import-not-at-top  (light, but only the CLIs need it)
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '0' if verbose else os.environ.get('TF_CPP_MIN_LOG_LEVEL', '1')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
