"""Progress lines: '[<seconds> s] what', a line per unit or at most every N seconds, an ETA, off on demand."""
import re

from ssl_jax import progress

LINE = r'^\[ *\d+\.\d s\] '


def test_a_line_per_unit_with_eta_then_done(capsys):
  phase = progress.Progress('fine-tuning: epoch', 3, every=0)
  for done in (1, 2, 3):
    phase.update(done, f'top1 0.{done}')
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 3
  assert re.match(LINE + r'fine-tuning: epoch 1/3 \| top1 0\.1 \| ETA \d+m\d\ds$', lines[0]), lines
  assert re.match(LINE + r'fine-tuning: epoch 3/3 \| top1 0\.3 \| done in \d+m\d\ds$', lines[2]), lines


def test_short_phases_print_only_what_they_must(capsys, monkeypatch):
  assert list(progress.counted(iter(range(5)), 'features: batch', 5, every=3600)) == list(range(5))
  assert capsys.readouterr().err == ''  # a short extraction prints nothing
  phase = progress.Progress('linear evaluation: epoch', 100, every=3600)
  for done in range(1, 101):
    phase.update(done)
  assert re.fullmatch(LINE + r'linear evaluation: epoch 100/100 \| done in \d+m\d\ds\n', capsys.readouterr().err)
  monkeypatch.setattr(progress, 'enabled', False)  # processes other than 0
  progress.note('reading the data')
  assert capsys.readouterr().err == ''


def test_durations():
  assert [progress.duration(s) for s in (7, 750, 7500)] == ['0m07s', '12m30s', '2h05m']
