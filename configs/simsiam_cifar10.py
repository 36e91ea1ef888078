r"""SimSiam, ResNet-18 (CIFAR stem) on CIFAR-10/100: solo-learn's 1000-epoch recipe or the rotation paper's.

Commands (prepare the data as in configs/simclr_cifar10.py):
  python -m ssl_jax.main --config configs/simsiam_cifar10.py --workdir /tmp/simsiam_cifar10
  python -m ssl_jax.main --config configs/simsiam_cifar10.py:dataset=cifar100,recipe=rotation200 --workdir ...

Recipes (`recipe=`):
  solo1000    solo-learn's scripts/pretrain/cifar/simsiam.yaml: batch 256, SGD lr 0.5 (linear scaling),
              wd 1e-5, 10 warm-up epochs then cosine, 1000 epochs; projector 512-2048-2048 ending in an
              affine-free BN, predictor 2048-512-2048; symmetric views with blur p=0.5 (its
              symmetric_weak.yaml).
              Expected: no published figure in our reference notes; not measured with ssl_jax yet.
  rotation200 Addepalli et al. (ECCV 2022) Table 4 baseline, trained with PatrickHua/SimSiam: batch 512, 200
              epochs, SGD, cosine with 10 warm-up epochs; CIFAR-10 lr 0.07, wd 4e-4, 2 projector layers;
              CIFAR-100 lr 0.05, wd 5e-4, 3 projector layers (the lr is used as given, unscaled); no blur.
              Expected: kNN (k=200) 87.1% / linear 89.8% (CIFAR-10), 56.9% / 64.3% (CIFAR-100).
None of these is measured with ssl_jax yet. Hardware/runtime: as configs/simclr_cifar10.py (a SimSiam step
costs about as much as a SimCLR step); use `:runlocal` on a CPU.

Arguments (comma-separated): runlocal, synthetic, dataset=cifar10|cifar100, recipe=solo1000|rotation200
(as configs/byol_cifar10.py).
"""
import ml_collections

from configs import byol_cifar10, common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, dataset='cifar10', recipe='solo1000')
  if arg.dataset not in ('cifar10', 'cifar100') or arg.recipe not in byol_cifar10.RECIPES:
    raise ValueError(f'dataset={arg.dataset!r} recipe={arg.recipe!r}: use cifar10|cifar100 and '
                     f'{byol_cifar10.RECIPES}')
  c = common.base_config()
  c.method = 'simsiam'
  c.batch_size = 256
  c.total_epochs = 1000.0
  c.checkpoint_every_steps = 2000
  c.eval_every_steps = 5000

  c.model.name = 'resnet18'
  c.model.stem = 'cifar'
  c.model.head = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=2048, out_dim=2048, use_bn=True, last_bn=True, activation='relu'))
  c.model.predictor = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=512, out_dim=2048, use_bn=True, last_bn=False, activation='relu'))

  c.data.name = arg.dataset
  c.data.image_size = 32
  c.augment.blur_prob = 0.5
  c.augment2 = ml_collections.ConfigDict(c.augment.to_dict())

  c.optimizer.name = 'sgd'
  c.optimizer.base_lr = 0.5
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.weight_decay = 1e-5

  if arg.recipe == 'rotation200':
    c.batch_size = 512
    c.total_epochs = 200.0
    c.optimizer.lr_scaling = 'none'
    c.optimizer.base_lr = 0.07 if arg.dataset == 'cifar10' else 0.05
    c.optimizer.weight_decay = 4e-4 if arg.dataset == 'cifar10' else 5e-4
    c.model.head.num_layers = 2 if arg.dataset == 'cifar10' else 3
    c.augment.blur_prob = c.augment2.blur_prob = 0.0  # PatrickHua/SimSiam blurs only above 32 px
  if arg.synthetic:
    common.use_synthetic(c)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
  return c
