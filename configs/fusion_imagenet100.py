r"""Batch fusion (the released module) plug-and-play on ImageNet-100: each framework with and without it.

Zhang, Shen & Liu (arXiv 2311.09974) plug their module into "other contrastive methods" on ImageNet-100 and
report at most +1.25% top-1 over the original method: THEIR figure (a third-party summary); which methods,
their per-method deltas, the backbone and the epochs are unknown. Not measured with ssl_jax. Our setting:
solo-learn's ImageNet-100 benchmark shape (224 px, batch 256, 400 epochs; CMC's 100 classes,
ssl_jax/data/imagenet100.txt) with each framework's optimizer, heads, EMA and queue from its CIFAR recipe
(configs/<framework>_cifar10.py, a guess for ImageNet-100) and blur p=0.5 on every view. Backbone: ResNet-18
with the ImageNet stem, or ViT-S/16 where the framework's recipe is a ViT (mocov3: MoCo v3's own setting).
The module is the released code's as in its recipe (P 16, G 128, one block of width 256, view 2 only). MoCo
v2 runs solo-learn's symmetric loss (its CIFAR recipe's), so fused view 2 also reaches the query encoder.

Commands (prepare ImageNet as in configs/fusion_imagenet.py; imagenet100 reads its 100 classes):
  python -m ssl_jax.main --config configs/fusion_imagenet100.py:framework=byol \
      --workdir /tmp/in100_byol_fusion
  python -m ssl_jax.main --config configs/fusion_imagenet100.py:framework=byol,fusion=false \
      --workdir /tmp/in100_byol
The grid (SimCLR, BYOL, MoCo v2, MoCo v3; 8 runs), one after another, then a table (sweep.md) and plots:
  for f in simclr byol moco mocov3; do
    python launch/sweep.py --config configs/fusion_imagenet100.py:framework=$f \
        --grid 'fusion.enabled=False,True' --workdir /tmp/in100_grid/$f
  done
  (add --print for one command per run on a cluster, then --collect once they are done.)
Hardware/runtime: meant for an accelerator host (not measured with ssl_jax); 126,689 images per epoch
(494 steps of 256), 400 epochs per run.

Arguments (comma-separated): framework=<a method with configs/<it>_cifar10.py>, fusion=true|false, runlocal
(seconds-long smoke run: a tiny encoder at 32 px; needs ImageNet or tfds mock data), synthetic (random 224-px
images, no data needed).
"""
from configs import common, fusion_cifar


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, framework='simclr', fusion=True)
  c = fusion_cifar.framework_config(arg.framework, 'cifar10', runlocal=False, synthetic=False)
  c.batch_size = 256
  c.total_epochs = 400.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5000
  c.eval_every_steps = 0

  is_vit = c.model.name.startswith('vit')
  if is_vit:
    c.model.patch_size = 16
  else:
    c.model.name = 'resnet18'
    c.model.stem = 'imagenet'
  c.data.name = 'imagenet100'
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.image_size = 224
  c.data.synthetic_shape = (224, 224, 3)
  c.data.synthetic_classes = 100
  for view in ('augment', 'augment2'):
    if view in c:
      c[view].blur_prob = 0.5

  c.fusion.enabled = arg.fusion         # the released module's defaults (configs/common.py)

  if arg.synthetic:
    common.use_synthetic(c)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
    c.data.image_size = 32              # the ImageNet stem needs 32 px
    c.data.synthetic_shape = (32, 32, 3)
    c.data.shuffle_buffer = 64
    c.fusion.update(dict(patch_size=8, group_size=8, width=16))
    if is_vit:
      c.model.patch_size = 8
      c.model.num_stages = 2            # blocks kept
    if 'moco' in c:
      c.moco.queue_size = 32
    if c.model.bn_group_size:
      c.model.bn_group_size = 8
  return c
