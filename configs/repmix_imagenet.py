r"""RepMix (Sharma et al., BDA 2024) on ImageNet at 224 px, ResNet-50: the official recipe.

Command (one GPU host; put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
`~/tensorflow_datasets/downloads/manual/` and prepare them once with
`python -c "import tensorflow_datasets as tfds; tfds.builder('imagenet2012').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/repmix_imagenet.py --workdir /tmp/repmix_imagenet
  python -m ssl_jax.evaluate.linear_cli --workdir /tmp/repmix_imagenet --config.preset=repmix
The SimCLR baseline, identical except for the method: `configs/repmix_imagenet.py:method=simclr`;
ImageNet-100 (CMC's classes): `:dataset=imagenet100`.
Expected: not measured with ssl_jax; no figure of the paper could be retrieved.
Hardware/runtime: needs accelerators: 10,009 steps per epoch at batch 128 anchors (4 x 128 images of 224 px
forwarded per step), 200 epochs as the code's configuration says.

As the code: torchvision's ResNet-50 with its ImageNet stem (2048-d features), projector 2048 -> 512 -> BN ->
LeakyReLU -> 128, batch 128, ImageNet normalisation, the fixed horizontal blur with 21 taps; the rest is
`repmix_cifar10.py`'s recipe with the same switches. Our reading for this variable-size data: the host takes
one random-resized crop per image (scale 0.08-1), the device adds the rest of the augmentation, and the clean
view is the evaluation crop (shorter side to 256, central 224 x 224); the code resizes with PIL, which its
released ImageNet path does not show exactly. `augment=simclr` adds SimCLR's ImageNet blur (p 0.5).

Arguments: as `configs/repmix_cifar10.py` (method, augment, schedule, loss, runlocal, synthetic), and
dataset=imagenet2012|imagenet100.
"""
from configs import common
from configs import repmix_cifar10


def get_config(arg=None):
  arg = repmix_cifar10.parse(arg)
  c = common.base_config()
  repmix_cifar10.official_recipe(c, arg, image_size=224)
  c.data.name = arg.dataset or 'imagenet2012'
  if c.data.name not in ('imagenet2012', 'imagenet100'):
    raise ValueError(f'dataset={arg.dataset!r}: use imagenet2012 or imagenet100')
  c.data.eval_split = 'validation'
  c.batch_size = 128
  c.model.name = 'resnet50'
  c.model.stem = 'imagenet'
  if arg.augment == 'simclr':
    c.augment.blur_prob = 0.5
  c.log_every_steps = 100
  c.checkpoint_every_steps = 10_000
  c.eval_every_steps = 50_000
  c.eval.knn_bank_size = 100_000     # the first 100k training images: bounded time and memory

  if arg.synthetic:
    common.use_synthetic(c)
    c.data.synthetic_shape = (224, 224, 3)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
    c.data.image_size = 32           # the ImageNet stem needs at least 32 px
    c.data.synthetic_shape = (32, 32, 3)
  return c
