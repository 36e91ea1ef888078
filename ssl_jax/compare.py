r"""Training efficiency of one recipe against another: steps and wall-clock to reach the baseline's accuracy.

    python -m ssl_jax.compare --workdir DIR --baseline configs/A.py[:ARG] --candidate configs/B.py[:ARG] \
        [--set KEY=VALUE ...] [--baseline_set KEY=VALUE ...] [--candidate_set KEY=VALUE ...]

Trains both recipes (`--set` overrides apply to both, `--baseline_set` / `--candidate_set` to one; values
are read as `--config.KEY=VALUE` flags are) as ordinary resumable runs in DIR/baseline and DIR/candidate, one
after the other in this process, each scored by the kNN monitor every `eval_every_steps` and at the end. A
run that already has results.json (with the same config) is not trained again; an unfinished one resumes.
Then it prints and writes DIR/compare.md:

  * the final kNN top-1 of each run;
  * the first evaluated step (and epoch) at which each run reaches the baseline's final kNN top-1, and the
    candidate's steps as a fraction of the baseline's;
  * the training wall-clock each needed to get there, measured from the time stamps of metrics.jsonl with
    compilation and kNN evaluations left out (`training_seconds`);
  * seconds per training step of each (the median over log intervals that hold no evaluation and follow
    the first, compiled, one) and their ratio, candidate / baseline: the extra cost per step;

and DIR/compare.png, kNN top-1 against steps and against training wall-clock for both runs. Both runs must
evaluate on the same data with the same k. The wall-clock assumes uninterrupted runs (a run resumed after a
pause counts the pause).
Exit codes: 0 done; 2 bad input (one line on stderr, checked before either run starts); 1 a loss became
non-finite; 143 stopped by SIGTERM/SIGINT (run the same command again to resume).

Example, the rotation add-on against its framework (configs/rotation_digits.py):
    python -m ssl_jax.compare --workdir /tmp/rotation_digits \
        --baseline configs/rotation_digits.py:rotation=false --candidate configs/rotation_digits.py
"""
import argparse
import collections
import json
import os
import pathlib
import statistics
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from ssl_jax import recipes, report  # noqa: E402
from ssl_jax.errors import NonFiniteLoss, Preempted, UserError  # noqa: E402

Point = collections.namedtuple('Point', 'step seconds top1')
_MUST_AGREE = ('data.name', 'data.eval_split', 'data.image_size', 'eval.knn_ks', 'eval.knn_bank_size')


# ----------------------------------------------------------------------------------------------- analysis
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
  records = [r for r in report.read_metrics(workdir) if 'time' in r]
  if not records:
    return [], None, 0
  sps = seconds_per_step(records)
  seconds = training_seconds(records, sps)
  by_step = {r['step']: Point(r['step'], t, r['knn_top1'])
             for r, t in zip(records, seconds) if 'knn_top1' in r}
  results_path = workdir / 'results.json'
  results = json.loads(results_path.read_text()) if results_path.exists() else {}
  if 'knn_top1' in results:
    t_last = max((t for r, t in zip(records, seconds) if 'loss' in r), default=seconds[-1])
    by_step[results['steps']] = Point(results['steps'], t_last, results['knn_top1'])
  return [by_step[s] for s in sorted(by_step)], sps, max(r['step'] for r in records)


def summarize(curves: dict, steps_per_epoch: dict) -> dict:
  """The comparison's numbers from both runs' curves.

  Args:
    curves: {'baseline': (points, seconds per step, steps), 'candidate': (...)}, as `knn_curve` returns.
    steps_per_epoch: {'baseline': int, 'candidate': int} (0 when unknown).

  Returns:
    {'threshold': the baseline's final top-1, 'baseline' / 'candidate': {final_top1, steps, reach_step,
    reach_epoch, reach_seconds, seconds_per_step}, 'step_time_ratio', 'steps_fraction'}; None where a run
    never reached the threshold or a time is unknown.
  """
  if not curves['baseline'][0] or not curves['candidate'][0]:
    raise UserError('a run has no kNN scores in its metrics.jsonl; set eval_every_steps > 0 and train again')
  threshold = curves['baseline'][0][-1].top1
  out = {'threshold': threshold}
  for name in recipes.PAIR:
    points, sps, steps = curves[name]
    hit, spe = first_reaching(points, threshold), steps_per_epoch.get(name)
    out[name] = {'final_top1': points[-1].top1, 'steps': steps, 'final_top1_step': points[-1].step,
                 'reach_step': hit.step if hit else None,
                 'reach_epoch': hit.step / spe if hit and spe else None,
                 'reach_seconds': hit.seconds if hit else None, 'seconds_per_step': sps}
  out['step_time_ratio'] = _ratio(out['candidate']['seconds_per_step'], out['baseline']['seconds_per_step'])
  out['steps_fraction'] = _ratio(out['candidate']['reach_step'], out['baseline']['reach_step'])
  return out


def _ratio(a, b):
  return a / b if a is not None and b else None

# ----------------------------------------------------------------------------------------------- output
def _fmt(value, spec: str = '.4g', unit: str = '') -> str:
  return 'not reached' if value is None else f'{value:{spec}}{unit}'


def markdown(summary: dict, specs: dict) -> str:
  """The comparison as a markdown page: the runs' recipes, one table, the figure."""
  b, c = summary['baseline'], summary['candidate']
  epoch = lambda r: f' (epoch {r["reach_epoch"]:.3g})' if r['reach_epoch'] else ''
  reach = lambda r: _fmt(r['reach_step'], 'd') + epoch(r)
  rows = [
      ('final kNN top-1 (at step)', f"{b['final_top1']:.2%} ({b['final_top1_step']})",
       f"{c['final_top1']:.2%} ({c['final_top1_step']})"),
      ('steps trained', str(b['steps']), str(c['steps'])),
      (f'first step reaching the baseline\'s final {summary["threshold"]:.2%}', reach(b), reach(c)),
      ('candidate steps / baseline steps to reach it', '1', _fmt(summary['steps_fraction'], '.3g')),
      ('training wall-clock to reach it (no compile, no eval)', _fmt(b['reach_seconds'], '.1f', ' s'),
       _fmt(c['reach_seconds'], '.1f', ' s')),
      ('seconds per training step', _fmt(b['seconds_per_step'], '.4g'), _fmt(c['seconds_per_step'], '.4g')),
      ('step time, candidate / baseline', '1', _fmt(summary['step_time_ratio'], '.3g')),
  ]
  lines = ['# Training efficiency: candidate against baseline', '',
           *[f'- {name}: `{spec}`' for name, spec in specs.items()], '',
           '| | baseline | candidate |', '|---|---|---|', *[f'| {a} | {x} | {y} |' for a, x, y in rows],
           '', '![kNN top-1 against steps and wall-clock](compare.png)', '']
  return '\n'.join(lines)


def plot(curves: dict, threshold: float, out_path) -> pathlib.Path:
  """compare.png: kNN top-1 of both runs against step and against wall-clock, and the threshold."""
  panels = []
  for x, label in ((0, 'step'), (1, 'training wall-clock (s)')):
    lines = {name: [(p[x], p.top1) for p in curves[name][0]] for name in recipes.PAIR}
    end = max(p[x] for name in recipes.PAIR for p in curves[name][0])
    lines["baseline's final"] = [(0, threshold), (end, threshold)]
    panels.append(('kNN top-1', label, lines))
  return report.plot_panels([panels], out_path)


# ----------------------------------------------------------------------------------------------- running
def prepare(args) -> tuple[dict, dict]:
  """Both runs' configs with their overrides (`recipes.load_pair`), checked before anything is trained.

  Returns:
    ({'baseline': ConfigDict, 'candidate': ConfigDict}, {the same names: the recipe and overrides as text}).
  """
  from ssl_jax import methods  # pylint: disable=g-import-not-at-top  (JAX only once the flags are fine)
  configs, specs = recipes.load_pair(args)
  for name, config in configs.items():
    if config.eval_every_steps <= 0:
      raise UserError(f'the {name} evaluates only at the end (eval_every_steps={config.eval_every_steps}); '
                      'give it a kNN curve, e.g. --set eval_every_steps=10')
    methods.get_method(config)  # add-on and method checks, before the baseline spends its time
  for key in _MUST_AGREE:
    block, field = key.split('.')
    values = [json.dumps(c.to_dict()[block][field]) for c in configs.values()]
    if values[0] != values[1]:
      raise UserError(f'baseline and candidate differ in {key} ({values[0]} vs {values[1]}): their kNN '
                      'scores would not be comparable; use the same evaluation data and k')
  return configs, specs


def train_or_reuse(config, workdir: pathlib.Path) -> None:
  """Trains (or resumes) the run in `workdir`; a finished run of the same config is left as it is."""
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  if (workdir / 'results.json').exists():
    saved = json.loads((workdir / 'config.json').read_text())
    if saved != json.loads(config.to_json()):
      raise UserError(f'{workdir} holds a finished run of another config; use a fresh --workdir')
    print(f'{workdir}: finished before, not trained again', file=sys.stderr)
    return
  train.train_and_evaluate(config, workdir)


def steps_per_epoch(config) -> int:
  """Full global batches per epoch of the run's training split."""
  from ssl_jax import data, methods  # pylint: disable=g-import-not-at-top
  source = data.get_source(config.data, split=config.data.train_split, train=True,
                           num_views=methods.get_method(config).num_views(config))
  return source.steps_per_epoch(config.batch_size)


def run(workdir, configs: dict, specs: dict) -> dict:
  """Trains both runs in `workdir`, writes compare.md and compare.png there; returns the summary."""
  workdir = pathlib.Path(workdir)
  for name in recipes.PAIR:
    train_or_reuse(configs[name], workdir / name)
  curves = {name: knn_curve(workdir / name) for name in recipes.PAIR}
  summary = summarize(curves, {name: steps_per_epoch(configs[name]) for name in recipes.PAIR})
  plot(curves, summary['threshold'], workdir / 'compare.png')
  (workdir / 'compare.md').write_text(markdown(summary, specs))
  (workdir / 'compare.json').write_text(json.dumps(summary, indent=2))
  return summary


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit code."""
  parser = argparse.ArgumentParser(prog='python -m ssl_jax.compare', description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='DIR: the runs go to DIR/baseline and DIR/candidate')
  recipes.add_pair_arguments(parser)
  args = parser.parse_args(argv)
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  try:
    configs, specs = prepare(args)
    run(args.workdir, configs, specs)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except NonFiniteLoss as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except Preempted as e:
    print(f'error: {e}', file=sys.stderr)
    return 143
  md = pathlib.Path(args.workdir) / 'compare.md'
  print(md.read_text(), end='')
  print(f'wrote {md}, {md.with_name("compare.png")} and {md.with_name("compare.json")}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
