"""Run reports: metrics.jsonl -> PNG curves, and several runs -> one figure and a markdown comparison table.

    python -m ssl_jax.report DIR [DIR ...] [--out OUT]

writes `OUT/report_curves.png` (loss, online-probe and kNN accuracy of every run against step, and against
wall-clock time when the records carry one) and `OUT/report.md` (one row per run: the config fields that
differ between the runs, then the numeric results of results.json, including the 'linear_eval' and 'finetune'
blocks the evaluation CLIs add). OUT defaults to the run's directory for one run, to `./report` for several.
Wall-clock: a record's `wall_time_s` / `elapsed_s` (seconds since the start) or `time` (a Unix timestamp) is
used when present; runs whose records carry none are plotted against step only.
Exit codes: 0 done; 2 bad input (one line on stderr).
"""
import argparse
import json
import pathlib
import sys

import matplotlib

matplotlib.use('Agg')  # files only; no display on training machines
import matplotlib.pyplot as plt

from ssl_jax import paths
from ssl_jax.config_schema import flatten
from ssl_jax.errors import UserError

CURVES = ('loss', 'probe_top1', 'knn_top1')
_ELAPSED_KEYS = ('wall_time_s', 'elapsed_s')


def read_metrics(workdir) -> list[dict]:
  """The records of `<workdir>/metrics.jsonl` (an empty list when there is none)."""
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_metrics(workdir, keys=('loss', 'lr', 'probe_top1', 'knn_top1')) -> pathlib.Path:
  """Writes `<workdir>/curves.png`: one panel per metric in `keys` that the run logged, against step."""
  records = read_metrics(workdir)
  present = [k for k in keys if any(k in r for r in records)]
  fig, axes = plt.subplots(1, max(len(present), 1), figsize=(4.5 * max(len(present), 1), 3.2), squeeze=False)
  for ax, key in zip(axes[0], present):
    points = [(r['step'], r[key]) for r in records if key in r]
    ax.plot(*zip(*points), marker='.' if len(points) < 30 else None)
    ax.set_xlabel('step')
    ax.set_title(key)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  out = pathlib.Path(workdir) / 'curves.png'
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def elapsed_seconds(record: dict, start: float | None) -> float | None:
  """Seconds since the run started for one record, or None when the record carries no wall-clock time."""
  for key in _ELAPSED_KEYS:
    if key in record:
      return float(record[key])
  if 'time' in record and start is not None:
    return float(record['time']) - start
  return None


def _series(records: list[dict], key: str, x: str) -> list[tuple[float, float]]:
  start = min((r['time'] for r in records if 'time' in r), default=None)
  points = []
  for r in records:
    position = r['step'] if x == 'step' else elapsed_seconds(r, start)
    if key in r and position is not None:
      points.append((position, r[key]))
  return points


def plot_runs(workdirs, out_path) -> pathlib.Path:
  """One figure comparing runs: a row of panels against step, and one against wall-clock when known.

  Args:
    workdirs: the runs' directories; each is labelled by its directory name.
    out_path: the PNG to write.

  Returns:
    out_path.
  """
  runs = {pathlib.Path(w).name: read_metrics(w) for w in workdirs}
  keys = [k for k in CURVES if any(k in r for records in runs.values() for r in records)] or ['loss']
  axes_x = ['step'] + (['time'] if any(_series(rs, k, 'time') for rs in runs.values() for k in keys) else [])
  rows = [[(key, 'step' if x == 'step' else 'wall-clock (s)',
            {name: _series(records, key, x) for name, records in runs.items()}) for key in keys]
          for x in axes_x]
  return plot_panels(rows, out_path)


def plot_panels(rows, out_path) -> pathlib.Path:
  """A grid of line plots: each panel draws several labelled curves.

  Args:
    rows: the figure's rows, each a list of panels (title, x label, {curve label: [(x, y), ...]}); empty
      curves are left out.
    out_path: the PNG to write.

  Returns:
    out_path.
  """
  ncols = max(len(row) for row in rows)
  fig, axes = plt.subplots(len(rows), ncols, figsize=(4.5 * ncols, 3.2 * len(rows)), squeeze=False)
  for row, panels in zip(axes, rows):
    for ax, (title, xlabel, curves) in zip(row, panels):
      for label, points in curves.items():
        if points:
          ax.plot(*zip(*points), marker='.' if len(points) < 30 else None, label=label)
      ax.set_xlabel(xlabel)
      ax.set_title(title)
      ax.grid(alpha=0.3)
      if ax.has_data():
        ax.legend(fontsize='small')
  fig.tight_layout()
  out_path = pathlib.Path(out_path)
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text()) if path.exists() else {}
  except json.JSONDecodeError:
    raise UserError(f'{path} is not valid JSON; fix or delete it') from None


def _cell(value) -> str:
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value).replace('|', '\\|')


def comparison_table(workdirs) -> str:
  """A markdown table with one row per run: the config fields that differ between the runs, then the results.

  Args:
    workdirs: the runs' directories, each with config.json and (after a finished run) results.json.

  Returns:
    The table as markdown text. Result columns are the numeric entries of results.json (nested blocks such as
    'linear_eval' flattened to 'linear_eval.top1'); a run without a value shows '-'.
  """
  configs = [flatten(_read_json(pathlib.Path(w) / 'config.json')) for w in workdirs]
  results = [flatten(_read_json(pathlib.Path(w) / 'results.json')) for w in workdirs]
  fields = sorted({k for c in configs for k in c})
  differing = [k for k in fields if len({json.dumps(c.get(k)) for c in configs}) > 1]
  numeric = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  result_keys = []
  for r in results:
    result_keys += [k for k, v in r.items() if numeric(v) and '.config.' not in k and k not in result_keys]
  header = ['run', *differing, *result_keys]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for w, c, r in zip(workdirs, configs, results):
    row = [pathlib.Path(w).name] + [_cell(c.get(k, '-')) for k in differing] + [_cell(r.get(k, '-'))
                                                                               for k in result_keys]
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines) + '\n'


def write_report(workdirs, out=None) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `curves.png` and `report.md` comparing `workdirs` into `out`.

  Args:
    workdirs: one or more run directories (relative, absolute, `~`, or a checkpoint inside one).
    out: the output directory; the run's own directory for one run, `./report` for several, when None.

  Returns:
    (png path, markdown path).
  """
  workdirs = [paths.workdir_of(w) for w in workdirs]  # relative, `~`, or a run's checkpoint: its run
  missing = [str(w) for w in workdirs
             if not (w / 'metrics.jsonl').exists() and not (w / 'config.json').exists()]
  if not workdirs or missing:
    raise UserError(f'not a run directory (no metrics.jsonl or config.json): '
                    f'{", ".join(missing) or "none given"}; pass the --workdir of training runs')
  out = paths.user_path(out) if out else (workdirs[0] if len(workdirs) == 1 else pathlib.Path('report'))
  out.mkdir(parents=True, exist_ok=True)
  # A different name from the trainer's per-run curves.png, so a one-run report does not overwrite it.
  png = plot_runs(workdirs, out / 'report_curves.png')
  table = comparison_table(workdirs)
  md = out / 'report.md'
  md.write_text(f'# Runs compared\n\n![curves]({png.name})\n\n{table}')
  return png, md


def main(argv=None) -> int:
  """`python -m ssl_jax.report DIR [DIR ...] [--out OUT]`; returns the exit code."""
  parser = argparse.ArgumentParser(prog='python -m ssl_jax.report', description=__doc__.splitlines()[0])
  parser.add_argument('workdirs', nargs='+', help='run directories')
  parser.add_argument('--out', default=None, help='output directory')
  args = parser.parse_args(argv)
  try:
    png, md = write_report(args.workdirs, args.out)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(md.read_text().split('\n\n', 2)[-1], end='')
  print(f'wrote {png} and {md}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
