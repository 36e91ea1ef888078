r"""Rotation prediction as an auxiliary task (Addepalli et al., ECCV 2022): BYOL ± rotation on ImageNet-100.

The paper's ImageNet-100 setting (its Table 5): ResNet-18 (ImageNet stem), 224 px, 100 epochs, batch 512,
CMC's 100 classes (ssl_jax/data/imagenet100.txt); BYOL with lr 0.6 (not scaled), wd 1e-4, EMA rate from 0.95
(the paper's tuned τ; annealed to 1 on a cosine, solo-learn's schedule, assumed), and the rotation task with
w = 1/6 (the paper's "1/(2λ) = 6"), 4 angles, head on the projector output. The rest is solo-learn's BYOL
ImageNet-100 recipe, which the paper's baselines came from: LARS (η 0.02, bias and norm excluded), 10 warm-up
epochs then cosine, projector 512-4096-256 and predictor 256-4096-256 with BN, asymmetric views (blur p=1.0 /
0.1, solarize p=0 / 0.2), random-resized crops of scale (0.08, 1) on the host.

Commands (prepare ImageNet first: the ILSVRC2012 tar files in <data_dir>/downloads/manual/, then
`python -c "import tensorflow_datasets as tfds; tfds.builder('imagenet2012').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/rotation_imagenet100.py --workdir /tmp/in100_byol_rot
  python -m ssl_jax.main --config configs/rotation_imagenet100.py:rotation=false --workdir /tmp/in100_byol
or both, with the steps each needs to reach the baseline's final kNN accuracy:
  python launch/sweep.py --config configs/rotation_imagenet100.py --grid 'config:rotation=false,true' \
      --baseline config:rotation=false --workdir /tmp/in100_rotation
then the linear evaluation of each: python -m ssl_jax.evaluate.linear_cli --workdir DIR.
Expected: the PAPER'S figures (NeurIPS'21 workshop version, Table 5; linear top-1 / top-5; not measured with
ssl_jax): BYOL 71.02 / 91.78, BYOL + Rot 73.60 / 92.98; semi-supervised 1% labels 46.60 -> 56.40 top-1.
Hardware/runtime: meant for an accelerator host (the paper: 1-2 V100s); not measured with ssl_jax. 126,689
images per epoch, 247 steps of 512.

Arguments (comma-separated): rotation=true|false (false: BYOL alone), runlocal (seconds-long smoke run: tiny
ResNet-18 at 32 px; needs ImageNet or tfds mock data), synthetic (random 224-px images, no data needed).
"""
from configs import byol_cifar10, common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, rotation=True)
  c = byol_cifar10.get_config()  # solo-learn's BYOL heads, LARS and EMA; changed below
  c.batch_size = 512
  c.total_epochs = 100.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2470
  c.eval_every_steps = 1235     # kNN every 5 epochs

  c.model.name = 'resnet18'
  c.model.stem = 'imagenet'
  c.ema.base = 0.95

  c.data.name = 'imagenet100'
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.image_size = 224
  c.data.synthetic_shape = (224, 224, 3)
  c.data.synthetic_classes = 100
  for view, blur, solarize in (('augment', 1.0, 0.0), ('augment2', 0.1, 0.2)):
    c[view].blur_prob = blur
    c[view].solarize_prob = solarize

  c.optimizer.base_lr = 0.6
  c.optimizer.lr_scaling = 'none'
  c.optimizer.weight_decay = 1e-4

  c.rotation.enabled = arg.rotation
  c.rotation.weight = 1 / 6
  c.rotation.num_angles = 4
  c.rotation.head_on = 'projector'

  if arg.synthetic:
    common.use_synthetic(c)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
    c.data.image_size = 32      # the ImageNet stem needs 32 px
    c.data.synthetic_shape = (32, 32, 3)
    c.data.shuffle_buffer = 64
  return c
