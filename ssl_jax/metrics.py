"""Metric sinks: metrics.jsonl, TensorBoard event files and a console progress line (process 0 only)."""
import json
import math
import pathlib
import sys
import time

import jax


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'
  return f'{seconds // 60}m{seconds % 60:02d}s'


class MetricWriter:
  """Writes one record per log step. Records carry at least step, loss, lr and images_per_sec."""

  def __init__(self, workdir, *, total_steps: int, batch_size: int, start_step: int):
    self.enabled = jax.process_index() == 0
    self.total_steps, self.batch_size = total_steps, batch_size
    self.last_step, self.last_time = start_step, time.perf_counter()
    if self.enabled:
      from tensorboardX import SummaryWriter  # pure Python: no TensorFlow needed
      path = pathlib.Path(workdir) / 'metrics.jsonl'
      _drop_records_after(path, start_step)
      self.jsonl = open(path, 'a')
      self.tb = SummaryWriter(str(pathlib.Path(workdir) / 'tensorboard'))

  def write(self, step: int, metrics: dict, *, console: bool = True) -> None:
    """Records `metrics` (floats) at `step`; throughput is measured since the previous call."""
    now = time.perf_counter()
    rate = (step - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    # Unix time of the record: reports plot curves against wall-clock as well as against step.
    record = {'step': step, 'time': time.time(), **{k: float(v) for k, v in metrics.items()}}
    if 'loss' in metrics:
      record['images_per_sec'] = rate
    if not self.enabled:
      return
    self.jsonl.write(json.dumps(record) + '\n')
    self.jsonl.flush()
    for k, v in record.items():
      if k not in ('step', 'time') and math.isfinite(v):
        self.tb.add_scalar(k, v, step)
    self.tb.flush()
    if console:
      self._progress(record, rate)

  def event(self, step: int, kind: str, message: str) -> None:
    """Records something that happened at `step` (e.g. a skipped non-finite step) and prints it."""
    if not self.enabled:
      return
    record = {'step': step, 'time': time.time(), 'event': kind, 'message': message}
    self.jsonl.write(json.dumps(record) + '\n')
    self.jsonl.flush()
    print(f'step {step}: {message}', file=sys.stderr, flush=True)

  def _progress(self, record: dict, rate: float) -> None:
    step = record['step']
    shown = ' | '.join(f'{k} {record[k]:.4g}' for k in ('loss', 'lr') if k in record)
    eta = (self.total_steps - step) * self.batch_size / max(rate, 1e-9)
    print(f'step {step}/{self.total_steps} | {shown} | {rate:.0f} img/s | ETA {_duration(eta)}',
          file=sys.stderr, flush=True)

  def close(self) -> None:
    if self.enabled:
      self.jsonl.close()
      self.tb.close()


def _drop_records_after(path: pathlib.Path, step: int) -> None:
  """Keeps the records of steps <= `step`: a run resumed there logs the later ones again.

  A run killed after its last checkpoint logged steps it will now redo; without this they would appear
  twice. A line cut short by the kill is dropped too.
  """
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and record.get('step', 0) <= step:
      kept.append(line + '\n')
  tmp = path.with_suffix('.jsonl.tmp')
  tmp.write_text(''.join(kept))
  tmp.replace(path)  # atomic: a kill now leaves the old file or the new one
