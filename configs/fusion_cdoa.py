r"""CDOA / CDOA+: the released batch-fusion recipe, MoCo v3 ViT-S/16 with the module on view 2, at 224 px.

The first author's released code (JsongZhang/US-MTD120K-Benchmarking-Test, CDOA_SSL_for_UMTD: README's
ViT-Small command and `main_cdoa.py`), on MoCo v3 (configs/mocov3_imagenet.py) with what that code changes:
batch 256 (2 GPUs of 128, so fusion groups of 128), 250 epochs, AdamW lr 1.5e-4 x batch/256, weight decay 0.1,
40 warm-up epochs, frozen random patch projection (--stop-grad-conv1), momentum 0.99 -> 1 on a cosine
(--moco-m-cos), T 0.5 (--moco-t=.5), crops of scale 0.08-1; the released module (ssl_jax/models/fusion.py:
16x16 patches, one block of width 256) on the normalised view 2, seen by both the online and the momentum
encoder.
  aug=cdoa   (CDOA, "without any augmentation"): as the code, each view is a random-resized crop only: no flip,
             colour jitter, grayscale, blur or solarize; the module is the rest of the augmentation.
  aug=cdoa+  (CDOA+): both views get the BYOL / MoCo v3 augmentation (the code's commented-out recipe, as
             configs/mocov3_imagenet.py) and view 2 also goes through the module.
Data: ImageNet-1k at 224 px with ImageNet's mean/std (the code trained on its ultrasound set UMTD, which
ssl_jax does not ship, normalised with its own statistics).

Expected: no ImageNet figure exists for this recipe. The code's README reports, on UMTD (linear probe on frozen
features), ViT-S: MoCo v3 92.62 (300 epochs), CDOA 93.08 and CDOA+ 93.35 (250 epochs): THEIR figures, on
their data. Not measured with ssl_jax.

Commands (a GPU/TPU host with ImageNet prepared for tfds, see the README's Data section):
  python -m ssl_jax.main --config configs/fusion_cdoa.py --workdir /tmp/cdoa_vits
  python -m ssl_jax.main --config configs/fusion_cdoa.py:aug=cdoa+ --workdir /tmp/cdoa_plus_vits
  python -m ssl_jax.main --config configs/fusion_cdoa.py:aug=cdoa+,fusion=false --workdir /tmp/mocov3_250
Hardware/runtime: the code's runs used 2 RTX 3090s; not measured with ssl_jax. The module adds about 0.52 G
multiply-adds per fused view (ViT-S/16's forward: 4.6 G).

Arguments (comma-separated): aug=cdoa|cdoa+, fusion=true|false (false: MoCo v3 with the same schedule),
runlocal (seconds-long smoke run at 32 px; needs the dataset or tfds mock data), synthetic (random images).
"""
from configs import common, mocov3_imagenet
from ssl_jax.errors import UserError

AUGMENTATIONS = ('cdoa', 'cdoa+')


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, aug='cdoa', fusion=True)
  if arg.aug not in AUGMENTATIONS:
    raise UserError(f'aug={arg.aug!r}: use one of {", ".join(AUGMENTATIONS)}')
  base = ','.join(['model=vit_small'] + [name for name in ('runlocal', 'synthetic') if arg[name]])
  c = mocov3_imagenet.get_config(base)
  if not arg.runlocal:
    c.batch_size = 256
  c.total_epochs = 250.0
  c.loss.temperature = 0.5
  for view in (c.augment, c.augment2):
    view.crop_scale = (0.08, 1.0)
  if arg.aug == 'cdoa':
    for view in (c.augment, c.augment2):  # random-resized crop (on the host) and nothing else
      view.update(dict(flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0))

  c.fusion.enabled = arg.fusion  # the released module's defaults (configs/common.py): P 16, G 128, D 256
  if arg.runlocal:
    c.fusion.update(dict(group_size=8, width=16))
  return c
