r"""SupCon, ResNet-18 (CIFAR stem) on CIFAR-10: solo-learn's recipe (SGD, batch 256, τ 0.1, 1000 epochs).

Everything else (model, views, schedule, arguments `runlocal` and `synthetic`) is configs/simclr_cifar10.py.

Command (one GPU host; prepare the data first with
`python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/supcon_cifar10.py --workdir /tmp/supcon_cifar10
Expected: about 93.8% linear top-1 (solo-learn's published figure for this recipe, not yet measured with
ssl_jax). Hardware/runtime: as configs/simclr_cifar10.py (about 70 minutes per epoch on a 2-core CPU).
"""
from configs import simclr_cifar10


def get_config(arg=None):
  c = simclr_cifar10.get_config(arg)
  c.method = 'supcon'
  c.optimizer.name = 'sgd'
  c.optimizer.weight_decay = 1e-4
  c.loss.temperature = 0.1
  return c
