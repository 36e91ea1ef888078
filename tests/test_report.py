"""The reports CLI on fabricated run directories: the comparison table and the curves."""
import json

import matplotlib.image
import pytest

from ssl_jax import report


def _run(path, *, base_lr, records, results):
  path.mkdir(parents=True)
  config = {'method': 'simclr', 'seed': 0, 'optimizer': {'name': 'sgd', 'base_lr': base_lr}}
  (path / 'config.json').write_text(json.dumps(config))
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  (path / 'results.json').write_text(json.dumps(results))
  return path


@pytest.fixture
def runs(tmp_path):
  a = _run(tmp_path / 'lr_small', base_lr=0.1,
           records=[{'step': s, 'loss': 5.0 - s, 'probe_top1': 0.1 * s, 'time': 1.7e9 + 2 * s}
                    for s in (1, 2, 3)],
           results={'knn_top1': 0.5,
                    'linear_eval': {'top1': 0.61, 'protocol': 'frozen', 'config': {'lr': 0.1}}})
  b = _run(tmp_path / 'lr_big', base_lr=0.3,
           records=[{'step': s, 'loss': 4.0 - s, 'knn_top1': 0.2 * s} for s in (2, 4)],
           results={'knn_top1': 0.7, 'steps': 4})
  return a, b


def test_table_has_the_differing_field_and_the_results(runs, tmp_path):
  png, md = report.write_report(runs, tmp_path / 'out')
  lines = md.read_text().splitlines()
  header = next(l for l in lines if l.startswith('| run'))
  columns = [c.strip() for c in header.strip('|').split('|')]
  assert columns == ['run', 'optimizer.base_lr', 'knn_top1', 'linear_eval.top1', 'steps']
  rows = {l.split('|')[1].strip(): [c.strip() for c in l.strip('|').split('|')] for l in lines
          if l.startswith('| lr_')}
  assert rows['lr_small'] == ['lr_small', '0.1', '0.5', '0.61', '-']
  assert rows['lr_big'] == ['lr_big', '0.3', '0.7', '-', '4']
  # Panels for loss, probe_top1 and knn_top1; a second row against wall-clock since one run logged 'time'.
  height, width = matplotlib.image.imread(png).shape[:2]
  assert png.name == 'report_curves.png' and (height, width) == (640, 1350)


def test_runs_without_wall_clock_are_plotted_against_step_only(runs, tmp_path):
  png = report.plot_runs(runs[1:], tmp_path / 'one.png')
  assert matplotlib.image.imread(png).shape[:2] == (320, 900)  # loss and knn_top1, one row
  assert report.elapsed_seconds({'time': 12.5}, start=10.0) == 2.5
  assert report.elapsed_seconds({'wall_time_s': 7.0}, start=None) == 7.0
  assert report.elapsed_seconds({'step': 1}, start=None) is None


def test_cli_and_the_trainers_per_run_plot(runs, tmp_path, capsys):
  assert report.main([str(r) for r in runs] + ['--out', str(tmp_path / 'cli')]) == 0
  assert '| lr_big | 0.3 |' in capsys.readouterr().out
  assert (tmp_path / 'cli' / 'report.md').exists() and (tmp_path / 'cli' / 'report_curves.png').exists()
  assert report.plot_metrics(runs[0]).stat().st_size > 1000
  assert report.main([str(tmp_path / 'missing')]) == 2
  assert 'not a run directory' in capsys.readouterr().err
