r"""Step throughput, compile time and memory of one recipe on this machine, and its ratio against a second.

    python -m ssl_jax.benchmark --config FILE[:ARG] [--config.a.b=VALUE ...] \
        [--baseline FILE[:ARG] [--baseline.a.b=VALUE ...]] [--mode synthetic|pipeline|end_to_end] \
        [--steps 20] [--peak_tflops F] [--torch] [--out FILE.json]

The step is the trainer's own: built by `ssl_jax.train.setup` (the online probe off: it is a monitor, not part
of a method's step) and compiled for the recipe's first training batch.
Modes:
  synthetic   (default) the step fed a synthetic batch of the recipe's image shape that stays on the device:
              compile seconds, median step seconds (after two warm-up steps), views/s (batch x the views per
              example the method's `make_views` returns / step seconds), the compiled step's device memory
              (XLA memory analysis: arguments + outputs + temporaries - donated buffers; the temporaries
              alone are activations and gradients), FLOPs per step (XLA cost analysis of one device's
              program x devices), the achieved TFLOP/s and, with `--peak_tflops` (one device's peak), the
              fraction of it (MFU). `--steps 0`: compile and read the memory only, nothing runs.
  pipeline    the host input pipeline alone (tf.data for tfds datasets): images/s over `--steps` batches.
  end_to_end  the step compiled for the recipe's own data, timed on one of its batches kept on the device,
              then fed by the real input pipeline as in the trainer (no wait between steps): views/s and
              their ratio to the device-resident views/s (below 1: the step waits for data).
Variable-size recipes (host crops) run in synthetic mode at data.image_size with the crop on the device.

--baseline: the same measurements for a second recipe (its own overrides: --baseline.a.b=VALUE), then the
ratios --config / --baseline of step time, memory and temporaries; in synthetic mode both steps are compiled
first and then timed in turns (a step of one, a step of the other), so that a machine whose speed drifts
slows both alike. --xla OPTION=VALUE sets an XLA debug option for --config's program only: the same recipe as
--baseline then measures a compiler setting, e.g. ssl_jax's CPU default (ssl_jax/xla_defaults.py) against
jaxlib's own:
    SSL_JAX_XLA_DEFAULTS=0 python -m ssl_jax.benchmark --config simclr_digits --baseline simclr_digits \
        --xla xla_cpu_experimental_ynn_fusion_type= --steps 10
SelfCon against SupCon (Bae et al., AAAI 2023 report 59% of the memory and 48% of the time for ResNet-50 on
ImageNet):
    python -m ssl_jax.benchmark --config selfcon_imagenet:synthetic \
        --baseline selfcon_imagenet:synthetic,variant=supcon --config.batch_size=256 --baseline.batch_size=256

--torch: also the same SimCLR step written in PyTorch (`ssl_jax.torch_simclr`: channels-last, bf16 autocast
and torch.compile on CUDA), in a child process that ends before JAX takes the device, and the ratio of
views/s. PyTorch is optional (not in requirements.txt); only this flag needs it.

Prints a markdown table; `--out` also writes the JSON. Exit codes: 0 done; 2 bad input (one line on stderr);
1 the PyTorch side failed.
"""
import argparse
import dataclasses
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from ssl_jax import recipes  # noqa: E402
from ssl_jax.errors import UserError  # noqa: E402

MODES = ('synthetic', 'pipeline', 'end_to_end')
WARMUP_STEPS = 2
# (H, W, C) and classes of the fixed-size datasets; variable-size ones get (image_size, image_size, 3).
_SHAPES = {'digits': ((24, 24, 1), 10), 'cifar10': ((32, 32, 3), 10), 'cifar100': ((32, 32, 3), 100),
           'stl10': ((96, 96, 3), 10),
           **{f'imagenet_resized/{s}x{s}': ((s, s, 3), 1000) for s in (8, 16, 32, 64)}}
_CLASSES = {'imagenet2012': 1000, 'imagenet100': 100, 'caltech_birds2011': 200, 'cars196': 196,
            'oxford_flowers102': 102, 'oxford_iiit_pet': 37}
# The ratios reported against --baseline (config / baseline).
RATIOS = ('step_s', 'peak_bytes', 'temp_bytes', 'e2e_step_s', 'pipeline_images_per_s')


def synthetic_like(config):
  """A copy of `config` reading synthetic images of the shape its dataset has (one batch's worth).

  Args:
    config: a recipe's ConfigDict.

  Returns:
    The copy; `config` itself is unchanged.
  """
  c = config.copy_and_resolve_references()
  name = c.data.name
  if name != 'synthetic':
    size = int(c.data.image_size)
    shape, classes = _SHAPES.get(name, ((size, size, 3), _CLASSES.get(name, 10)))
    c.data.name, c.data.synthetic_shape, c.data.synthetic_classes = 'synthetic', shape, classes
    c.data.subset_num = c.data.subset_per_class = 0
  # Only the first batch is read: generating more examples would only cost host time.
  c.data.synthetic_examples = c.batch_size
  return c


# ----------------------------------------------------------------------------------------------- the step
@dataclasses.dataclass
class Built:
  """A recipe's compiled train step and what it runs on (`build`)."""
  config: Any                # the checked config the step was built from
  compiled: Any              # the compiled step: (state, batch) -> (state, metrics)
  state: Any                 # the initial TrainState, on the mesh
  batch: dict                # the first training batch, on the mesh
  mesh: Any
  compile_s: float
  views_per_example: int     # axis 1 of what the method's `make_views` returns


def build(config, devices=None, xla_options: dict | None = None) -> Built:
  """The recipe's train step as the trainer builds it (`train.setup`, the online probe off), compiled.

  Compiled for the recipe's first training batch, on a mesh over `devices` (default: all), after the
  trainer's own input checks, with XLA's debug options `xla_options` ({name: value}) for this program only.
  """
  import jax  # pylint: disable=g-import-not-at-top  (JAX only once the flags are fine)
  from ssl_jax import config_schema, data, methods, sharding, stages, train  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.probe.enabled = False
  config_schema.validate(config)
  jax.config.update('jax_threefry_partitionable', True)  # as the trainer: the same random bits
  mesh = sharding.make_mesh(devices)
  train.check_run(config, mesh)
  method = methods.get_method(config)
  size = stages.image_sizes(config)[0]
  source = data.get_source(config.data, split=config.data.train_split, train=True,
                           crops=method.host_crops(config), image_size=size)
  methods.check_labels(method, config, source.num_classes)
  steps_per_epoch = source.steps_per_epoch(config.batch_size)
  run_plan = stages.plan(config, steps_per_epoch)
  run = train.setup(config, mesh, method, run_plan, steps_per_epoch=steps_per_epoch,
                    in_channels=source.image_shape[-1], num_classes=source.num_classes)
  batch = next(source.train_batches(global_batch_size=config.batch_size, seed=config.seed, start_step=0,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    partners=method.needs_partners(config)))
  batch = sharding.global_batch(batch, mesh)
  step = run.step_for(run_plan.image_size_at(0))
  started = time.perf_counter()
  try:
    compiled = step.lower(run.state, batch).compile(xla_options or None)
  except jax.errors.JaxRuntimeError as e:
    if not xla_options or 'option' not in str(e):
      raise
    raise UserError(f'--xla {xla_options}: {str(e).splitlines()[0]}') from None
  compile_s = time.perf_counter() - started
  ctx = methods.StepContext(config=config, resolution=run_plan.image_size_at(0), step=run.state.step,
                            total_steps=run_plan.total_steps, extra=run.state.extra)
  views = jax.eval_shape(lambda k, b: method.make_views(k, b, ctx), jax.random.key(0), batch)
  # Multi-crop views are one array per resolution (ssl_jax/data/multicrop.py): all of them count.
  views_per_example = sum(int(v.shape[1]) for v in jax.tree.leaves(views))
  return Built(config, compiled, run.state, batch, mesh, compile_s, views_per_example)


def time_steps(compiled, state, batch, steps: int, *, budget_s: float = math.inf):
  """(the median seconds of up to `steps` steps after WARMUP_STEPS warm-up steps, each waited for; the state;
  the last step's loss).

  Timing stops early once the steps run so far took `budget_s` (at least one step is timed). NaN seconds and
  loss when `steps` is 0: nothing runs.
  """
  import jax  # pylint: disable=g-import-not-at-top
  times, spent, metrics = [], 0.0, {'loss': float('nan')}
  for i in range(WARMUP_STEPS + steps if steps else 0):
    started = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    spent += time.perf_counter() - started
    if i >= WARMUP_STEPS:
      times.append(time.perf_counter() - started)
      if spent > budget_s:
        break
  return (statistics.median(times) if times else float('nan')), state, float(metrics['loss'])


def memory(compiled) -> dict:
  """One device's memory of the compiled step (XLA memory analysis), in bytes.

  'peak_bytes' = arguments + outputs + temporaries - donated (aliased) buffers; 'temp_bytes' the temporaries
  alone (activations, gradients); 'xla_peak_bytes' XLA's own peak, which not every backend fills in (0).
  """
  mem = compiled.memory_analysis()
  return {'peak_bytes': int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                            - mem.alias_size_in_bytes),
          'xla_peak_bytes': int(getattr(mem, 'peak_memory_in_bytes', 0)),
          'temp_bytes': int(mem.temp_size_in_bytes), 'argument_bytes': int(mem.argument_size_in_bytes),
          'output_bytes': int(mem.output_size_in_bytes), 'alias_bytes': int(mem.alias_size_in_bytes)}


def flops(compiled, devices: int) -> float:
  """FLOPs of one step over all devices: XLA's cost analysis covers one device's share."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # some jax versions: one dict per program
  return float((cost or {}).get('flops', 0.0)) * devices


def measure_built(built: Built, steps: int, *, budget_s: float = math.inf) -> tuple[dict, object]:
  """Step time on the built batch (kept on the device), memory and FLOPs; returns (results, state)."""
  step_s, state, loss = time_steps(built.compiled, built.state, built.batch, steps, budget_s=budget_s)
  return describe(built, step_s, loss), state


def measure_interleaved(builts: dict, steps: int) -> dict:
  """{name: results} of several built steps timed in turns (one step of each, then the next round), so that
  a machine whose speed drifts (other work, clocks) slows them alike: the ratios are what is compared."""
  import jax  # pylint: disable=g-import-not-at-top
  states = {name: b.state for name, b in builts.items()}
  times, losses = {name: [] for name in builts}, {name: float('nan') for name in builts}
  for i in range(WARMUP_STEPS + steps if steps else 0):
    for name, b in builts.items():
      started = time.perf_counter()
      states[name], metrics = b.compiled(states[name], b.batch)
      jax.block_until_ready((states[name], metrics))
      if i >= WARMUP_STEPS:
        times[name].append(time.perf_counter() - started)
      losses[name] = float(metrics['loss'])
  median = lambda t: statistics.median(t) if t else float('nan')
  return {name: {**describe(b, median(times[name]), losses[name]), 'step_times_s': times[name]}
          for name, b in builts.items()}


def describe(built: Built, step_s: float, loss: float) -> dict:
  """The results of a built step timed at `step_s` seconds (its last loss `loss`): speed, memory, FLOPs."""
  batch_size, views = built.config.batch_size, built.views_per_example
  total = flops(built.compiled, built.mesh.size)
  return {
      'compile_s': round(built.compile_s, 2), 'step_s': step_s, 'last_loss': loss,
      'views_per_s': batch_size * views / step_s, 'images_per_s': batch_size / step_s,
      'views_per_example': views, 'batch_size': batch_size, 'image_size': int(built.batch['image'].shape[-3]),
      **memory(built.compiled), 'flops_per_step': total, 'tflops_per_s': total / step_s / 1e12,
      'devices': built.mesh.size, 'device_kind': built.mesh.devices.flat[0].device_kind}


def measure_step(config, *, steps: int, devices=None, budget_s: float = math.inf) -> dict:
  """`measure_built` of the recipe's step compiled for a synthetic batch of its image shape."""
  return measure_built(build(synthetic_like(config), devices), steps, budget_s=budget_s)[0]


def _train_batches(config):
  """The recipe's training batches as the trainer reads them (this process's share), from step 0."""
  import jax  # pylint: disable=g-import-not-at-top
  from ssl_jax import data, methods, stages  # pylint: disable=g-import-not-at-top
  method = methods.get_method(config)
  source = data.get_source(config.data, split=config.data.train_split, train=True,
                           crops=method.host_crops(config), image_size=stages.image_sizes(config)[0])
  return source.train_batches(global_batch_size=config.batch_size, seed=config.seed, start_step=0,
                              process_index=jax.process_index(), process_count=jax.process_count(),
                              partners=method.needs_partners(config))


def measure_pipeline(config, *, steps: int) -> dict:
  """{'pipeline_images_per_s'}: this process's images/s from the host input pipeline alone, over `steps`
  batches after the first one (start-up, e.g. tf.data's graph and file opening, is not throughput)."""
  batches = _train_batches(config)
  first = next(batches)
  started = time.perf_counter()
  for _ in range(steps):
    next(batches)
  return {'pipeline_images_per_s': len(first['image']) * steps / (time.perf_counter() - started)}


def measure_end_to_end(config, *, steps: int, devices=None, budget_s: float = math.inf,
                       xla_options: dict | None = None) -> dict:
  """The step compiled for the real data, timed on one batch kept on the device, then fed by the pipeline.

  One compiled program serves both timings, so their ratio ('e2e_ratio') is the share of the device's speed
  that the input pipeline sustains. The fed steps are dispatched as in the trainer: no wait between steps.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ssl_jax import sharding  # pylint: disable=g-import-not-at-top
  built = build(config, devices, xla_options)
  results, state = measure_built(built, steps, budget_s=budget_s / 2)
  batches = _train_batches(config)
  for i in range(WARMUP_STEPS + steps):
    if i == WARMUP_STEPS:
      jax.block_until_ready(state)
      started = time.perf_counter()
    state, _ = built.compiled(state, sharding.global_batch(next(batches), built.mesh))
  jax.block_until_ready(state)
  step_s = (time.perf_counter() - started) / steps
  views_per_s = config.batch_size * results['views_per_example'] / step_s
  return {**results, 'e2e_step_s': step_s, 'e2e_views_per_s': views_per_s,
          'e2e_ratio': views_per_s / results['views_per_s']}


def check_args(*, mode: str, steps: int, peak_tflops: float | None) -> None:
  """UserError for a mode, step count or peak that `run` cannot use."""
  if mode not in MODES:
    raise UserError(f'--mode={mode} is unknown; use one of {", ".join(MODES)}')
  if steps < (0 if mode == 'synthetic' else 1):
    raise UserError(f'--steps={steps} must be >= 0 (0: compile and read the memory only)' if mode == 'synthetic'
                    else f'--steps={steps} must be at least 1 in {mode} mode')
  if peak_tflops is not None and peak_tflops <= 0:
    raise UserError(f"--peak_tflops={peak_tflops} must be positive: one device's peak, e.g. 989 (H100, bf16)")


def run(configs: dict, *, mode: str, steps: int, peak_tflops: float | None = None, devices=None,
        xla_options: dict | None = None) -> dict:
  """The measurements of `mode` (one of MODES) for each recipe; see the module docstring.

  Args:
    configs: {name: a recipe's ConfigDict}.
    mode: 'synthetic', 'pipeline' or 'end_to_end'.
    steps: timed steps (batches in pipeline mode); 0 in synthetic mode: compile and read the memory only.
    peak_tflops: one device's peak TFLOP/s, for 'peak_fraction' (MFU); None: not reported.
    devices: the mesh's devices (default: all).
    xla_options: {name: XLA debug options for that recipe's program}.

  Returns:
    {name: the fields of the measurements that ran, and 'mode', 'jax_version', 'backend'}. In synthetic
    mode the recipes' steps are compiled first, then timed in turns (`measure_interleaved`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  check_args(mode=mode, steps=steps, peak_tflops=peak_tflops)
  xla_options = xla_options or {}
  if mode == 'synthetic':
    builts = {name: build(synthetic_like(c), devices, xla_options.get(name)) for name, c in configs.items()}
    measured = measure_interleaved(builts, steps)
  else:
    measured = {name: {**(measure_end_to_end(c, steps=steps, devices=devices, xla_options=xla_options.get(name))
                          if mode == 'end_to_end' else {}), **measure_pipeline(c, steps=steps)}
                for name, c in configs.items()}
  out = {}
  for name, results in measured.items():
    out[name] = {'mode': mode, 'jax_version': jax.__version__, 'backend': jax.default_backend(), **results}
    if peak_tflops and 'tflops_per_s' in results:
      out[name].update(peak_tflops=peak_tflops,
                       peak_fraction=results['tflops_per_s'] / results['devices'] / peak_tflops)
  return out


def ratios(results: dict, baseline: dict) -> dict:
  """results / baseline of each of RATIOS that both measured."""
  return {k: results[k] / baseline[k] for k in RATIOS if k in results and k in baseline and baseline[k]}


# ----------------------------------------------------------------------------------------------- PyTorch
def run_torch(spec: str, assignments: list, steps: int, *, timeout_s: float | None = None) -> dict:
  """`ssl_jax.torch_simclr`'s results for the recipe, from a child process.

  A child process, so that PyTorch has left the device before JAX (which preallocates most of a GPU's
  memory) takes it, and so that this process never loads PyTorch's libraries beside JAX's: call this before
  anything in this process touches JAX's devices. The child checks the recipe (what its step implements)
  and that PyTorch is installed.

  Raises:
    UserError: its bad input (one line). TorchFailed: it failed or overran `timeout_s`.
  """
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / 'torch.json'
    cmd = [sys.executable, '-m', 'ssl_jax.torch_simclr', '--config', spec,
           *[f'--config.{a}' for a in assignments], '--steps', str(steps), '--out', str(out)]
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout_s)
    except subprocess.TimeoutExpired:
      raise TorchFailed(f'the PyTorch step overran its {timeout_s:.0f} s') from None
    if proc.returncode == 2:
      errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')] or ['error: bad input']
      raise UserError(errors[-1].removeprefix('error: '))
    if proc.returncode != 0:
      raise TorchFailed(f'the PyTorch step failed (exit {proc.returncode}): {proc.stderr[-2000:]}')
    return json.loads(out.read_text())


class TorchFailed(Exception):
  """The PyTorch side failed to run (exit 1), as opposed to bad input (UserError, exit 2)."""


# ----------------------------------------------------------------------------------------------- output
HEADER = ('| run | recipe | mode | devices | jax | batch × views | compile | step | views/s | memory | GFLOP/step '
          '| TFLOP/s (MFU) | pipeline images/s | end-to-end views/s (ratio) |\n'
          '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')


def markdown_row(name: str, results: dict, spec: str) -> str:
  """One row under HEADER; '—' where the mode measured nothing."""
  r, dash = results, '—'
  step = 'step_s' in r and not math.isnan(r['step_s'])
  compiled = 'compile_s' in r
  tflops = dash
  if step:
    tflops = f'{r["tflops_per_s"]:.3g}' + (f' ({r["peak_fraction"]:.1%})' if 'peak_fraction' in r else '')
  cells = [name, f'`{spec}`', r['mode'], f'{r["devices"]} × {r["device_kind"]}' if compiled else r['backend'],
           r['jax_version'],
           f'{r["batch_size"]} × {r["views_per_example"]}' if compiled else dash,
           f'{r["compile_s"]:.1f} s' if compiled else dash,
           f'{r["step_s"] * 1e3:.1f} ms' if step else dash,
           f'{r["views_per_s"]:.1f}' if step else dash,
           f'{r["peak_bytes"] / 2**20:.1f} MiB' if compiled else dash,
           f'{r["flops_per_step"] / 1e9:.3g}' if compiled else dash, tflops,
           f'{r["pipeline_images_per_s"]:.0f}' if 'pipeline_images_per_s' in r else dash,
           f'{r["e2e_views_per_s"]:.1f} ({r["e2e_ratio"]:.2f})' if 'e2e_ratio' in r else dash]
  return '| ' + ' | '.join(cells) + ' |'


def torch_row(pt: dict, spec: str) -> str:
  """The PyTorch step as a row under HEADER."""
  memory_cell = f'{pt["peak_bytes"] / 2**20:.1f} MiB' if pt.get('peak_bytes') else '—'
  cells = [f'PyTorch ({pt["execution"]}, {pt["dtype"]})', f'`{spec}`', 'synthetic', f'1 × {pt["device_name"]}',
           f'torch {pt["torch_version"]}', f'{pt["batch_size"]} × {pt["views_per_example"]}',
           f'{pt["compile_s"]:.1f} s', f'{pt["step_s"] * 1e3:.1f} ms', f'{pt["views_per_s"]:.1f}', memory_cell,
           '—', '—', '—', '—']
  return '| ' + ' | '.join(cells) + ' |'


def markdown(runs: dict, specs: dict, ratio: dict | None = None, torch_results: dict | None = None) -> str:
  """The table: a row per run (and PyTorch's), then the ratio line(s)."""
  lines = [HEADER, *[markdown_row(name, r, specs[name]) for name, r in runs.items()]]
  if torch_results:
    lines.append(torch_row(torch_results, specs['config']))
  lines.append('')
  if ratio:
    lines.append('config / baseline: ' + ', '.join(f'{k} {v:.3f}' for k, v in ratio.items()))
  if torch_results:
    lines.append(f'ssl_jax / PyTorch views/s: {runs["config"]["views_per_s"] / torch_results["views_per_s"]:.2f}')
    lines += [f'Note: {n}' for n in torch_results['notes']]
  return '\n'.join(lines).rstrip('\n') + '\n'


# ----------------------------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
  """argparse that raises UserError (one line, exit 2) instead of printing its usage and exiting."""

  def error(self, message):
    raise UserError(f'{message}; see python -m ssl_jax.benchmark --help')


def parse_args(argv):
  """(args, {'config': [a.b=VALUE, ...], 'baseline': [...]}): the flags and each recipe's overrides."""
  parser = _Parser(prog='python -m ssl_jax.benchmark', description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True, help='recipe FILE.py[:ARG] or NAME[:ARG]')
  parser.add_argument('--baseline', default='', help='a second recipe: ratios --config / --baseline')
  parser.add_argument('--mode', default='synthetic', help=f'one of {", ".join(MODES)}')
  parser.add_argument('--steps', type=int, default=20, help='timed steps (batches in pipeline mode)')
  parser.add_argument('--peak_tflops', type=float, default=None, help="one device's peak TFLOP/s, for MFU")
  parser.add_argument('--torch', action='store_true', help='also the same SimCLR step in PyTorch')
  parser.add_argument('--xla', action='append', default=[], metavar='OPTION=VALUE',
                      help="an XLA debug option for --config's program only (repeatable)")
  parser.add_argument('--out', default='', help='also write the results to this JSON file')
  args, flags = parser.parse_known_args(argv)
  overrides = recipes.split_overrides(flags, ('config', 'baseline') if args.baseline else ('config',))
  check_args(mode=args.mode, steps=args.steps, peak_tflops=args.peak_tflops)
  if args.torch and (args.baseline or args.mode != 'synthetic' or args.steps < 1):
    raise UserError('--torch compares one recipe in synthetic mode with --steps >= 1; drop --baseline/--mode')
  if args.out and not pathlib.Path(args.out).resolve().parent.is_dir():
    raise UserError(f'--out={args.out}: its directory does not exist')
  return args, overrides


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit code."""
  try:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    named = {'config': args.config, **({'baseline': args.baseline} if args.baseline else {})}
    configs = {name: recipes.load_with(spec, overrides[name]) for name, spec in named.items()}
    specs = {name: ' '.join([spec, *[f'--{name}.{a}' for a in overrides[name]]]) for name, spec in named.items()}
    torch_results = None
    if args.torch:
      torch_results = run_torch(args.config, overrides['config'], args.steps)
    xla = dict(option.partition('=')[::2] for option in args.xla)
    runs = run(configs, mode=args.mode, steps=args.steps, peak_tflops=args.peak_tflops,
               xla_options={'config': xla})
  except (UserError, TorchFailed) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2 if isinstance(e, UserError) else 1
  ratio = ratios(runs['config'], runs['baseline']) if args.baseline else None
  table = markdown(runs, specs, ratio, torch_results)
  print(table, end='')
  if args.out:
    result = {'runs': runs, 'specs': specs, 'markdown': table}
    if ratio:
      result['ratio'] = ratio
    if torch_results:
      result['pytorch'] = torch_results
      result['ratio_views_per_s_vs_pytorch'] = runs['config']['views_per_s'] / torch_results['views_per_s']
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
