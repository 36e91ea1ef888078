"""Run reports: metrics.jsonl -> PNG curves, and several runs -> one figure and a markdown comparison table.

    python -m ssl_jax.report DIR [DIR ...] [--out OUT]

writes `OUT/report_curves.png` (loss, online-probe and kNN accuracy of every run against step, and against
wall-clock time when the records carry one) and `OUT/report.md` (one row per run: the config fields that
differ between the runs, then the numeric results of results.json, including the 'linear_eval' and 'finetune'
blocks the evaluation CLIs add). OUT defaults to the run's directory for one run, to `./report` for several.
Wall-clock: a record's `wall_time_s` / `elapsed_s` (seconds since the start) or `time` (a Unix timestamp) is
used when present; runs whose records carry none are plotted against step only.

    python -m ssl_jax.report DIR [DIR ...] --baseline BASE_DIR [--out OUT]

also compares the training efficiency of each run against the baseline run (a sweep writes the same with its
own --baseline): OUT/time_to_accuracy.md (and .json, .png): each run's final kNN top-1, the first evaluated
step at which it reaches the baseline's final kNN top-1 and that step as a fraction of the baseline's, the
training wall-clock to get there (from metrics.jsonl's time stamps, compilation and kNN evaluations left out),
and seconds per training step with its ratio to the baseline's. The runs must evaluate on the same data with
the same k, each with a kNN curve (eval_every_steps > 0). The wall-clock assumes uninterrupted runs.
Exit codes: 0 done; 2 bad input (one line on stderr).
"""
import argparse
import collections
import json
import pathlib
import statistics
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


# ----------------------------------------------------------------------------------------------- time to accuracy
Point = collections.namedtuple('Point', 'step seconds top1')
# Fields that must agree for kNN scores to be comparable.
_MUST_AGREE = ('data.name', 'data.eval_split', 'data.image_size', 'eval.knn_ks', 'eval.knn_bank_size')


def first_reaching(curve, threshold: float) -> Point | None:
  """The first point of `curve` (in step order) whose top-1 reaches `threshold`, or None.

  Args:
    curve: Points (step, seconds, top1) in increasing step order.
    threshold: the accuracy to reach (a tiny tolerance absorbs float noise in equal fractions).

  Returns:
    The first Point with top1 >= threshold, or None when no point gets there.
  """
  return next((p for p in curve if p.top1 >= threshold - 1e-9), None)


def seconds_per_step(records: list[dict]) -> float | None:
  """Median seconds per training step over the log intervals of `records` (metrics.jsonl order).

  An interval runs from any record to the next log record (one with 'loss'); a kNN evaluation is written as
  its own record after it is computed, so intervals starting there hold no evaluation. The interval before
  the first log record holds the compilation and is left out. None when there is no such interval.
  """
  rates = [(r['time'] - p['time']) / (r['step'] - p['step'])
           for p, r in zip(records, records[1:]) if 'loss' in r and r['step'] > p['step']]
  return statistics.median(rates) if rates else None


def training_seconds(records: list[dict], sps: float | None) -> list[float]:
  """The training wall-clock at each record of `records` (metrics.jsonl order), without compile and eval time.

  Time between consecutive records is measured where the later one is a log record (one with 'loss') at a
  later step: a kNN evaluation is written as its own record once computed, so such an interval holds
  training only. Steps in other intervals (those before the first record, which hold the compilation, and
  those ending in an evaluation record) are counted at `sps` seconds each. Records at an equal or earlier step
  (an evaluation after its log record, steps logged again after a resume) add nothing.

  Args:
    records: the run's metrics records, each with 'step' and 'time'.
    sps: steady seconds per step (`seconds_per_step`); 0 is used when None.

  Returns:
    One cumulative number of seconds per record.
  """
  total, out, prev = 0.0, [], None
  for r in records:
    if prev is None:
      total += r['step'] * (sps or 0.0)
    elif r['step'] > prev['step']:
      total += r['time'] - prev['time'] if 'loss' in r else (r['step'] - prev['step']) * (sps or 0.0)
    out.append(total)
    prev = r
  return out


def knn_curve(workdir) -> tuple[list[Point], float | None, int]:
  """kNN top-1 of a run against step and training wall-clock, ending with its final score; its step time.

  Args:
    workdir: a run directory (metrics.jsonl, and results.json when the run finished).

  Returns:
    (Points in step order, seconds per step or None, the last step trained). Seconds are
    `training_seconds`. The final score (results.json) is placed at the last step, at the training time of
    its last log record.
  """
  workdir = pathlib.Path(workdir)
  records = [r for r in read_metrics(workdir) if 'time' in r]
  if not records:
    return [], None, 0
  sps = seconds_per_step(records)
  seconds = training_seconds(records, sps)
  by_step = {r['step']: Point(r['step'], t, r['knn_top1'])
             for r, t in zip(records, seconds) if 'knn_top1' in r}
  results = _read_json(workdir / 'results.json')
  if 'knn_top1' in results:
    t_last = max((t for r, t in zip(records, seconds) if 'loss' in r), default=seconds[-1])
    by_step[results['steps']] = Point(results['steps'], t_last, results['knn_top1'])
  return [by_step[s] for s in sorted(by_step)], sps, max(r['step'] for r in records)


def _ratio(a, b):
  return a / b if a is not None and b else None


def time_to_accuracy(curves: dict, baseline: str, steps_per_epoch: dict | None = None) -> dict:
  """Every run's efficiency against the baseline's final kNN top-1.

  Args:
    curves: {run name: (points, seconds per step, steps)}, as `knn_curve` returns, the baseline among them.
    baseline: the baseline's run name.
    steps_per_epoch: {run name: steps per epoch} where known, for the epoch of the reaching step.

  Returns:
    {'threshold': the baseline's final top-1, 'baseline': its name, 'runs': {name: {final_top1, steps,
    final_top1_step, reach_step, reach_epoch, reach_seconds, seconds_per_step, steps_fraction (reach_step /
    the baseline's), step_time_ratio (seconds per step / the baseline's)}}}; None where a run never reached
    the threshold or a time is unknown.
  """
  empty = [name for name, curve in curves.items() if not curve[0]]
  if empty:
    raise UserError(f'{", ".join(empty)}: no kNN scores in metrics.jsonl; set eval_every_steps > 0 and train '
                    'again')
  threshold = curves[baseline][0][-1].top1
  runs = {}
  for name, (points, sps, steps) in curves.items():
    hit, spe = first_reaching(points, threshold), (steps_per_epoch or {}).get(name)
    runs[name] = {'final_top1': points[-1].top1, 'steps': steps, 'final_top1_step': points[-1].step,
                  'reach_step': hit.step if hit else None,
                  'reach_epoch': hit.step / spe if hit and spe else None,
                  'reach_seconds': hit.seconds if hit else None, 'seconds_per_step': sps}
  for r in runs.values():
    r['steps_fraction'] = _ratio(r['reach_step'], runs[baseline]['reach_step'])
    r['step_time_ratio'] = _ratio(r['seconds_per_step'], runs[baseline]['seconds_per_step'])
  return {'threshold': threshold, 'baseline': baseline, 'runs': runs}


def _fmt(value, spec: str = '.4g', unit: str = '') -> str:
  return 'not reached' if value is None else f'{value:{spec}}{unit}'


def time_to_accuracy_markdown(summary: dict) -> str:
  """The comparison as a markdown table, one column per run (the baseline first), and the figure."""
  runs = summary['runs']
  names = [summary['baseline'], *[n for n in runs if n != summary['baseline']]]
  epoch = lambda r: f' (epoch {r["reach_epoch"]:.3g})' if r['reach_epoch'] else ''
  rows = [
      ('final kNN top-1 (at step)', lambda r: f"{r['final_top1']:.2%} ({r['final_top1_step']})"),
      ('steps trained', lambda r: str(r['steps'])),
      (f'first step reaching the baseline\'s final {summary["threshold"]:.2%}',
       lambda r: _fmt(r['reach_step'], 'd') + epoch(r)),
      ('steps to reach it / the baseline\'s', lambda r: _fmt(r['steps_fraction'], '.3g')),
      ('training wall-clock to reach it (no compile, no eval)', lambda r: _fmt(r['reach_seconds'], '.1f', ' s')),
      ('seconds per training step', lambda r: _fmt(r['seconds_per_step'], '.4g')),
      ('step time / the baseline\'s', lambda r: _fmt(r['step_time_ratio'], '.3g')),
  ]
  header = ['', *[f'{n} (baseline)' if n == summary['baseline'] else n for n in names]]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join([label, *[cell(runs[n]) for n in names]]) + ' |' for label, cell in rows]
  return '\n'.join(['# Time to the baseline\'s accuracy', '', *lines, '',
                    '![kNN top-1 against steps and training wall-clock](time_to_accuracy.png)', ''])


def check_comparable(configs: dict) -> None:
  """UserError unless the runs ({name: config as a nested dict}) evaluate alike (the _MUST_AGREE fields)."""
  flat = {name: flatten(c) for name, c in configs.items()}
  for key in _MUST_AGREE:
    values = {name: json.dumps(c.get(key)) for name, c in flat.items()}
    if len(set(values.values())) > 1:
      raise UserError(f'the runs differ in {key} ({", ".join(f"{n}: {v}" for n, v in values.items())}): their '
                      'kNN scores would not be comparable; use the same evaluation data and k')


def write_time_to_accuracy(workdirs, baseline, out, steps_per_epoch: dict | None = None) -> pathlib.Path:
  """Writes time_to_accuracy.md, .json and .png comparing `workdirs` with `baseline` (one of them) into `out`.

  Args:
    workdirs: the runs' directories; each is named by its directory name.
    baseline: the baseline run's directory.
    out: the output directory.
    steps_per_epoch: {run name: steps per epoch} where known.

  Returns:
    The markdown file's path.
  """
  workdirs = [pathlib.Path(w) for w in workdirs]
  baseline = pathlib.Path(baseline)
  if baseline not in workdirs:
    workdirs.insert(0, baseline)
  check_comparable({w.name: _read_json(w / 'config.json') for w in workdirs})
  curves = {w.name: knn_curve(w) for w in workdirs}
  summary = time_to_accuracy(curves, baseline.name, steps_per_epoch)
  panels = []
  for x, label in ((0, 'step'), (1, 'training wall-clock (s)')):
    lines = {name: [(p[x], p.top1) for p in curve[0]] for name, curve in curves.items()}
    end = max(p[x] for curve in curves.values() for p in curve[0])
    lines["baseline's final"] = [(0, summary['threshold']), (end, summary['threshold'])]
    panels.append(('kNN top-1', label, lines))
  out = pathlib.Path(out)
  plot_panels([panels], out / 'time_to_accuracy.png')
  (out / 'time_to_accuracy.json').write_text(json.dumps(summary, indent=2))
  md = out / 'time_to_accuracy.md'
  md.write_text(time_to_accuracy_markdown(summary))
  return md


def main(argv=None) -> int:
  """`python -m ssl_jax.report DIR [DIR ...] [--baseline DIR] [--out OUT]`; returns the exit code."""
  parser = argparse.ArgumentParser(prog='python -m ssl_jax.report', description=__doc__.splitlines()[0])
  parser.add_argument('workdirs', nargs='+', help='run directories')
  parser.add_argument('--out', default=None, help='output directory')
  parser.add_argument('--baseline', default=None, help='a run directory: time to its accuracy for every run')
  args = parser.parse_args(argv)
  try:
    png, md = write_report(args.workdirs, args.out)
    tta = args.baseline and write_time_to_accuracy(args.workdirs, args.baseline, md.parent)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(md.read_text().split('\n\n', 2)[-1], end='')
  if tta:
    print(tta.read_text(), end='')
  print(f'wrote {png} and {md}' + (f' and {tta}' if tta else ''))
  return 0


if __name__ == '__main__':
  sys.exit(main())
