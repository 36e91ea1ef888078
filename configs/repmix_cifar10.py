r"""RepMix (Sharma et al., BDA 2024) on CIFAR-10 / CIFAR-100, ResNet-20: the official code's recipe.

Command (one GPU host; prepare the data first with
`python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/repmix_cifar10.py --workdir /tmp/repmix_cifar10
  python -m ssl_jax.evaluate.linear_cli --workdir /tmp/repmix_cifar10 --config.preset=repmix
The SimCLR baseline, identical except for the method (two augmented views, same loss, optimizer, schedule):
  python -m ssl_jax.main --config configs/repmix_cifar10.py:method=simclr --workdir /tmp/simclr_r20_cifar10
Both, trained and compared by kNN against steps and wall-clock:
  python launch/sweep.py --config configs/repmix_cifar10.py --grid 'config:method=simclr,repmix' \
      --baseline config:method=simclr --workdir /tmp/repmix_vs_simclr
Expected: not measured with ssl_jax (no accelerator so far). The paper's main tables could not be retrieved;
its supplementary ablation (ResNet-20, CIFAR-10, this linear protocol) puts three weaker variants at 19.3%,
61.8% and 61.8% linear top-1 and says the full method does better than all of them.
Hardware/runtime: meant for one GPU. Per step RepMix forwards 4 x 1024 images (SimCLR 2 x 1024); 48 steps per
epoch, 9,600 steps in all.

The recipe (the official code at HEAD 3014c90; ../shared/reference/repmix_and_batch_fusion.md):
  ResNet-20 (64-d features), projector Linear 512 -> BN -> LeakyReLU(0.01) -> Linear 128; batch 1024 anchors;
  AdamW lr 0.03, weight decay 5e-4 on every parameter, no lr scaling; 200 epochs; τ 0.5 and the code's
  loss -log(mean p) (`loss.reduction='log_of_mean'`); the code's learning-rate schedule, a cosine with
  T_max = 200 *steps* stepped every step, so periodic (`optimizer.schedule='periodic_cosine'`); its
  augmentation: colour jitter (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale 0.2, random-resized crop 0.08-1,
  flip, and an always-on horizontal Gaussian blur (σ 2, 3 taps at 32 px).
Differences we keep: the last partial batch of an epoch is dropped (the code's 49th step of 848 anchors is
not taken); jitter runs after the crop, so contrast blends with the crop's mean; the 4 jitter ops take a
random order per image; partners are a permutation per epoch (ssl_jax/methods/repmix.py); the projector's
Linear layers start from Flax's LeCun-normal init (PyTorch: uniform ±1/√fan_in).

Arguments (comma-separated):
  dataset=cifar10|cifar100
  method=repmix|simclr     the SimCLR baseline differs only in the method
  augment=official|simclr  the code's augmentation (default) or SimCLR's (jitter 0.4/0.4/0.4/0.1, no blur)
  schedule=periodic_cosine|warmup_cosine  the code's per-step cosine (default) or a 10-epoch warmup then one
                           cosine over the run
  loss=log_of_mean|mean_of_log            the code's loss (default) or standard NT-Xent
  runlocal    seconds-long smoke run (tiny network, a few steps); needs the dataset or tfds mock data.
  synthetic   random images instead of the dataset: the throughput benchmark, no data needed.
"""
from configs import common


def parse(arg):
  """The arguments every RepMix recipe takes (module docstring), over their defaults."""
  return common.parse_arg(arg, method='repmix', augment='official', schedule='periodic_cosine',
                          loss='log_of_mean', runlocal=False, synthetic=False, dataset='')


def official_recipe(c, arg, *, image_size: int) -> None:
  """The official code's method, projector, loss, optimizer, schedule and augmentation, with the switches.

  Args:
    c: a `common.base_config()` to change in place.
    arg: from `parse`.
    image_size: the training resolution (the fixed blur's kernel follows it).
  """
  if arg.method not in ('repmix', 'simclr'):
    raise ValueError(f'method={arg.method!r}: use repmix or simclr (the baseline)')
  c.method = arg.method
  c.num_views = 2                    # the SimCLR baseline's two views (the code's dataset.K=2)
  c.total_epochs = 200.0
  c.data.image_size = image_size

  c.model.head.num_layers = 2
  c.model.head.hidden_dim = 512
  c.model.head.out_dim = 128
  c.model.head.use_bn = True
  c.model.head.activation = 'leaky_relu'

  c.loss.temperature = 0.5
  c.loss.reduction = arg.loss

  c.optimizer.name = 'adamw'
  c.optimizer.base_lr = 0.03
  c.optimizer.lr_scaling = 'none'
  c.optimizer.weight_decay = 5e-4
  c.optimizer.exclude_bias_and_norm = False
  c.optimizer.end_lr_factor = 0.0
  c.optimizer.schedule = arg.schedule
  c.optimizer.cosine_t_max_steps = 0   # periodic_cosine: T = the run's epoch count, in steps (as the code)
  c.optimizer.warmup_epochs = 0.0 if arg.schedule == 'periodic_cosine' else 10.0

  if arg.augment == 'official':
    c.augment.update(crop_scale=(0.08, 1.0), flip_prob=0.5, jitter_prob=0.8, brightness=0.8, contrast=0.8,
                     saturation=0.8, hue=0.2, grayscale_prob=0.2, blur_prob=0.0, blur_kernel_frac=0.1,
                     fixed_blur_sigma=(0.1, 2.0), solarize_prob=0.0)
  elif arg.augment != 'simclr':  # base_config's augment block is SimCLR's set
    raise ValueError(f'augment={arg.augment!r}: use official or simclr')


def get_config(arg=None):
  arg = parse(arg)
  c = common.base_config()
  official_recipe(c, arg, image_size=32)
  c.data.name = arg.dataset or 'cifar10'
  if c.data.name not in ('cifar10', 'cifar100'):
    raise ValueError(f'dataset={arg.dataset!r}: use cifar10 or cifar100')
  c.batch_size = 1024
  c.model.name = 'resnet20'
  c.model.stem = 'cifar'
  c.log_every_steps = 48
  c.checkpoint_every_steps = 480     # every 10 epochs, as the code
  c.eval_every_steps = 480

  if arg.synthetic:
    common.use_synthetic(c)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
  return c
