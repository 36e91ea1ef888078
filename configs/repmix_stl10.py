r"""RepMix (Sharma et al., BDA 2024) on STL-10 at 96 px, ResNet-18 with the CIFAR stem: the official recipe.

Command (one GPU host; prepare the data first with
`python -c "import tensorflow_datasets as tfds; tfds.builder('stl10').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/repmix_stl10.py --workdir /tmp/repmix_stl10
  python -m ssl_jax.evaluate.linear_cli --workdir /tmp/repmix_stl10 --config.preset=repmix \
      --config.train_split=train
The SimCLR baseline, identical except for the method: `configs/repmix_stl10.py:method=simclr`.
Expected: not measured with ssl_jax; no figure of the paper could be retrieved (and the code's own STL-10
linear evaluation does not run as released).
Hardware/runtime: meant for one GPU. Per step RepMix forwards 4 x 256 images at 96 px; 390 steps per epoch.

As the code: pretraining on the 100,000 unlabelled images, batch 256 anchors, ResNet-18 whose stem is a 3x3
stride-1 conv without max-pool, the fixed horizontal blur with 9 taps; the rest is `repmix_cifar10.py`'s
recipe (AdamW 0.03, 200 epochs, periodic cosine, τ 0.5, -log(mean p)), with the same arguments and switches.
The unlabelled split has no labels, so there is no kNN monitor, online probe or final score: evaluate with
the linear command above (on the labelled train split). Not reproduced: the code's pretraining
normalisation, whose std is a copy of the ImageNet mean (we use the ImageNet mean and std).

Arguments: as `configs/repmix_cifar10.py` (method, augment, schedule, loss, runlocal, synthetic; no dataset).
"""
from configs import common
from configs import repmix_cifar10


def get_config(arg=None):
  arg = repmix_cifar10.parse(arg)
  if arg.dataset:
    raise ValueError('repmix_stl10 takes no dataset argument')
  c = common.base_config()
  repmix_cifar10.official_recipe(c, arg, image_size=96)
  c.data.name = 'stl10'
  c.data.train_split = 'unlabelled'
  c.data.eval_split = 'test'
  c.batch_size = 256
  c.model.name = 'resnet18'
  c.model.stem = 'cifar'
  c.log_every_steps = 50
  c.checkpoint_every_steps = 3900    # every 10 epochs
  c.eval_every_steps = 0             # no labels to score with during pretraining
  c.eval.final = False

  if arg.synthetic:
    common.use_synthetic(c)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
  return c
