r"""SwAV on the embedded digits, with or without the rotation task: CPU, no download.

The quickstart's setting (configs/simclr_digits.py: 1497 train / 300 test digits at 24 px, ResNet-18 with 16
base channels, batch 256, SGD lr 0.3, crops and brightness/contrast only) with SwAV
(ssl_jax/methods/swav.py): projector 256 -> 64, 30 prototypes [guess: 3x the classes], ε 0.05, τ 0.1, 3
Sinkhorn rounds, prototypes frozen for the first 10 steps, no queue; the rotation task as the authors' SwAV
code runs it (head on the backbone feature, 4 angles) with the paper's CIFAR weight 0.5. `local=M` adds M
local crops of 12 px (crop scale 0.1-0.3) to the two 24 px crops.

Commands (2-core CPU), and measured figures: configs/swav.md.
  python -m ssl_jax.main --config configs/swav_digits.py:rotation=false --workdir /tmp/swav_digits

Arguments (comma-separated): rotation=true|false (default false), local=M (default 0), steps=N (default
150), runlocal (seconds-long smoke run).
"""
from configs import common, simclr_digits, swav_imagenet


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, rotation=False, local=0, steps=150)
  c = simclr_digits.get_config('runlocal' if arg.runlocal else None)
  c.method = 'swav'
  c.total_steps = arg.steps if not arg.runlocal else c.total_steps
  c.log_every_steps = 10
  c.eval.compare_random_init = False
  c.swav = swav_imagenet.swav_config(num_prototypes=30, epsilon=0.05, freeze_prototypes_steps=10)
  c.multicrop = swav_imagenet.multicrop_config(num_local=arg.local, local_size=12, local_crop_scale=(0.1, 0.3))
  swav_imagenet.use_rotation(c, arg.rotation, weight=0.5)
  if arg.runlocal:
    c.log_every_steps = 2
    c.multicrop.local_size = 8
    c.swav.num_prototypes = 10
    c.swav.freeze_prototypes_steps = 2
  return c
