r"""MoCo v3, ViT-S/4 on CIFAR-10 (or CIFAR-100): MoCo v3's ViT recipe at 32 px.

Command (prepare the data as in configs/simclr_cifar10.py):
  python -m ssl_jax.main --config configs/mocov3_cifar10.py --workdir /tmp/mocov3_cifar10

Recipe: MoCo v3's ViT settings (configs/mocov3_imagenet.py) on 4x4 patches of the 32-px images (64 tokens):
ViT-S (12 heads, as MoCo v3's `vits.py`), fixed sin-cos position embedding, frozen random patch projection,
class token; projector 384-4096-4096-256 and predictor 256-4096-256, both ending in an affine-free BN; AdamW lr 1.5e-4 x batch/256,
weight decay 0.1 on every parameter (as the official AdamW), 40 warm-up epochs then cosine, batch 512,
300 epochs; T 0.2; momentum 0.99 -> 1 on a cosine. Views as BYOL's asymmetric recipe without blur (which
does little at 32 px: solo-learn's CIFAR recipes drop it): view 2 solarized with p 0.2.
Expected: no published figure for this recipe (the paper trains on ImageNet only), not measured with ssl_jax.
Hardware/runtime: meant for an accelerator; on the 2-core CPU development machine use `:runlocal`.

Arguments (comma-separated): runlocal (seconds-long smoke run: a 2-block ViT 48 wide at 16 px, needs the
dataset or tfds mock data), synthetic (random images, no data needed), dataset=cifar10|cifar100.
Switches: --config.model.name=vit_tiny|vit_base, --config.model.patch_size, --config.model.pool=avg,
--config.model.pos_embed=learned, --config.model.freeze_patch_embed=False, --config.model.num_heads=6 (timm's
ViT-S).
"""
import ml_collections

from configs import common
from ssl_jax.errors import UserError

DATASETS = ('cifar10', 'cifar100')


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, dataset='cifar10')
  if arg.dataset not in DATASETS:
    raise UserError(f'dataset={arg.dataset!r}: use one of {", ".join(DATASETS)}')
  c = common.base_config()
  c.method = 'mocov3'
  c.batch_size = 512
  c.total_epochs = 300.0
  c.checkpoint_every_steps = 2000
  c.eval_every_steps = 5000

  c.model.name = 'vit_small'
  c.model.patch_size = 4
  c.model.pos_embed = 'sincos'
  c.model.freeze_patch_embed = True
  c.model.pool = 'token'
  c.model.head = ml_collections.ConfigDict(dict(
      num_layers=3, hidden_dim=4096, out_dim=256, use_bn=True, last_bn=True, activation='relu'))
  c.model.predictor = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=4096, out_dim=256, use_bn=True, last_bn=True, activation='relu'))
  c.ema = ml_collections.ConfigDict(dict(schedule='cosine', base=0.99, final=1.0))
  c.loss.temperature = 0.2

  c.data.name = arg.dataset
  c.data.image_size = 32
  c.augment.brightness, c.augment.contrast, c.augment.saturation, c.augment.hue = 0.4, 0.4, 0.2, 0.1
  c.augment2 = ml_collections.ConfigDict(c.augment.to_dict())
  c.augment2.solarize_prob = 0.2

  c.optimizer.name = 'adamw'
  c.optimizer.base_lr = 1.5e-4
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.warmup_epochs = 40.0
  c.optimizer.weight_decay = 0.1
  c.optimizer.exclude_bias_and_norm = False   # torch.optim.AdamW(model.parameters()) decays every parameter

  if arg.synthetic:
    common.use_synthetic(c)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
    c.model.num_stages = 2      # blocks kept
  return c
