r"""Rotation prediction as an auxiliary task (Addepalli et al., ECCV 2022): the CIFAR grid of its Table 4.

ResNet-18 (CIFAR stem), 200 epochs, batch 512; SimCLR, BYOL or SimSiam, with or without the rotation task
(ssl_jax/methods/rotation.py: rotated copies of both views, 4 angles, head on the projector output, loss
+ w·(CE_1 + CE_2)) with the paper's tuned weights: SimCLR w = 1.0, BYOL w = 0.2, SimSiam w = 0.1 (CIFAR-10)
and 0.2 (CIFAR-100). Only w differs between a row and its "+ Rot" row, as in the paper.
  byol, simsiam  the `recipe=rotation200` baselines of configs/byol_cifar10.py and configs/simsiam_cifar10.py
                 (the paper's learning rates, weight decays, EMA rates, projector depths).
  simclr         configs/simclr_cifar10.py (solo-learn's LARS and views) with the paper's values: lr 0.5 (not
                 scaled), wd 1e-4, τ 0.2, 10 warm-up epochs then cosine, projector 512-512-128 with BN.
The optimizer and the EMA schedule are not stated in the paper: solo-learn's (its code base) are assumed.

Commands (one GPU host; prepare the data first with
`python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10').download_and_prepare()"`, and the
same with 'cifar100'):
  python -m ssl_jax.main --config configs/rotation_cifar.py:framework=byol,dataset=cifar10 --workdir DIR
  python -m ssl_jax.main --config configs/rotation_cifar.py:framework=byol,dataset=cifar10,rotation=false \
      --workdir DIR2
Both rows of one framework, and the steps each needs to reach the baseline's final kNN accuracy (the paper's
efficiency claim: BYOL + rotation gets there in about a third of the epochs, its Fig. 2):
  python launch/sweep.py --config configs/rotation_cifar.py:framework=byol --grid 'config:rotation=false,true' \
      --baseline config:rotation=false --workdir /tmp/rotation_cifar10_byol

Expected: the PAPER'S figures (its NeurIPS'21 workshop version, Table 4: kNN with k = 200 / linear top-1;
not measured with ssl_jax). kNN here is ssl_jax's monitor (`knn_top1_k200`, cosine, T 0.1); the linear
figure is `python -m ssl_jax.evaluate.linear_cli` (the paper: frozen BN, no spatial augmentation, 100 epochs).
  | framework        | CIFAR-10 kNN | CIFAR-10 linear | CIFAR-100 kNN | CIFAR-100 linear |
  | SimCLR           | 86.37        | 88.77           | 55.10         | 62.96            |
  | SimCLR + Rot     | 88.69        | 90.91           | 57.09         | 65.40            |
  | BYOL             | 86.56        | 89.30           | 54.37         | 60.67            |
  | BYOL + Rot       | 89.80        | 91.89           | 58.41         | 67.03            |
  | SimSiam          | 87.05        | 89.77           | 56.90         | 64.27            |
  | SimSiam + Rot    | 90.35        | 91.91           | 58.92         | 67.38            |
Hardware/runtime: meant for an accelerator (the paper: 1-2 V100s); not measured with ssl_jax. The rotation
task adds two forward and backward passes of the online encoder per step (about 2x the step cost of SimCLR
and SimSiam, 1.7x of BYOL's, by the pass count).

Arguments (comma-separated): framework=simclr|byol|simsiam (default byol), dataset=cifar10|cifar100,
rotation=true|false (false: the same recipe without the task), runlocal (seconds-long smoke run; needs the
dataset or tfds mock data), synthetic (random images, no data needed).
Switches: --config.rotation.{weight, num_angles (2, 4, 8, 12), head_on ('projector'|'backbone'), hidden_dim}.
"""
from configs import byol_cifar10, common, simclr_cifar10, simsiam_cifar10

# The paper's tuned weights w, per (framework, dataset) (its "2λ"; BYOL's "1/(2λ) = 5").
WEIGHTS = {('simclr', 'cifar10'): 1.0, ('simclr', 'cifar100'): 1.0,
           ('byol', 'cifar10'): 0.2, ('byol', 'cifar100'): 0.2,
           ('simsiam', 'cifar10'): 0.1, ('simsiam', 'cifar100'): 0.2}


def _simclr(dataset: str, synthetic: bool):
  """configs/simclr_cifar10.py with the rotation paper's SimCLR values."""
  c = simclr_cifar10.get_config('synthetic' if synthetic else None)
  c.batch_size = 512
  c.total_epochs = 200.0
  c.optimizer.base_lr = 0.5
  c.optimizer.lr_scaling = 'none'
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_epochs = 10.0
  c.loss.temperature = 0.2
  c.model.head.hidden_dim = 512
  c.model.head.out_dim = 128
  if not synthetic:
    c.data.name = dataset
  return c


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, framework='byol', dataset='cifar10',
                         rotation=True)
  if (arg.framework, arg.dataset) not in WEIGHTS:
    raise ValueError(f'framework={arg.framework!r} dataset={arg.dataset!r}: use simclr|byol|simsiam and '
                     'cifar10|cifar100')
  if arg.framework == 'simclr':
    c = _simclr(arg.dataset, arg.synthetic)
  else:
    base = {'byol': byol_cifar10, 'simsiam': simsiam_cifar10}[arg.framework]
    c = base.get_config(f'dataset={arg.dataset},recipe=rotation200' + (',synthetic' if arg.synthetic else ''))
  c.eval_every_steps = 970        # kNN every 10 epochs (97 steps of 512 each): the curves of the claim
  c.rotation.enabled = arg.rotation
  c.rotation.weight = WEIGHTS[arg.framework, arg.dataset]
  c.rotation.num_angles = 4
  c.rotation.head_on = 'projector'
  if arg.runlocal:
    common.shrink_for_runlocal(c)
  return c
