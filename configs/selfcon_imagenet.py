r"""SelfCon (Bae et al., AAAI 2023), ResNet-34 on ImageNet: the official recipe, `same` sub-network.

The official scripts/selfcon_represent_imagenet.sh: ResNet-34 (ImageNet stem), an unshared copy of stages 3-4
(`same`) branching off after stage 2, one 224-px view per image, labels, batch 2048, SGD (momentum 0.9,
weight decay 1e-4 on every parameter) at lr 0.25, 10 warm-up epochs then cosine to lr·1e-3, τ 0.1 with the
official τ/0.07 loss scaling, 800 epochs, fp16 AMP (bfloat16 here); heads 512-512-128 without BN;
augmentation as configs/selfcon_cifar100.py (crops of scale 0.2-1 on the host). BatchNorm in ghost groups
of 256 x views rows in view-major order (`selfcon.view_major_bn`): the official 8-GPU DataParallel chunks,
each of one view.

Commands (a GPU/TPU host with ImageNet prepared for tfds, see the README's Data section):
  python -m ssl_jax.main --config configs/selfcon_imagenet.py --workdir /tmp/selfcon_in
  python -m ssl_jax.evaluate.linear_cli --workdir /tmp/selfcon_in --config.protocol=augmented \
      --config.crop_scale='(0.2, 1.0)' --config.lr=5 --config.batch_size=512 --config.epochs=40 \
      --config.standardize=False
(official linear protocol: SGD lr 5, batch 512, 40 epochs, x0.1 at 20 and 30; ssl_jax decays on a cosine).
The linear CLI reports backbone, sub-network and ensemble, best and last epoch.
Baselines with the same budget: `:variant=supcon`, `:variant=supcon_s`. The paper's headline is ResNet-50
(`--config.model.name=resnet50`; heads become 2048-2048-128); `:dataset=imagenet100` for ImageNet-100.

Expected (the paper's figures, none measured with ssl_jax): the AAAI abstract reports, for ResNet-50 on
ImageNet, SelfCon +0.6% top-1 over SupCon with 59% of its memory and 48% of its time, and up to +1.5% with
the ensemble of the two exits. The ResNet-34 numbers and the ResNet-50 recipe (sub-network, batch, epochs)
are in the paper's tables, which could not be read here.
Hardware/runtime: the official runs used eight RTX 3090s; not measured with ssl_jax.

Arguments (comma-separated): variant=... (as configs/selfcon_cifar100.py), dataset=imagenet2012|imagenet100,
runlocal (seconds-long smoke run at 32 px; needs the dataset or tfds mock data), synthetic (random images).
"""
from configs import common, selfcon_cifar100
from ssl_jax.methods import selfcon

DATASETS = ('imagenet2012', 'imagenet100')


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, dataset='imagenet2012', variant='selfcon')
  if arg.dataset not in DATASETS:
    raise ValueError(f'dataset={arg.dataset!r}: use one of {", ".join(DATASETS)}')
  c = selfcon_cifar100.get_config(f'variant={arg.variant}')
  views = selfcon.VARIANTS[arg.variant].views
  c.selfcon.sub_net = 'same'
  c.batch_size = 2048
  c.total_epochs = 800.0
  c.checkpoint_every_steps = 5000
  c.eval_every_steps = 0
  c.eval.knn_bank_size = 100_000   # bounds the kNN / final-probe bank (and its memory) to 100k train images

  c.model.name = 'resnet34'
  c.model.stem = 'imagenet'
  c.model.bn_group_size = 256 * views

  c.data.name = arg.dataset
  c.data.image_size = 224
  c.optimizer.base_lr = 0.25

  if arg.synthetic:
    common.use_synthetic(c)
    c.data.synthetic_shape = (224, 224, 3)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
    c.data.image_size = 32       # the ImageNet stem and 4 stages need at least 32 px
    c.model.dtype = 'float32'
    c.model.bn_group_size = 8 * views
    c.eval.knn_bank_size = 0
    if arg.synthetic:
      c.data.synthetic_shape = (32, 32, 3)
  return c
