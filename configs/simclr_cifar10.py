r"""SimCLR, ResNet-18 (CIFAR stem) on CIFAR-10: solo-learn's recipe (LARS, batch 256, τ 0.2, 1000 epochs).

Command (one GPU host; prepare the data first with
`python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/simclr_cifar10.py --workdir /tmp/simclr_cifar10
Expected: about 90.7% linear top-1 (solo-learn's published figure for this recipe, not yet measured with
ssl_jax); about 85% kNN (k=200) after 200 epochs at batch 512 (lightly's published figure).
Hardware/runtime: meant for an accelerator (not measured with ssl_jax yet). On the 2-core CPU development
machine a step of this recipe takes about 21 s (README, Performance), so one epoch (195 steps) takes about 70
minutes there: use `:runlocal` on a CPU.

Arguments (comma-separated):
  runlocal    seconds-long smoke run (tiny network, a few steps); needs CIFAR-10 or tfds mock data.
  synthetic   random images instead of CIFAR-10: the throughput benchmark, no data needed.
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False)
  c = common.base_config()
  c.method = 'simclr'
  c.batch_size = 256
  c.total_epochs = 1000.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  c.eval_every_steps = 5000

  c.model.name = 'resnet18'
  c.model.stem = 'cifar'
  c.model.head.hidden_dim = 2048
  c.model.head.out_dim = 256

  c.data.name = 'cifar10'
  c.data.image_size = 32
  c.augment.crop_scale = (0.08, 1.0)
  c.augment.solarize_prob = 0.1       # solo-learn's CIFAR asymmetric recipe, averaged over the two views

  c.optimizer.name = 'lars'
  c.optimizer.base_lr = 0.4
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.weight_decay = 1e-5
  c.loss.temperature = 0.2

  if arg.synthetic:
    common.use_synthetic(c)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
  return c
