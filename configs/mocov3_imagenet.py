r"""MoCo v3 on ImageNet-1k: the official ViT-S/16 and ViT-B/16 recipes and the ResNet-50 ones.

Commands (a GPU/TPU host with ImageNet prepared for tfds, see the README's Data section):
  python -m ssl_jax.main --config configs/mocov3_imagenet.py --workdir /tmp/mocov3_vits
  python -m ssl_jax.main --config configs/mocov3_imagenet.py:model=vit_base --workdir /tmp/mocov3_vitb
  python -m ssl_jax.main --config configs/mocov3_imagenet.py:model=resnet50,epochs=300 --workdir /tmp/mocov3_r50

Recipes (facebookresearch/moco-v3 CONFIG.md; batch 4096, linear lr scaling base_lr x batch / 256):
  vit_small, vit_base  300 epochs, AdamW lr 1.5e-4, weight decay 0.1 on every parameter (torch's AdamW over
      model.parameters()), 40 warm-up epochs then cosine, T 0.2, momentum 0.99 -> 1 on a cosine
      (--moco-m-cos), frozen random patch projection (--stop-grad-conv1), fixed sin-cos positions, class
      token; ViT-S with 12 heads (MoCo v3's vits.py); projector 3 layers 4096-4096-256, predictor 4096-256,
      both ending in an affine-free BN (the official MoCo_ViT builds its predictor with last_bn).
      Expected (the paper's / the official README's figures, not measured with ssl_jax): linear top-1 73.2%
      (ViT-S/16) and 76.7% (ViT-B/16).
  resnet50  LARS (trust coefficient 1e-3; no decay or adaptation of biases and BN parameters), 10 warm-up
      epochs then cosine, T 1.0, crops of scale 0.2-1, projector 2048-4096-256 (final affine-free BN),
      predictor 4096-256 without a final BN (MoCo_ResNet);
      epochs=100: lr 0.6, wd 1e-6, momentum 0.99 -> 1; epochs=300: lr 0.3, wd 1e-6; epochs=1000: lr 0.3,
      wd 1.5e-6, momentum 0.996 -> 1. Expected (the official README's figures, not measured with ssl_jax):
      linear top-1 68.9% / 72.8% / 74.6% after 100 / 300 / 1000 epochs. One difference: the official
      ResNet-50 starts every block's last BN scale at 0 (zero_init_residual); ssl_jax's starts it at 1.
Views (both recipes, BYOL's): random-resized crops on the host, flip, colour jitter (0.4, 0.4, 0.2, 0.1) with
p 0.8, grayscale p 0.2; Gaussian blur p 1.0 on view 1 and 0.1 on view 2, solarize p 0.2 on view 2.
BatchNorm (heads, and the ResNet) over the whole global batch, as the official SyncBN.
The official linear evaluation: SGD with momentum, batch 1024, 90 epochs (lr 3 for ViT, 0.1 x batch/256 for
ResNet-50), on the frozen features (ssl_jax.evaluate.linear_cli).
Hardware/runtime: the official runs used 16-64 V100s; not measured with ssl_jax. A ViT-S/16 step at batch 8
on the 2-core CPU: configs/mocov3.md.

Arguments (comma-separated): model=vit_small|vit_base|resnet50, epochs (ResNet-50: 100, 300 or 1000),
runlocal (seconds-long smoke run at 32 px; needs the dataset or tfds mock data), synthetic (random images).
"""
import ml_collections

from configs import common
from ssl_jax.errors import UserError

MODELS = ('vit_small', 'vit_base', 'resnet50')
_RESNET50 = {100: (0.6, 1e-6, 0.99), 300: (0.3, 1e-6, 0.99), 1000: (0.3, 1.5e-6, 0.996)}  # lr, wd, m


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, model='vit_small', epochs=0)
  if arg.model not in MODELS:
    raise UserError(f'model={arg.model!r}: use one of {", ".join(MODELS)}')
  vit = arg.model != 'resnet50'
  epochs = arg.epochs or (300 if vit else 100)
  if (vit and epochs != 300) or (not vit and epochs not in _RESNET50):
    raise UserError(f'epochs={epochs}: the official {arg.model} recipes are for '
                    f'{"300" if vit else "100, 300 or 1000"} epochs (set other lengths with '
                    '--config.total_epochs)')
  c = common.base_config()
  c.method = 'mocov3'
  c.batch_size = 4096
  c.total_epochs = float(epochs)
  c.checkpoint_every_steps = 2500
  c.eval_every_steps = 0
  c.eval.knn_bank_size = 100_000   # bounds the kNN / final-probe bank (and its memory) to 100k train images

  c.model.name = arg.model
  c.model.bn_group_size = 0        # SyncBN: statistics over the global batch
  c.model.head = ml_collections.ConfigDict(dict(
      num_layers=3 if vit else 2, hidden_dim=4096, out_dim=256, use_bn=True, last_bn=True, activation='relu'))
  c.model.predictor = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=4096, out_dim=256, use_bn=True, last_bn=vit, activation='relu'))
  c.ema = ml_collections.ConfigDict(dict(schedule='cosine', base=0.99, final=1.0))

  c.data.name = 'imagenet2012'
  c.data.image_size = 224
  c.augment.crop_scale = (0.08, 1.0) if vit else (0.2, 1.0)   # --crop-min
  c.augment.brightness, c.augment.contrast, c.augment.saturation, c.augment.hue = 0.4, 0.4, 0.2, 0.1
  c.augment2 = ml_collections.ConfigDict(c.augment.to_dict())
  c.augment.blur_prob = 1.0
  c.augment2.blur_prob = 0.1
  c.augment2.solarize_prob = 0.2

  if vit:
    c.model.patch_size = 16
    c.model.pos_embed = 'sincos'
    c.model.freeze_patch_embed = True
    c.model.pool = 'token'
    c.loss.temperature = 0.2
    c.optimizer.name = 'adamw'
    c.optimizer.base_lr = 1.5e-4
    c.optimizer.weight_decay = 0.1
    c.optimizer.warmup_epochs = 40.0
    c.optimizer.exclude_bias_and_norm = False
  else:
    lr, wd, m = _RESNET50[epochs]
    c.model.stem = 'imagenet'
    c.loss.temperature = 1.0
    c.ema.base = m
    c.optimizer.name = 'lars'
    c.optimizer.base_lr = lr
    c.optimizer.weight_decay = wd
    c.optimizer.warmup_epochs = 10.0
    c.optimizer.momentum = 0.9
    c.optimizer.trust_coefficient = 1e-3
    c.optimizer.exclude_bias_and_norm = True
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.base_batch_size = 256

  if arg.synthetic:
    common.use_synthetic(c)
    c.data.synthetic_shape = (224, 224, 3)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
    c.data.image_size = 32         # 2x2 patches of 16 for the ViTs; the ResNet's ImageNet stem needs 32
    c.model.num_stages = 2 if vit else 0
    c.model.dtype = 'float32'
    c.eval.knn_bank_size = 0
    if arg.synthetic:
      c.data.synthetic_shape = (32, 32, 3)
  return c
