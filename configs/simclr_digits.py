r"""SimCLR on the embedded digits (the quickstart's default job): CPU, no download.

The digits are scikit-learn's 8x8 handwritten digits, each upscaled to a random size (14-20 px) at a random
position on a 24x24 canvas (fixed by a seed), served through a small tfds builder: 1497 train / 300 test.

Command (2-core CPU with nothing else running: 484.5 s of training, about 15 s of evaluation):
  python -m ssl_jax.main --config configs/simclr_digits.py --workdir /tmp/simclr_digits
Expected, measured with ssl_jax on the 2-core CPU development machine (one run, jax 0.10.2): kNN top-1 79.7%
and linear top-1 89.3% on the 300 held-out digits, against 60.0% / 55.0% for the random initialisation.

`:runlocal` is the seconds-long smoke variant the test suite runs end to end.
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False)
  c = common.base_config()
  c.method = 'simclr'
  c.batch_size = 256
  c.total_steps = 150
  c.log_every_steps = 10
  c.checkpoint_every_steps = 100

  c.model.name = 'resnet18'
  c.model.stem = 'cifar'
  c.model.width = 0.25          # 16 base channels
  c.model.head.hidden_dim = 256
  c.model.head.out_dim = 64

  c.data.name = 'digits'
  c.data.image_size = 24

  # Digits are grey and handedness matters: crops and brightness/contrast only.
  c.augment.crop_scale = (0.3, 1.0)
  c.augment.flip_prob = 0.0
  c.augment.saturation = 0.0
  c.augment.hue = 0.0
  c.augment.grayscale_prob = 0.0

  c.optimizer.name = 'sgd'
  c.optimizer.base_lr = 0.3
  c.optimizer.lr_scaling = 'none'
  c.optimizer.warmup_epochs = 1.0
  c.optimizer.weight_decay = 5e-4
  c.loss.temperature = 0.2

  c.eval.knn_ks = (20, 200)
  c.eval.batch_size = 304     # multiple of 8 devices; the test split is padded and masked

  if arg.runlocal:
    c.batch_size = 32
    c.total_steps = 6
    c.log_every_steps = 2
    c.checkpoint_every_steps = 3
    c.model.width = 0.125
    c.model.head.hidden_dim = 32
    c.model.head.out_dim = 16
    c.data.image_size = 16
    c.eval.linear_epochs = 10
    c.eval.batch_size = 152
  return c
