r"""Batch fusion (the released module) with SimCLR, ResNet-50 on ImageNet-1k: the arXiv paper's headline.

Zhang, Shen & Liu (arXiv 2311.09974) report 59.41% ImageNet-1k linear top-1 "based on the classic
contrastive learning framework". That is the PAPER'S figure (quoted by a third-party summary); its backbone,
epochs, batch size and protocol are unknown (shared/reference/repmix_and_batch_fusion.md). Not measured with
ssl_jax. Our guess of the setting (the arXiv paper's recipe is unknown): SimCLR's own recipe (Chen et al.
2020, section 2.3 and appendix B) at
ResNet-50, batch 256, 100 epochs, where the SimCLR paper's Figure 9 puts plain SimCLR at about 57-58%:
LARS lr 0.3·batch/256, wd 1e-6, 10 warm-up epochs then cosine, τ 0.1, projector 2048-2048-128, SimCLR's
augmentation (crop (0.08, 1), colour jitter strength 1.0, grayscale 0.2, blur p=0.5). The module is the
released code's (ssl_jax/models/fusion.py), as in its own recipe: 16x16 patches at 224 px, groups of 128,
one block of hidden width 256, view 2 only: about 0.52 G multiply-adds per fused view, 13% of ResNet-50's
forward pass.

Command (prepare ImageNet first: put the ILSVRC2012 tar files in <data_dir>/downloads/manual/, then
`python -c "import tensorflow_datasets as tfds; tfds.builder('imagenet2012').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/fusion_imagenet.py --workdir /tmp/fusion_imagenet
Baseline (the same recipe without the layer): configs/fusion_imagenet.py:fusion=false.
Hardware/runtime: meant for a TPU pod slice or a multi-GPU host (not measured with ssl_jax); 500k images per
epoch (5,004 steps of 256), 100 epochs.

Arguments (comma-separated): fusion=true|false, runlocal (seconds-long smoke run: ResNet-18 at 32 px;
needs ImageNet or tfds mock data), synthetic (random 224-px images, no data needed).
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, fusion=True)
  c = common.base_config()
  c.method = 'simclr'
  c.batch_size = 256
  c.total_epochs = 100.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5000
  c.eval_every_steps = 0

  c.model.name = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.head.hidden_dim = 2048
  c.model.head.out_dim = 128

  c.data.name = 'imagenet2012'
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.image_size = 224
  c.data.synthetic_shape = (224, 224, 3)
  c.data.synthetic_classes = 1000
  c.augment.brightness, c.augment.contrast, c.augment.saturation, c.augment.hue = 0.8, 0.8, 0.8, 0.2
  c.augment.blur_prob = 0.5

  c.optimizer.name = 'lars'
  c.optimizer.base_lr = 0.3
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.weight_decay = 1e-6
  c.loss.temperature = 0.1

  c.fusion.enabled = arg.fusion  # the released module's defaults (configs/common.py): P 16, G 128, D 256

  if arg.synthetic:
    common.use_synthetic(c)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
    c.model.name = 'resnet18'   # the ImageNet stem needs 32 px
    c.data.image_size = 32
    c.data.synthetic_shape = (32, 32, 3)
    c.data.shuffle_buffer = 64
    c.fusion.patch_size = 8
    c.fusion.group_size = 8
    c.fusion.width = 16
  return c
