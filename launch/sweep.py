r"""A grid of runs: run them one after another here, or print one command per run for a cluster.

    python launch/sweep.py --config FILE[:ARG] --grid 'KEY=V1,V2,...' [--grid 'KEY2=W1,W2'] \
        --workdir DIR [--config.KEY3=VALUE ...] [--baseline NAME] [--print | --collect]

Every combination of the --grid values (the cartesian product, the first --grid varying slowest) is one
ordinary training run (`ssl_jax.train.train_and_evaluate`, what `python -m ssl_jax.main` runs) in
DIR/<name>, where <name> lists the run's grid values, e.g. DIR/fusion.num_layers=2. A grid KEY is
  * a config field (`fusion.num_layers`, `method`, ...), set as `--config.KEY=VALUE` would set it;
  * `config`: the recipe itself, one FILE[:ARG] or NAME[:ARG] per value (quote a value whose argument holds
    commas: --grid "config='rotation_digits:runlocal,rotation=false',rotation_digits:runlocal");
  * `config:ARG`: one argument of the recipe, e.g. the framework of recipes that take one
    (--grid 'config:framework=simclr,byol') or an add-on switch (--grid 'config:rotation=false,true').
`--config.KEY=VALUE` flags are applied to every run, as on the `ssl_jax.main` command line. A run that already
has results.json is skipped, so running the same line again resumes an interrupted sweep (an unfinished run
resumes from its checkpoint). Afterwards DIR/sweep.md holds one row per run (the grid values and the numeric
results of results.json, via `ssl_jax.report`), DIR/sweep.png the final accuracies against the first grid key
and DIR/sweep_curves.png the training curves.

  --baseline NAME  time-to-accuracy of every run against run NAME (its directory name, e.g.
                   'config:rotation=false'): DIR/time_to_accuracy.md, .json and .png (`ssl_jax.report`); the
                   runs need a kNN curve (eval_every_steps > 0) and the same evaluation data and k
  --print    only print one `python -m ssl_jax.main` command per run (e.g. to submit them to a cluster)
  --collect  only write sweep.md and the plots from the runs found in DIR

A baseline against a candidate, e.g. the rotation add-on against its framework alone:
  python launch/sweep.py --config rotation_digits --grid 'config:rotation=false,true' \
      --baseline config:rotation=false --workdir runs/rotation_digits
Grid values are split at commas outside brackets and quotes, so tuples work:
  --grid 'augment.crop_scale=(0.2, 1.0),(0.08, 1.0)'
Exit codes: 0 done; 2 bad input (one line on stderr; the grid, the recipes and the fields are checked before
any run starts); 1 a run's loss became non-finite (the other runs still ran).
"""
import argparse
import itertools
import json
import pathlib
import re
import shlex
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from absl import logging  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from ssl_jax import recipes, report  # noqa: E402
from ssl_jax.config_schema import flatten  # noqa: E402
from ssl_jax.errors import NonFiniteLoss, UserError  # noqa: E402

_UNSAFE = re.compile(r'[^\w.+-]+')


def split_values(text: str) -> list[str]:
  """"a,(1, 2),'b,c'" -> ['a', '(1, 2)', 'b,c']: commas inside brackets or quotes do not split; a value's
  enclosing quotes are removed."""
  values, depth, quote, start = [], 0, '', 0
  for i, ch in enumerate(text):
    if quote:
      quote = '' if ch == quote else quote
    elif ch in '\'"':
      quote = ch
    else:
      depth += (ch in '([{') - (ch in ')]}')
      if ch == ',' and depth == 0:
        values.append(text[start:i].strip())
        start = i + 1
  values.append(text[start:].strip())
  unquote = lambda v: v[1:-1] if len(v) > 1 and v[0] == v[-1] and v[0] in '\'"' else v
  return [unquote(v) for v in values]


def parse_grid(text: str) -> tuple[str, list[str]]:
  """'KEY=V1,V2' -> ('KEY', ['V1', 'V2'])."""
  key, sep, values = text.partition('=')
  if not sep or not key.strip() or not values.strip():
    raise UserError(f"--grid {text!r} is not KEY=V1,V2,...; e.g. --grid 'fusion.num_layers=0,1,2'")
  return key.strip(), split_values(values)


def run_name(assignments) -> str:
  """'fusion.num_layers=2,model.name=resnet18': the run's grid values, safe as a directory name."""
  safe = lambda value: _UNSAFE.sub('_', value).strip('_')
  return ','.join(f'{key}={safe(value)}' for key, value in assignments)


def with_recipe_arg(spec: str, name: str, value: str) -> str:
  """`spec` ('FILE[:ARG]') with its recipe argument `name` set to `value` ('rotation_digits:runlocal',
  'rotation', 'false' -> 'rotation_digits:runlocal,rotation=false')."""
  path, _, arg = spec.partition(':')
  kept = [part for part in arg.split(',') if part and part.partition('=')[0] != name]
  return f'{path}:{",".join([*kept, f"{name}={value}"])}'


def run_spec(spec: str, assignments) -> str:
  """The recipe of one run: `spec`, or the value of a `config` axis, with the values of `config:ARG` axes."""
  for key, value in assignments:
    if key == 'config':
      spec = value
  for key, value in assignments:
    if key.startswith('config:'):
      spec = with_recipe_arg(spec, key[len('config:'):], value)
  return spec


def plan(spec: str, grids: list[str], overrides: list[str]) -> list[tuple[str, list, object]]:
  """Every run of the sweep as (name, its grid assignments, its config); every value checked up front."""
  axes = [parse_grid(g) for g in grids]
  fixed = recipes.split_overrides(overrides)['config']
  runs = []
  for values in itertools.product(*[values for _, values in axes]):
    assignments = [(key, value) for (key, _), value in zip(axes, values)]
    fields = [f'{key}={value}' for key, value in assignments if key != 'config' and ':' not in key]
    config = recipes.load_with(run_spec(spec, assignments), fixed + fields)
    runs.append((run_name(assignments), assignments, config))
  names = [name for name, _, _ in runs]
  if len(set(names)) != len(names):
    raise UserError('two grid values give the same run directory name; make the values differ in letters or '
                    'digits')
  return runs


def command(spec: str, workdir: pathlib.Path, assignments, overrides: list[str]) -> str:
  """The `python -m ssl_jax.main` command line of one run."""
  parts = ['python', '-m', 'ssl_jax.main', '--config', run_spec(spec, assignments), '--workdir', str(workdir),
           *overrides]
  parts += [f'--config.{key}={value}' for key, value in assignments if key != 'config' and ':' not in key]
  return ' '.join(shlex.quote(p) for p in parts)


def run_all(runs, workdir: pathlib.Path) -> list[str]:
  """Trains every run without results.json, one after another; returns the names of the failed runs."""
  from ssl_jax import train  # pylint: disable=g-import-not-at-top  (JAX starts only when runs are trained)
  failed = []
  for i, (name, _, config) in enumerate(runs, 1):
    if (workdir / name / 'results.json').exists():
      print(f'[{i}/{len(runs)}] {name}: done before, skipped')
      continue
    print(f'[{i}/{len(runs)}] {name}', flush=True)
    try:
      train.train_and_evaluate(config, workdir / name)
    except NonFiniteLoss as e:
      print(f'[{i}/{len(runs)}] {name} failed: {e}', file=sys.stderr)
      failed.append(name)
  return failed


def plot_results(runs, workdir: pathlib.Path, out: pathlib.Path) -> pathlib.Path | None:
  """Final accuracies (`*top1` results) against the first grid key, one line per value of the other keys."""
  points = {}
  for name, assignments, _ in runs:
    path = workdir / name / 'results.json'
    results = flatten(json.loads(path.read_text())) if path.exists() else {}
    for metric, value in results.items():
      if metric.endswith('top1') and isinstance(value, (int, float)) and not metric.startswith('random_init'):
        line = ','.join(f'{k}={v}' for k, v in assignments[1:]) or metric
        points.setdefault(metric, {}).setdefault(line, []).append((assignments[0][1], value))
  if not points:
    return None
  fig, axes = plt.subplots(1, len(points), figsize=(4.5 * len(points), 3.2), squeeze=False)
  for ax, (metric, lines) in zip(axes[0], sorted(points.items())):
    for line, xy in lines.items():
      ax.plot([x for x, _ in xy], [y for _, y in xy], marker='o', label=line)
    ax.set_xlabel(runs[0][1][0][0])
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def check_baseline(runs, baseline: str) -> None:
  """UserError unless `baseline` names a run and every run has a kNN curve that the baseline's can score."""
  names = [name for name, _, _ in runs]
  if baseline not in names:
    raise UserError(f'--baseline {baseline!r} is not a run of this sweep; use one of: {", ".join(names)}')
  for name, _, config in runs:
    if config.eval_every_steps <= 0:
      raise UserError(f'run {name} evaluates only at the end (eval_every_steps={config.eval_every_steps}); give '
                      'it a kNN curve for --baseline, e.g. --config.eval_every_steps=10')
  report.check_comparable({name: config.to_dict() for name, _, config in runs})


def steps_per_epoch(config) -> int:
  """Full global batches per epoch of the run's training split."""
  from ssl_jax import data, methods  # pylint: disable=g-import-not-at-top
  source = data.get_source(config.data, split=config.data.train_split, train=True,
                           crops=methods.get_method(config).host_crops(config))
  return source.steps_per_epoch(config.batch_size)


def collect(runs, workdir: pathlib.Path, spec: str, baseline: str | None = None) -> pathlib.Path:
  """Writes DIR/sweep.md (results table), DIR/sweep.png and DIR/sweep_curves.png, and with `baseline`
  DIR/time_to_accuracy.md (.json, .png); returns sweep.md."""
  present = [workdir / name for name, _, _ in runs if (workdir / name / 'config.json').exists()]
  missing = [name for name, _, _ in runs if not (workdir / name / 'results.json').exists()]
  lines = [f'# Sweep of `{spec}`', '']
  if present:
    if plot_results(runs, workdir, workdir / 'sweep.png'):
      lines += ['![final results](sweep.png)', '']
    report.plot_runs(present, workdir / 'sweep_curves.png')
    lines += ['![training curves](sweep_curves.png)', '', report.comparison_table(present)]
  if baseline and not missing:
    spe = {name: steps_per_epoch(config) for name, _, config in runs}
    report.write_time_to_accuracy(present, workdir / baseline, workdir, spe)
    lines += [f'Time to the accuracy of {baseline}: [time_to_accuracy.md](time_to_accuracy.md)', '']
  if missing:
    lines += [f'Runs without results yet: {", ".join(missing)}', '']
  out = workdir / 'sweep.md'
  out.write_text('\n'.join(lines))
  return out


def main(argv=None) -> int:
  """The command line; returns the exit code."""
  parser = argparse.ArgumentParser(prog='python launch/sweep.py', description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True, help='recipe: FILE.py[:ARG] or NAME[:ARG]')
  parser.add_argument('--grid', action='append', required=True, help="KEY=V1,V2,... (repeatable)")
  parser.add_argument('--workdir', required=True, help='the sweep directory; run i trains in DIR/<name>')
  parser.add_argument('--baseline', default=None, help='a run name: time to its accuracy for every run')
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument('--print', action='store_true', help='print one ssl_jax.main command per run and exit')
  mode.add_argument('--collect', action='store_true', help='only tabulate and plot the runs in DIR')
  args, overrides = parser.parse_known_args(argv)
  logging.set_verbosity(logging.WARNING)
  workdir = pathlib.Path(args.workdir)
  try:
    runs = plan(args.config, args.grid, overrides)
    if args.baseline:
      check_baseline(runs, args.baseline)
    if args.print:
      for name, assignments, _ in runs:
        print(command(args.config, workdir / name, assignments, overrides))
      return 0
    failed = [] if args.collect else run_all(runs, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = collect(runs, workdir, args.config, args.baseline)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {out}')
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
