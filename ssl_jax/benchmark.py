r"""Memory and time of one train step of a recipe against another's, on this machine's devices.

    python -m ssl_jax.benchmark --baseline configs/A.py[:ARG] --candidate configs/B.py[:ARG] \
        [--set KEY=VALUE ...] [--baseline_set ...] [--candidate_set ...] [--steps 20] [--out FILE.json]

Builds each recipe's model, optimizer and jitted train step exactly as the trainer does (the online probe
off), compiles it for the recipe's first training batch (from its data source: use the `:synthetic` variants
to need no dataset), and reports for each:
  * the device memory of the compiled step from XLA's memory analysis: arguments + outputs + temporaries -
    donated (aliased) buffers, and the temporaries alone (activations and gradients, what the number of
    views changes; params and optimizer state are the same for both); XLA's own `peak_memory_in_bytes` is
    kept in the JSON as `xla_peak_bytes` (not every backend fills it in);
  * the compile time and the median step time over `--steps` steps after two warm-up steps, and images/s
    (`--steps 0`: memory only, nothing runs, e.g. to read a large model's memory on a CPU);
and the ratios candidate / baseline. `--set` overrides apply to both recipes, `--baseline_set` /
`--candidate_set` to one (values read as `--config.KEY=VALUE` flags are).

SelfCon's efficiency claim (Bae et al., AAAI 2023: ResNet-50 on ImageNet, 59% of SupCon's memory and 48% of
its time), on whatever device this runs on:
    python -m ssl_jax.benchmark --candidate configs/selfcon_imagenet.py:synthetic \
        --baseline configs/selfcon_imagenet.py:synthetic,variant=supcon \
        --set model.name=resnet50 batch_size=256 model.bn_group_size=0
Exit codes: 0 done; 2 bad input (one line on stderr).
"""
import argparse
import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from ssl_jax import bench, recipes  # noqa: E402
from ssl_jax.errors import UserError  # noqa: E402

def measure(config, *, steps: int, devices=None) -> dict:
  """Compiles `config`'s train step (`ssl_jax.bench.compile_step`) and runs it `steps` times (after two warm-up
  steps).

  Args:
    config: a recipe's ConfigDict.
    steps: timed steps; 0: compile and read the memory only.
    devices: the mesh's devices (default: all).

  Returns:
    `ssl_jax.bench.memory`'s fields and 'compile_s', 'step_s' (median; NaN when steps is 0), 'images_per_s',
    'batch_size', 'views', 'devices', 'device_kind'.
  """
  from ssl_jax import methods  # pylint: disable=g-import-not-at-top  (JAX only once the flags are fine)
  if steps < 0:
    raise UserError(f'--steps={steps} must be >= 0 (0: compile and read the memory only)')
  compiled, state, batch, mesh, compile_s = bench.compile_step(config, devices)
  step_s, _ = bench.time_steps(compiled, state, batch, steps)
  return {**bench.memory(compiled), 'compile_s': round(compile_s, 2), 'step_s': step_s,
          'images_per_s': config.batch_size / step_s, 'batch_size': config.batch_size,
          'views': methods.get_method(config).num_views(config), 'devices': mesh.size,
          'device_kind': mesh.devices.flat[0].device_kind}


def compare(configs: dict, *, steps: int, devices=None) -> dict:
  """{'baseline': measure, 'candidate': measure, 'ratio': candidate / baseline of memory and step time}."""
  results = {name: measure(configs[name], steps=steps, devices=devices) for name in recipes.PAIR}
  b, c = results['baseline'], results['candidate']
  results['ratio'] = {key: c[key] / b[key] for key in ('peak_bytes', 'temp_bytes', 'step_s')}
  return results


def markdown(results: dict, specs: dict) -> str:
  """The results as a markdown table, one row per run and one for the ratio."""
  mib = lambda n: f'{n / 2**20:.1f} MiB'
  rows = ['| run | recipe | views | peak memory | temporaries | step time | images/s | compile |',
          '|---|---|---|---|---|---|---|---|']
  for name in recipes.PAIR:
    r = results[name]
    rows.append(f'| {name} | `{specs[name]}` | {r["views"]} | {mib(r["peak_bytes"])} '
                f'| {mib(r["temp_bytes"])} | {r["step_s"] * 1e3:.1f} ms | {r["images_per_s"]:.1f} '
                f'| {r["compile_s"]:.1f} s |')
  ratio = results['ratio']
  rows.append(f'| candidate / baseline | | | **{ratio["peak_bytes"]:.3f}** | {ratio["temp_bytes"]:.3f} '
              f'| **{ratio["step_s"]:.3f}** | | |')
  b = results['baseline']
  return '\n'.join(rows) + f'\n\n{b["devices"]} x {b["device_kind"]}, batch {b["batch_size"]}\n'


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit code."""
  parser = argparse.ArgumentParser(prog='python -m ssl_jax.benchmark', description=__doc__.splitlines()[0])
  recipes.add_pair_arguments(parser)
  parser.add_argument('--steps', type=int, default=20, help='timed steps per recipe')
  parser.add_argument('--out', default='', help='also write the results to this JSON file')
  args = parser.parse_args(argv)
  try:
    configs, specs = recipes.load_pair(args)
    results = compare(configs, steps=args.steps)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(markdown(results, specs), end='')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({**results, 'specs': specs}, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
