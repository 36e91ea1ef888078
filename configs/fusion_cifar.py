r"""Batch fusion (BA-SSL, our reading) on CIFAR-10/100, ResNet-18 (CIFAR stem), SimCLR by default.

Zhang, Shen & Liu (arXiv 2311.09974) report 92.12% (CIFAR-10) and 66.53% (CIFAR-100) top-1; these are the
PAPER'S figures as quoted by a third-party summary, with the backbone, epochs, framework and protocol unknown
(shared/reference/repmix_and_batch_fusion.md). Not measured with ssl_jax. The module itself is our reading
of the paper (ssl_jax/models/fusion.py says which choices are guesses). Everything but the `fusion` block is
the framework's CIFAR recipe (configs/<framework>_cifar10.py: solo-learn's hyperparameters, 1000 epochs).

Commands (one GPU host; prepare the data first with
`python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/fusion_cifar.py --workdir /tmp/fusion_cifar10
  python -m ssl_jax.main --config configs/fusion_cifar.py:dataset=cifar100 --workdir /tmp/fusion_cifar100
The paper's ablation over the number of embedding layers, L = 0..4 (L = 0: no embedding layer, i.e. the
framework alone), one run after another, then a table (sweep.md) and plots in the sweep directory:
  python launch/sweep.py --config configs/fusion_cifar.py --grid 'fusion.num_layers=0,1,2,3,4' \
      --workdir /tmp/fusion_layers
  (add --print to get one `python -m ssl_jax.main` command per run for a cluster instead, then run the same
  line with --collect to build the table once they are done).
Step-time overhead of the module (target <= 5%; run both and compare `images_per_sec` in metrics.jsonl):
  python -m ssl_jax.main --config configs/fusion_cifar.py:synthetic,fusion=false --workdir /tmp/bench_off \
      --config.total_steps=20 --config.log_every_steps=10
  python -m ssl_jax.main --config configs/fusion_cifar.py:synthetic --workdir /tmp/bench_on \
      --config.total_steps=20 --config.log_every_steps=10
Hardware/runtime: as the framework's CIFAR recipe (meant for an accelerator). The fusion layer adds about
H·W·C·D·(k²+1) + (L-1)·(H/P)·(W/P)·k²·D²/G ≈ 6 M multiply-adds per 32-px view to ResNet-18's 0.56 G.

Arguments (comma-separated):
  dataset=cifar10|cifar100, framework=simclr|supcon|byol|simsiam|moco, fusion=true|false (false: the same
  recipe without the layer), runlocal (seconds-long smoke run; needs the dataset or tfds mock data),
  synthetic (random images, no data needed: the step-time benchmark).
Switches: --config.fusion.{patch_size, group_size, num_layers, width, kernel_size, norm, activation, gate
('learned'|'schedule'), gate_init, gate_max, share_groups}; see configs/common.py.
"""
from configs import byol_cifar10, common, moco_cifar10, simclr_cifar10, simsiam_cifar10, supcon_cifar10

FRAMEWORKS = {'simclr': simclr_cifar10, 'supcon': supcon_cifar10, 'byol': byol_cifar10,
              'simsiam': simsiam_cifar10, 'moco': moco_cifar10}
_WITH_DATASET_ARG = ('byol', 'simsiam', 'moco')


def framework_config(framework: str, dataset: str, *, runlocal: bool, synthetic: bool):
  """The framework's CIFAR recipe on `dataset` ('cifar10' or 'cifar100')."""
  if framework not in FRAMEWORKS or dataset not in ('cifar10', 'cifar100'):
    raise ValueError(f'framework={framework!r} dataset={dataset!r}: use one of {", ".join(FRAMEWORKS)} and '
                     'cifar10|cifar100')
  args = [name for name, on in (('runlocal', runlocal), ('synthetic', synthetic)) if on]
  if framework in _WITH_DATASET_ARG:
    args.append(f'dataset={dataset}')
  c = FRAMEWORKS[framework].get_config(','.join(args))
  if not synthetic:
    c.data.name = dataset
  return c


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, dataset='cifar10', framework='simclr',
                         fusion=True)
  c = framework_config(arg.framework, arg.dataset, runlocal=arg.runlocal, synthetic=arg.synthetic)
  c.fusion.enabled = arg.fusion
  c.fusion.patch_size = 4         # 8x8 grid of patches at 32 px  [guess]
  c.fusion.group_size = 4         # [guess]
  c.fusion.num_layers = 2         # [guess]
  c.fusion.width = 128            # [guess]
  if arg.runlocal:
    c.fusion.width = 16
  return c
