r"""The accelerator table in one command: README "Performance"'s figures on whatever accelerator JAX sees.

    python -m ssl_jax.accelerator --out DIR [--peak_tflops F] [--budget_s 420] [--steps 10] [--tiny] \
        [--parts resnet18,pytorch,...]

(`launch/accelerator_bench.sh DIR` wraps it with the bootstrap of a bare machine.) In one process tree, each
part built by `ssl_jax.benchmark` (the trainer's own step, `train.setup`, synthetic data kept on the device
unless said otherwise), prints one markdown table and writes it to DIR/accelerator.md (and every field to
DIR/accelerator.json):
  * SimCLR ResNet-18, CIFAR stem, batch 512, 32 px, float32 and bfloat16;
  * ResNet-50 at 224 px, bfloat16, batch 256; ViT-S/16 at 224 px, bfloat16 (when `vit_small` exists);
  * the same SimCLR ResNet-18 step in PyTorch (`ssl_jax.torch_simclr`: channels-last, bf16 autocast,
    torch.compile where it works), run first in a child process so it has the device to itself;
  * SelfCon against SupCon (ResNet-50, 224 px): memory and time; S3L's 112 px against 224 px step; batch
    fusion, rotation and RepMix each against their framework alone: the step-cost ratios;
  * the input pipeline: an in-memory uint8 source, batched on the host and augmented on the device, end to
    end against the same step on a device-resident batch (target >= 0.95).
Each figure is the median of up to `--steps` timed steps after 2 warm-up steps, with the compile time listed
apart; FLOPs are XLA's cost analysis, MFU = achieved FLOP/s / the device's bf16 dense peak (`--peak_tflops`,
or looked up by device kind in PEAK_TFLOPS). Every part has a time budget: a part that would not fit in what
is left of `--budget_s` is skipped with a note, its timed steps stop when its budget is spent, a failure
(e.g. out of memory) becomes a note, and a watchdog writes the table and exits if the whole run overruns by
a minute, so the table always comes back. `--tiny` runs every part at toy sizes (CPU test: tests/
test_accelerator_bench.py). Exit codes: 0 the table was written; 2 bad input (one line on stderr).
"""
import argparse
import dataclasses
import json
import os
import pathlib
import sys
import threading
import time
from typing import Callable

from ssl_jax import benchmark, recipes
from ssl_jax.errors import UserError

# One device's dense bfloat16 peak in TFLOP/s, by jax's device_kind (vendors' data sheets, without sparsity).
PEAK_TFLOPS = {'NVIDIA H200': 989.0, 'NVIDIA H100 80GB HBM3': 989.0, 'NVIDIA H100 PCIe': 756.0,
               'NVIDIA A100-SXM4-80GB': 312.0, 'NVIDIA A100-SXM4-40GB': 312.0, 'NVIDIA A100 80GB PCIe': 312.0,
               'TPU v4': 275.0, 'TPU v5 lite': 197.0, 'TPU v5': 459.0, 'TPU v6 lite': 918.0}
_R18 = ('simclr_cifar10:synthetic', ['batch_size=512'])
_R50 = ('fusion_imagenet:synthetic,fusion=false', ['batch_size=256', 'model.dtype=bfloat16'])
# What --tiny changes in every recipe: toy shapes that keep each part's code path.
_TINY = ['batch_size=8', 'model.bn_group_size=0', 'model.width=0.125', 'model.num_stages=3',
         'model.head.hidden_dim=16', 'model.head.out_dim=8']
_TINY_PX = 32  # the 224 px parts at --tiny (the ImageNet stem needs 32 px)


@dataclasses.dataclass
class Part:
  """One part of the table: `run(ctx)` adds its rows and ratios; `budget_s` bounds its compiles and steps."""
  name: str
  budget_s: float
  run: Callable


class Table:
  """The rows (one per measured step), the ratios (one per comparison) and the notes, as markdown."""

  def __init__(self, header: str):
    self.header, self.rows, self.ratios, self.notes = header, [], [], []

  def markdown(self) -> str:
    step_rows = ['| part | recipe | dtype | batch × views | px | compile | step | views/s | memory | TFLOP/s | MFU |',
                 '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in self.rows:
      memory = f'{r["peak_bytes"] / 2**30:.2f} GiB' if r.get('peak_bytes') else '—'
      tflops = f'{r["tflops_per_s"]:.3g}' if r.get('tflops_per_s') else '—'
      mfu = f'{r["mfu"]:.1%}' if r.get('mfu') else '—'
      step_rows.append(f'| {r["part"]} | `{r["recipe"]}` | {r["dtype"]} | {r["batch_size"]} × '
                       f'{r["views_per_example"]} | {r["image_size"]} | {r["compile_s"]:.1f} s | '
                       f'{r["step_s"] * 1e3:.2f} ms | {r["views_per_s"]:,.0f} | {memory} | {tflops} | {mfu} |')
    ratio_rows = ['| comparison | step time ratio | memory ratio | target |', '|---|---|---|---|']
    for name, step, mem, target in self.ratios:
      fmt = lambda x: '—' if x is None else f'{x:.3f}'
      ratio_rows.append(f'| {name} | {fmt(step)} | {fmt(mem)} | {target} |')
    notes = [f'- {n}' for n in self.notes]
    return '\n'.join([self.header, '', *step_rows, '', *ratio_rows, '', *notes, ''])


class Context:
  """What the parts share: the options, the table, the deadline, the results by part."""

  def __init__(self, args, table: Table):
    self.args, self.table, self.results = args, table, {}
    self.started = time.perf_counter()
    self.peak = args.peak_tflops

  def left_s(self) -> float:
    return self.args.budget_s - (time.perf_counter() - self.started)

  def config(self, spec: str, assignments: list, tiny_px: bool = False, tiny: tuple = ()):
    """Recipe `spec` with `assignments`, shrunk by --tiny (_TINY, the part's own `tiny` assignments, and
    224 px parts to _TINY_PX)."""
    tiny = [*_TINY, *tiny, *([f'data.synthetic_shape=({_TINY_PX}, {_TINY_PX}, 3)', f'data.image_size={_TINY_PX}']
                             if tiny_px else [])] if self.args.tiny else []
    return recipes.load_with(spec, [*assignments, *tiny])

  def step(self, part: str, spec: str, assignments: list, *, budget_s: float, tiny_px: bool = False,
           tiny: tuple = ()) -> dict:
    """Measures one recipe's step (`benchmark.measure_step`), adds its row and returns its results."""
    config = self.config(spec, assignments, tiny_px, tiny)
    r = benchmark.measure_step(config, steps=self.args.steps, budget_s=budget_s)
    peak = self.peak or PEAK_TFLOPS.get(r['device_kind'])
    r['mfu'] = r['tflops_per_s'] / r['devices'] / peak if peak else None
    from ssl_jax.models.precision import compute_dtype  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    dtype = compute_dtype(config.model.dtype, jax.default_backend()).name
    recipe = ' '.join([spec, *assignments, *(['(--tiny)'] if self.args.tiny else [])])
    self.table.rows.append({'part': part, 'recipe': recipe, 'dtype': dtype, **r})
    self.results[part] = r
    return r

  def ratio(self, name: str, candidate: dict, baseline: dict, target: str) -> None:
    self.table.ratios.append((name, candidate['step_s'] / baseline['step_s'],
                              candidate['peak_bytes'] / baseline['peak_bytes'], target))


# ----------------------------------------------------------------------------------------------- the parts
def _resnet18(ctx, budget_s):
  for dtype in ('float32', 'bfloat16'):
    ctx.step(f'SimCLR R18 {dtype}', _R18[0], [*_R18[1], f'model.dtype={dtype}'], budget_s=budget_s / 2)


def _resnet50(ctx, budget_s):
  ctx.step('ResNet-50 224 px', *_R50, budget_s=budget_s, tiny_px=True)


def _vit(ctx, budget_s):
  try:
    from ssl_jax.models import vit  # pylint: disable=g-import-not-at-top
  except ImportError:  # an ssl_jax without ViTs
    vit = None
  if 'vit_small' not in getattr(vit, 'ARCHS', {}):
    ctx.table.notes.append('ViT-S/16: skipped, this ssl_jax has no vit_small')
    return
  ctx.step('ViT-S/16 224 px', _R50[0], [*_R50[1], 'model.name=vit_small'], budget_s=budget_s, tiny_px=True)


def _torch(ctx, budget_s):
  """PyTorch's step in a child process; its ratio to the bf16 ResNet-18 row is added by `_torch_ratio`."""
  spec, assignments = _R18[0], [*_R18[1], 'model.dtype=bfloat16', *(_TINY if ctx.args.tiny else [])]
  try:
    pt = benchmark.run_torch(spec, assignments, ctx.args.steps, timeout_s=budget_s)
  except UserError as e:  # no PyTorch here
    ctx.table.notes.append(f'PyTorch: skipped, {e}')
    return
  ctx.results['pytorch'] = pt
  ctx.table.notes.append(f'PyTorch {pt["torch_version"]} on {pt["device_name"]} ({pt["execution"]}, '
                         f'{pt["dtype"]}, channels-last {pt["channels_last"]}): {pt["step_s"] * 1e3:.2f} ms, '
                         f'{pt["views_per_s"]:,.0f} views/s, compile/first step {pt["compile_s"]:.1f} s'
                         + ''.join(f'; {n}' for n in pt['notes'][:-1]))


def _torch_ratio(ctx, budget_s):
  del budget_s
  pt, jx = ctx.results.get('pytorch'), ctx.results.get('SimCLR R18 bfloat16')
  if pt and jx:
    ctx.table.ratios.append(('SimCLR R18 bf16: ssl_jax / PyTorch step time', jx['step_s'] / pt['step_s'],
                             jx['peak_bytes'] / pt['peak_bytes'] if pt.get('peak_bytes') else None, '< 1'))


def _pair(name, candidate, baseline, target, tiny_px=False, tiny=()):
  """A part measuring two recipes ((spec, assignments) each) and their ratio."""

  def run(ctx, budget_s):
    c = ctx.step(f'{name}: candidate', *candidate, budget_s=budget_s / 2, tiny_px=tiny_px, tiny=tiny)
    b = ctx.step(f'{name}: baseline', *baseline, budget_s=budget_s / 2, tiny_px=tiny_px, tiny=tiny)
    ctx.ratio(name, c, b, target)

  return run


def _pipeline(ctx, budget_s):
  """In-memory uint8 images through the trainer's input path (host batches, on-device augmentation)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ssl_jax import data  # pylint: disable=g-import-not-at-top
  config = ctx.config(_R18[0], [*_R18[1], 'model.dtype=bfloat16'])
  n = config.batch_size * 8
  rng = np.random.default_rng(0)
  data.register_memory_dataset('accelerator_bench', rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
                               rng.integers(0, 10, (n,)), num_classes=10)
  config.data.name = 'accelerator_bench'
  r = benchmark.measure_end_to_end(config, steps=ctx.args.steps, budget_s=budget_s)
  ctx.results['pipeline'] = r
  ctx.table.ratios.append(('in-memory uint8 source end to end / device-resident batch (views/s)',
                           r['e2e_ratio'], None, '>= 0.95'))


def parts() -> list[Part]:
  """The table's parts in the order they run (PyTorch first: it must have the device before JAX takes it)."""
  selfcon = 'selfcon_imagenet:synthetic'
  big = ['batch_size=256', 'model.name=resnet50', 'model.bn_group_size=0', 'model.dtype=bfloat16']
  s3l = ['batch_size=256', 'model.dtype=bfloat16']
  return [
      Part('pytorch', 120, _torch),
      Part('resnet18', 60, _resnet18),
      Part('pytorch ratio', 0, _torch_ratio),
      Part('resnet50', 60, _resnet50),
      Part('vit', 60, _vit),
      Part('selfcon', 90, _pair('SelfCon / SupCon (R50, 224 px)', (selfcon, big),
                                (f'{selfcon},variant=supcon', big), 'memory 0.59, time 0.48 (paper)',
                                tiny_px=True)),
      Part('s3l', 90, _pair('S3L 112 px / 224 px (R50)', ('s3l_simclr_cub:synthetic,res=112', s3l),
                            ('s3l_simclr_cub:synthetic,res=224', s3l), 'about 0.25 (pixels)', tiny_px=True)),
      Part('fusion', 50, _pair('batch fusion on / off (SimCLR R18)', ('fusion_cifar:synthetic', ['batch_size=512']),
                               ('fusion_cifar:synthetic,fusion=false', ['batch_size=512']), 'small overhead',
                               tiny=('fusion.group_size=8',))),
      Part('rotation', 50, _pair('rotation add-on / SimCLR (R18)',
                                 ('rotation_cifar:synthetic,framework=simclr', []),
                                 ('rotation_cifar:synthetic,framework=simclr,rotation=false', []),
                                 'about 3 (4 rotated copies of one view, paper)')),
      Part('repmix', 50, _pair('RepMix / SimCLR (R18)', ('repmix_cifar10:synthetic', []),
                               ('repmix_cifar10:synthetic,method=simclr', []), 'about 2 (clean + mixed views)')),
      Part('pipeline', 50, _pipeline),
  ]


# ----------------------------------------------------------------------------------------------- running
def _header(args) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return (f'Accelerator table, {time.strftime("%Y-%m-%d")}: {jax.device_count()} × {device.device_kind} '
          f'({jax.default_backend()}), jax {jax.__version__}; median of up to {args.steps} steps after '
          f'{benchmark.WARMUP_STEPS} warm-up steps; memory: XLA memory analysis of one device\'s step; MFU '
          'against the bf16 dense peak. Command: launch/accelerator_bench.sh DIR '
          + f'--steps {args.steps} --budget_s {args.budget_s:g}'
          + (f' --peak_tflops {args.peak_tflops:g}' if args.peak_tflops else '') + (' --tiny' if args.tiny else ''))


def write(table: Table, ctx: Context, out: pathlib.Path) -> str:
  text = table.markdown()
  (out / 'accelerator.md').write_text(text)
  (out / 'accelerator.json').write_text(json.dumps(ctx.results, indent=2, default=str))
  return text


def run_all(args, out: pathlib.Path) -> str:
  """Runs every part within the budget and writes the table; returns it as markdown."""
  table = Table('')  # the header needs JAX's devices, asked for after PyTorch has run
  ctx = Context(args, table)
  lock = threading.Lock()

  def watchdog():  # the whole run overran: the table of what is done, then out
    with lock:
      table.notes.append(f'the run overran its {args.budget_s:.0f} s budget by a minute; stopped here')
      print(write(table, ctx, out), flush=True)
    os._exit(0)  # pylint: disable=protected-access  (a compile in flight cannot be interrupted otherwise)

  timer = threading.Timer(args.budget_s + 60, watchdog)
  timer.daemon = True
  timer.start()
  for part in [p for p in parts() if not args.parts or p.name in args.parts]:
    if part.name != 'pytorch' and not table.header:
      table.header = _header(args)
    budget = part.budget_s
    if budget > ctx.left_s():
      table.notes.append(f'{part.name}: skipped, {ctx.left_s():.0f} s left of the budget and it needs '
                         f'{budget:.0f} s')
      continue
    try:
      part.run(ctx, budget)
    except Exception as e:  # pylint: disable=broad-except  (out of memory, a missing recipe: a note)
      first_line = (str(e).splitlines() or [''])[0][:200]
      table.notes.append(f'{part.name}: failed, {type(e).__name__}: {first_line}')
    with lock:
      write(table, ctx, out)
  timer.cancel()
  with lock:
    return write(table, ctx, out)


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit code."""
  parser = argparse.ArgumentParser(prog='python -m ssl_jax.accelerator', description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='directory for accelerator.md and accelerator.json')
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help="one device's bf16 dense peak TFLOP/s (default: looked up by device kind)")
  parser.add_argument('--budget_s', type=float, default=420.0, help='seconds for the whole table')
  parser.add_argument('--steps', type=int, default=10, help='timed steps per measurement')
  parser.add_argument('--tiny', action='store_true', help='toy sizes (the CPU test)')
  parser.add_argument('--parts', default='', help='only these parts, comma-separated (default: all)')
  args = parser.parse_args(argv)
  try:
    names = [p.name for p in parts()]
    args.parts = [n for n in args.parts.split(',') if n]
    unknown = [n for n in args.parts if n not in names]
    if unknown:
      raise UserError(f'--parts: unknown {", ".join(unknown)}; the parts are {", ".join(names)}')
    if args.steps < 1 or args.budget_s <= 0 or (args.peak_tflops is not None and args.peak_tflops <= 0):
      raise UserError('--steps, --budget_s and --peak_tflops must be positive')
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
  except (UserError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(run_all(args, out), end='')
  return 0


if __name__ == '__main__':
  sys.exit(main())
