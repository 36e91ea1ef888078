r"""SupCon, ResNet-18 (CIFAR stem) on CIFAR-10: solo-learn's recipe (L_in, SGD, batch 256, τ 0.2, 1000 epochs).

solo-learn's scripts/pretrain/cifar/supcon.yaml with its defaults (solo/methods/base.py, main_pretrain.py):
batch 256, SGD lr 0.4 (scaled by batch / 256), momentum 0.9, weight decay 1e-5 on every parameter, 10
warm-up epochs then a per-step cosine to 0, 1000 epochs; projector 512-2048-256 without BatchNorm;
synchronised BatchNorm (BatchNorm over the global batch here); τ 0.2; solo-learn's supervised loss, which
is SupCon's L_in, -log of the summed softmax probability of an anchor's positives (`loss.supcon_form='in'`;
`'out'` gives SupContrast's L_out); symmetric views (crops 0.08-1, flip, colour jitter 0.8/0.8/0.8/0.2 with
p 0.8, grayscale p 0.2, blur p 0.5, no solarisation). Differences from solo-learn: warm-up starts at 0
(solo-learn 3e-5), blur as ssl_jax's kernel (σ 0.1-2 px), bfloat16 on accelerators for its fp16 AMP.
SupContrast's own recipe (Khosla et al.) is a different one: L_out, τ 0.1 (its scripts), batch 1024, lr 0.5,
wd 1e-4, 1000 epochs; its paper reports 96.0% on CIFAR-10 with a ResNet-50, which this recipe does not target.

Command (one GPU host; prepare the data first with
`python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/supcon_cifar10.py --workdir /tmp/supcon_cifar10
Expected: about 93.8% linear top-1 (solo-learn's published 93.82% for this recipe, not yet measured with
ssl_jax). Hardware/runtime: as configs/simclr_cifar10.py (about 70 minutes per epoch on a 2-core CPU).
Arguments: `runlocal` and `synthetic`, as configs/simclr_cifar10.py.
"""
from configs import simclr_cifar10


def get_config(arg=None):
  c = simclr_cifar10.get_config(arg)
  c.method = 'supcon'
  c.model.head.use_bn = False           # solo-learn's SupCon projector: Linear, ReLU, Linear

  c.augment.crop_scale = (0.08, 1.0)
  c.augment.brightness = c.augment.contrast = c.augment.saturation = 0.8
  c.augment.hue = 0.2
  c.augment.blur_prob = 0.5
  c.augment.solarize_prob = 0.0

  c.optimizer.name = 'sgd'
  c.optimizer.base_lr = 0.4
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.weight_decay = 1e-5
  c.optimizer.exclude_bias_and_norm = False   # solo-learn's default: weight decay on every parameter
  c.loss.temperature = 0.2
  c.loss.supcon_form = 'in'
  return c
