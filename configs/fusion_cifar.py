r"""Batch fusion (the released module) on CIFAR-10/100: a framework's CIFAR recipe plus the module on view 2.

The base recipe is the framework's own, configs/<framework>_cifar10.py (solo-learn's ResNet-18 recipes for
simclr, supcon, byol, simsiam, moco; MoCo v3's ViT-S/4 for mocov3; any framework with such a recipe works).
The module is the released code's (ssl_jax/models/fusion.py): groups of G = 128 consecutive examples, one
block of hidden width 256, view 2 only, fused after the input normalisation. Unknown for 32-px images: the
patch size (the code fixes 16 at 224 px); 4 here (64 patches of 48 values), 8 a switch (16 patches of 192).

Expected: the arXiv summary's 92.12% (CIFAR-10) and 66.53% (CIFAR-100) top-1 are THEIRS (a third-party
summary of arXiv 2311.09974; backbone, framework, epochs and protocol unknown). Not measured with ssl_jax.

Commands (one GPU host; prepare the data first with
`python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/fusion_cifar.py --workdir /tmp/fusion_cifar10
  python -m ssl_jax.main --config configs/fusion_cifar.py:dataset=cifar100,framework=byol \
      --workdir /tmp/fusion_byol_cifar100
  python -m ssl_jax.main --config configs/fusion_cifar.py:framework=mocov3 --workdir /tmp/fusion_vit_cifar10
The number-of-blocks ablation (0 = the framework alone), one run after another, then sweep.md:
  python launch/sweep.py --config configs/fusion_cifar.py --grid 'fusion.num_blocks=0,1,2,3' \
      --workdir /tmp/fusion_blocks
Step-time and memory overhead of the module (ratios, on this machine's devices):
  python -m ssl_jax.benchmark --config configs/fusion_cifar.py:synthetic \
      --baseline configs/fusion_cifar.py:synthetic,fusion=false --steps 10
Hardware/runtime: as the framework's CIFAR recipe (meant for an accelerator); the module adds about
10.6 M multiply-adds per fused 32-px view (ResNet-18's CIFAR forward: 0.56 G).

Arguments (comma-separated): dataset=cifar10|cifar100, framework=<a method with configs/<it>_cifar10.py>,
fusion=true|false (false: the same recipe without the module), variant=released|gated (gated: our earlier
reading, P 4, G 4, 2 layers of width 128, both views), runlocal (seconds-long smoke run; needs the dataset or
tfds mock data), synthetic (random images, no data needed: the step-time benchmark).
Switches: --config.fusion.{patch_size, group_size, num_blocks, width, views ('second'|'both'), share_groups,
placement}; see configs/common.py.
"""
import importlib

from configs import common
from ssl_jax.errors import UserError

DATASETS = ('cifar10', 'cifar100')


def framework_config(framework: str, dataset: str, *, runlocal: bool, synthetic: bool):
  """The framework's CIFAR recipe, configs/<framework>_cifar10.py, on `dataset` ('cifar10' or 'cifar100')."""
  if dataset not in DATASETS:
    raise UserError(f'dataset={dataset!r}: use one of {", ".join(DATASETS)}')
  try:
    recipe = importlib.import_module(f'configs.{framework}_cifar10')
  except ModuleNotFoundError:
    raise UserError(f'framework={framework!r} has no CIFAR recipe (configs/{framework}_cifar10.py); use a '
                    'method that has one, e.g. simclr, byol, moco or mocov3') from None
  args = [name for name, on in (('runlocal', runlocal), ('synthetic', synthetic)) if on]
  try:
    c = recipe.get_config(','.join(args + [f'dataset={dataset}']))
  except (UserError, ValueError):  # a recipe without a dataset argument: the same recipe, renamed data
    c = recipe.get_config(','.join(args))
  if not synthetic:
    c.data.name = dataset
  return c


def use_variant(c, variant: str, *, runlocal: bool) -> None:
  """The module's settings: the released code's at 32 px (P a guess), or the gated reading's."""
  if variant not in ('released', 'gated'):
    raise UserError(f'variant={variant!r}: use released or gated')
  c.fusion.variant = variant
  if variant == 'released':
    c.fusion.patch_size = 4       # unknown for 32 px (the code: 16 at 224 px)
    c.fusion.group_size = 8 if runlocal else 128
    c.fusion.width = 16 if runlocal else 256
  else:                           # every value a guess (the reading the gated tables were measured with)
    c.fusion.update(dict(patch_size=4, group_size=4, num_blocks=2, width=16 if runlocal else 128,
                         views='both'))


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, dataset='cifar10', framework='simclr',
                         fusion=True, variant='released')
  c = framework_config(arg.framework, arg.dataset, runlocal=arg.runlocal, synthetic=arg.synthetic)
  c.fusion.enabled = arg.fusion
  use_variant(c, arg.variant, runlocal=arg.runlocal)
  return c
