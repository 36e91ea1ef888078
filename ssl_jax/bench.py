r"""Throughput of one recipe on this machine: the train step alone, the host input pipeline alone, and both.

    python -m ssl_jax.bench --config configs/X.py[:ARG] [--config.a.b=VALUE ...] [--steps 20] \
        [--mode synthetic|pipeline|end_to_end] [--peak_tflops F] [--out FILE.json]

Modes:
  synthetic   (default) the recipe's train step, built exactly as the trainer builds it (the online probe
              off), fed a synthetic batch of the recipe's image shape that stays on the
              device: compile seconds, median step seconds (after two warm-up steps), views/s (batch x views
              per example that the method's `make_views` returns / step seconds), the compiled step's device
              memory (XLA memory analysis: arguments + outputs + temporaries - donated buffers) and FLOPs per
              step (XLA cost analysis of one device's program x devices), the achieved TFLOP/s and, with
              `--peak_tflops` (one device's peak), the fraction of it.
  pipeline    the host input pipeline alone (tf.data for tfds datasets): images/s over `--steps` batches after
              the first.
  end_to_end  the step compiled for the recipe's own data, timed as above on one of its batches kept on the
              device, then fed by the real input pipeline as in the trainer (no wait between steps): its
              views/s and their ratio to the device-resident views/s (below 1: the step waits for data);
              and the pipeline alone. One compiled program serves both timings.
Variable-size recipes (host crops) are benchmarked in synthetic mode at data.image_size with the crop on the
device, as fixed-size data are. Prints a markdown row for the README's performance table; `--out` also writes
the JSON. Exit codes: 0 done; 2 bad input (one line on stderr).

Example (the quickstart recipe on this machine's devices, its embedded data):
    python -m ssl_jax.bench --config configs/simclr_digits.py --mode end_to_end --steps 10
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from ssl_jax import recipes  # noqa: E402
from ssl_jax.errors import UserError  # noqa: E402

MODES = ('synthetic', 'pipeline', 'end_to_end')
# (H, W, C) and classes of the fixed-size datasets; variable-size ones get (image_size, image_size, 3).
_SHAPES = {'digits': ((24, 24, 1), 10), 'cifar10': ((32, 32, 3), 10), 'cifar100': ((32, 32, 3), 100),
           'stl10': ((96, 96, 3), 10),
           **{f'imagenet_resized/{s}x{s}': ((s, s, 3), 1000) for s in (8, 16, 32, 64)}}
_CLASSES = {'imagenet2012': 1000, 'imagenet100': 100, 'caltech_birds2011': 200, 'cars196': 196,
            'oxford_flowers102': 102, 'oxford_iiit_pet': 37}
_WARMUP_STEPS = 2


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


def _views_per_example(method, config, state, batch) -> int:
  """The views per example that the method's `make_views` returns (its output's axis 1)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ssl_jax import methods  # pylint: disable=g-import-not-at-top
  ctx = methods.StepContext(config=config, resolution=config.data.image_size, step=jnp.zeros((), jnp.int32),
                            total_steps=1000, extra=state.extra)
  views = jax.eval_shape(lambda k, b: method.make_views(k, b, ctx), jax.random.key(0), batch)
  return int(views.shape[1])


def compile_step(config, devices=None):
  """The recipe's train step, built as the trainer builds it (the online probe off) and compiled.

  Compiled for the recipe's first training batch, on a mesh over `devices` (default: all).

  Returns:
    (compiled step, train state, global batch, mesh, compile seconds).
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top  (JAX only once the flags are fine)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ssl_jax import config_schema, data, methods, optim, sharding, train  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_threefry_partitionable', True)  # as the trainer: the same random bits
  mesh = sharding.make_mesh(devices)
  config_schema.validate(config)  # the trainer's own input checks
  train.check_run(config, mesh)
  method = methods.get_method(config)
  source = data.get_source(config.data, split=config.data.train_split, train=True,
                           num_views=method.num_views(config))
  batch = next(source.train_batches(global_batch_size=config.batch_size, seed=config.seed, start_step=0,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    partners=method.needs_partners(config)))
  model = method.build_model(config, in_channels=batch['image'].shape[-1], rngs=nnx.Rngs(config.seed))
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  total = 1000  # only the learning-rate schedule reads it
  tx, schedule = optim.create_optimizer(config.optimizer, batch_size=config.batch_size, total_steps=total,
                                        steps_per_epoch=100)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                           opt_state=tx.init(params), extra=method.init_extra(model, config), probe={},
                           rng=jax.random.key_data(jax.random.key(config.seed)))
  state = jax.device_put(state, sharding.replicated(mesh))
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  step = train.make_train_step(graphdef, tx, schedule, method, config, config.data.image_size, total, None,
                               state_sharding, mesh)
  batch = sharding.global_batch(batch, mesh)
  started = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  return compiled, state, batch, mesh, time.perf_counter() - started


def time_steps(compiled, state, batch, steps: int):
  """(median seconds of `steps` steps after two warm-up steps, each waited for; the state after them).

  NaN seconds when `steps` is 0: nothing runs.
  """
  import jax  # pylint: disable=g-import-not-at-top
  times = []
  for i in range(_WARMUP_STEPS + steps if steps else 0):
    started = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= _WARMUP_STEPS:
      times.append(time.perf_counter() - started)
  return (statistics.median(times) if times else float('nan')), state


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


def _time_on_device(config, compiled, state, batch, mesh, compile_s, steps):
  """Step time on one batch that stays on the device, memory and FLOPs; returns (results, state)."""
  from ssl_jax import methods  # pylint: disable=g-import-not-at-top
  views = _views_per_example(methods.get_method(config), config, state, batch)
  step_s, state = time_steps(compiled, state, batch, steps)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
  flops = float(cost.get('flops', 0.0)) * mesh.size  # the analysis covers one device's share of the step
  results = {
      'compile_s': round(compile_s, 2), 'step_s': step_s, 'views_per_s': config.batch_size * views / step_s,
      'images_per_s': config.batch_size / step_s, 'views_per_example': views, 'batch_size': config.batch_size,
      **memory(compiled),
      'flops_per_step': flops, 'tflops_per_s': flops / step_s / 1e12, 'devices': mesh.size,
      'device_kind': mesh.devices.flat[0].device_kind}
  return results, state


def measure_step(config, *, steps: int, devices=None) -> dict:
  """Compiles the recipe's train step for a synthetic batch of its image shape and times it on the device.

  Args:
    config: the recipe's ConfigDict (its data are replaced by `synthetic_like`).
    steps: timed steps after two warm-up steps (>= 1).
    devices: the mesh's devices (default: all).

  Returns:
    {'compile_s', 'step_s' (median), 'views_per_s', 'images_per_s', 'views_per_example', 'batch_size',
    `memory`'s fields, 'flops_per_step', 'tflops_per_s', 'devices', 'device_kind'}.
  """
  config = synthetic_like(config)
  return _time_on_device(config, *compile_step(config, devices), steps)[0]


def _train_batches(config):
  """The recipe's training batches as the trainer reads them (this process's share), from step 0."""
  import jax  # pylint: disable=g-import-not-at-top
  from ssl_jax import data, methods, stages  # pylint: disable=g-import-not-at-top
  method = methods.get_method(config)
  source = data.get_source(config.data, split=config.data.train_split, train=True,
                           num_views=method.num_views(config), image_size=stages.image_sizes(config)[0])
  return source.train_batches(global_batch_size=config.batch_size, seed=config.seed, start_step=0,
                              process_index=jax.process_index(), process_count=jax.process_count(),
                              partners=method.needs_partners(config))


def measure_pipeline(config, *, steps: int) -> dict:
  """Images/s that the host input pipeline alone delivers, over `steps` batches after the first one.

  Args:
    config: the recipe's ConfigDict.
    steps: batches timed.

  Returns:
    {'pipeline_images_per_s'} (this process's images: the global batch / processes per batch).
  """
  batches = _train_batches(config)
  first = next(batches)  # start-up (tf.data graph, file opening) is not throughput
  started = time.perf_counter()
  for _ in range(steps):
    next(batches)
  return {'pipeline_images_per_s': len(first['image']) * steps / (time.perf_counter() - started)}


def measure_end_to_end(config, *, steps: int, devices=None) -> dict:
  """The step compiled for the real data, timed on one batch kept on the device, then fed by the pipeline.

  One compiled program serves both timings, so their ratio is the share of the device's speed that the
  input pipeline sustains. The fed steps are dispatched as in the trainer: no wait between steps.

  Args:
    config: the recipe's ConfigDict.
    steps: timed steps of each kind, after two warm-up steps.
    devices: the mesh's devices (default: all).

  Returns:
    `measure_step`'s fields (for the device-resident batch) and 'e2e_step_s', 'e2e_views_per_s', 'e2e_ratio'.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ssl_jax import sharding  # pylint: disable=g-import-not-at-top
  compiled, state, batch, mesh, compile_s = compile_step(config, devices)
  results, state = _time_on_device(config, compiled, state, batch, mesh, compile_s, steps)
  batches = _train_batches(config)
  for i in range(_WARMUP_STEPS + steps):
    if i == _WARMUP_STEPS:
      jax.block_until_ready(state)
      started = time.perf_counter()
    state, _ = compiled(state, sharding.global_batch(next(batches), mesh))
  jax.block_until_ready(state)
  step_s = (time.perf_counter() - started) / steps
  views_per_s = config.batch_size * results['views_per_example'] / step_s
  return {**results, 'e2e_step_s': step_s, 'e2e_views_per_s': views_per_s,
          'e2e_ratio': views_per_s / results['views_per_s']}


def run(config, *, mode: str, steps: int, peak_tflops: float | None = None, devices=None) -> dict:
  """The measurements of `mode` (one of MODES) for `config`; see the module docstring.

  Args:
    config: the recipe's ConfigDict.
    mode: 'synthetic', 'pipeline' or 'end_to_end'.
    steps: timed steps (batches in pipeline mode), >= 1.
    peak_tflops: one device's peak TFLOP/s, for 'peak_fraction'; None: not reported.
    devices: the mesh's devices (default: all).

  Returns:
    The fields of the measurements that ran, and 'mode', 'jax_version', 'backend'.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if mode not in MODES:
    raise UserError(f'--mode={mode} is unknown; use one of {", ".join(MODES)}')
  if steps < 1:
    raise UserError(f'--steps={steps} must be at least 1')
  if peak_tflops is not None and peak_tflops <= 0:
    raise UserError(f"--peak_tflops={peak_tflops} must be positive: one device's peak, e.g. 989 (H100, bf16)")
  jax.config.update('jax_threefry_partitionable', True)  # as the trainer: the same random bits
  results = {'mode': mode, 'jax_version': jax.__version__, 'backend': jax.default_backend()}
  if mode == 'synthetic':
    results.update(measure_step(config, steps=steps, devices=devices))
  elif mode == 'end_to_end':
    results.update(measure_end_to_end(config, steps=steps, devices=devices))
  if mode != 'synthetic':
    results.update(measure_pipeline(config, steps=steps))
  if peak_tflops and 'tflops_per_s' in results:
    results['peak_tflops'] = peak_tflops
    results['peak_fraction'] = results['tflops_per_s'] / results['devices'] / peak_tflops
  return results


HEADER = ('| recipe | mode | devices | jax | batch × views | compile | step | views/s | memory | GFLOP/step '
          '| TFLOP/s (of peak) | pipeline images/s | end-to-end views/s (ratio) |\n'
          '|---|---|---|---|---|---|---|---|---|---|---|---|---|')


def markdown_row(results: dict, spec: str) -> str:
  """One row under HEADER; '—' where the mode measured nothing."""
  r, dash = results, '—'
  step = 'step_s' in r
  tflops = dash
  if step:
    tflops = f'{r["tflops_per_s"]:.3g}' + (f' ({r["peak_fraction"]:.1%})' if 'peak_fraction' in r else '')
  cells = [f'`{spec}`', r['mode'], f'{r["devices"]} × {r["device_kind"]}' if step else r['backend'],
           r['jax_version'],
           f'{r["batch_size"]} × {r["views_per_example"]}' if step else dash,
           f'{r["compile_s"]:.1f} s' if step else dash,
           f'{r["step_s"] * 1e3:.1f} ms' if step else dash,
           f'{r["views_per_s"]:.1f}' if step else dash,
           f'{r["peak_bytes"] / 2**20:.1f} MiB' if step else dash,
           f'{r["flops_per_step"] / 1e9:.3g}' if step else dash, tflops,
           f'{r["pipeline_images_per_s"]:.0f}' if 'pipeline_images_per_s' in r else dash,
           f'{r["e2e_views_per_s"]:.1f} ({r["e2e_ratio"]:.2f})' if 'e2e_ratio' in r else dash]
  return '| ' + ' | '.join(cells) + ' |'


def _config_from_args(args, overrides: list) -> tuple:
  """The recipe's ConfigDict with the `--config.KEY=VALUE` overrides applied, and the spec as text."""
  config = recipes.load(args.config)
  for flag in overrides:
    if not flag.startswith('--config.') or '=' not in flag:
      raise UserError(f'unknown argument {flag!r}; config fields are set as --config.KEY=VALUE')
    recipes.override(config, flag[len('--config.'):])
  return config, ' '.join([args.config, *overrides])


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit code."""
  parser = argparse.ArgumentParser(prog='python -m ssl_jax.bench', description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True, help='recipe configs/NAME.py[:ARG]')
  parser.add_argument('--mode', default='synthetic', help=f'one of {", ".join(MODES)}')
  parser.add_argument('--steps', type=int, default=20, help='timed steps (batches in pipeline mode)')
  parser.add_argument('--peak_tflops', type=float, default=None, help="one device's peak TFLOP/s")
  parser.add_argument('--out', default='', help='also write the results to this JSON file')
  args, overrides = parser.parse_known_args(argv)
  try:
    config, spec = _config_from_args(args, overrides)
    results = run(config, mode=args.mode, steps=args.steps, peak_tflops=args.peak_tflops)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  results['recipe'] = spec
  results['markdown_row'] = markdown_row(results, spec)
  print(HEADER)
  print(results['markdown_row'])
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
