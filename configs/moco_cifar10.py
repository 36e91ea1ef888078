r"""MoCo v2, ResNet-18 (CIFAR stem) on CIFAR-10 (or CIFAR-100): solo-learn's MoCo v2+ hyperparameters.

Command (prepare the data as in configs/simclr_cifar10.py):
  python -m ssl_jax.main --config configs/moco_cifar10.py --workdir /tmp/moco_cifar10

Recipe (solo-learn's scripts/pretrain/cifar/mocov2plus.yaml): batch 256, SGD lr 0.3 (linear scaling), wd 1e-4,
10 warm-up epochs then cosine, 1000 epochs; projector 512-2048-256 without BN; queue K 32768, τ 0.2; key
encoder momentum from 0.99 to 0.999 on a cosine; symmetric views with blur p=0.5; solo-learn's symmetric
loss (`moco.symmetric`: q1·k2 against a queue of past view-2 keys plus q2·k1 against a queue of past view-1
keys, halved; `--config.moco.symmetric=False` is MoCo v2's one-direction loss). One difference from
solo-learn, a switch: MoCo's shuffle-BN (ghost BatchNorm groups of 32 = MoCo's per-GPU batch, key batch
permuted; solo-learn uses synchronised BN: --config.model.bn_group_size=0 --config.moco.shuffle_bn=False).
Expected: about 92.9% linear top-1 on CIFAR-10 (solo-learn's published 92.94% for MoCo v2+, ResNet-18, 1000
epochs, with synchronised BN); not measured with ssl_jax yet.
Hardware/runtime: meant for an accelerator; a step is about a SimCLR step (both views through the online
encoder) plus two forward passes of the key encoder (not measured). Use `:runlocal` on a CPU.

Arguments (comma-separated): runlocal, synthetic, dataset=cifar10|cifar100 (as configs/byol_cifar10.py).
"""
import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, dataset='cifar10')
  if arg.dataset not in ('cifar10', 'cifar100'):
    raise ValueError(f'dataset={arg.dataset!r}: use cifar10 or cifar100')
  c = common.base_config()
  c.method = 'moco'
  c.batch_size = 256
  c.total_epochs = 1000.0
  c.checkpoint_every_steps = 2000
  c.eval_every_steps = 5000

  c.model.name = 'resnet18'
  c.model.stem = 'cifar'
  c.model.bn_group_size = 32          # MoCo's per-GPU BatchNorm (shuffle-BN), device-count independent
  c.model.head = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=2048, out_dim=256, use_bn=False, last_bn=False, activation='relu'))
  c.ema = ml_collections.ConfigDict(dict(schedule='cosine', base=0.99, final=0.999))
  c.moco = ml_collections.ConfigDict(dict(queue_size=32768, shuffle_bn=True, symmetric=True))
  c.loss.temperature = 0.2

  c.data.name = arg.dataset
  c.data.image_size = 32
  c.augment.blur_prob = 0.5
  c.augment2 = ml_collections.ConfigDict(c.augment.to_dict())

  c.optimizer.name = 'sgd'
  c.optimizer.base_lr = 0.3
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.weight_decay = 1e-4

  if arg.synthetic:
    common.use_synthetic(c)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
    c.model.bn_group_size = 8
    c.moco.queue_size = 32
  return c
