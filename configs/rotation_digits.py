r"""Rotation prediction as an auxiliary task on the embedded digits: the efficiency claim, measured on a CPU.

Addepalli et al. (ECCV 2022) claim that BYOL + rotation reaches BYOL's accuracy in about a third of the
epochs. This recipe trains BYOL (default) or SimCLR with and without the rotation task
(ssl_jax/methods/rotation.py) on the quickstart's setting (configs/simclr_digits.py: 1497 train / 300 test
digits at 24 px, ResNet-18 with 16 base channels, batch 256, 150 steps, SGD lr 0.3, crops and
brightness/contrast only), scoring the encoder by kNN every 10 steps. BYOL adds a 256-64 predictor and the
EMA rate from 0.99 to 1 on a cosine (not tuned for the digits). The rotation weight is the paper's CIFAR
value (BYOL 0.2, SimCLR 1.0), 4 angles, head on the projector output. Digits are not rotation-invariant
(a 6 turned by 180 degrees reads as a 9), which the task does not need: it predicts the turn, not the class.

Command (2-core CPU; both runs one after the other, then DIR/time_to_accuracy.md and .png):
  python launch/sweep.py --config configs/rotation_digits.py --grid 'config:rotation=false,true' \
      --baseline config:rotation=false --workdir /tmp/rotation_digits
(`--config configs/rotation_digits.py:framework=simclr` for SimCLR.) It reports each run's final kNN top-1,
the first step at which each reaches the baseline's final kNN top-1, the wall-clock to get there and the
step-time ratio.
Expected (measured with ssl_jax, one run each, 2-core CPU; README "Rotation prediction"): final kNN / linear
top-1 SimCLR 81.3 / 90.7 without rotation, 76.3 / 85.7 with it (1.89x the time per step: 0.97 s vs 1.84 s);
BYOL 47.3 / 51.7 without, 45.0 / 61.7 with it: BYOL does not learn in this short untuned setting (its kNN
stays at the random encoder's 60% or below), so the paper's BYOL claim is not testable here.

Arguments (comma-separated): framework=byol|simclr, rotation=true|false, runlocal (seconds-long smoke run).
"""
import ml_collections

from configs import common, simclr_digits

WEIGHTS = {'byol': 0.2, 'simclr': 1.0}   # the paper's CIFAR values


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, framework='byol', rotation=True)
  if arg.framework not in WEIGHTS:
    raise ValueError(f'framework={arg.framework!r}: use byol or simclr')
  c = simclr_digits.get_config('runlocal' if arg.runlocal else None)
  if arg.framework == 'byol':
    c.method = 'byol'
    c.model.predictor = ml_collections.ConfigDict(dict(
        num_layers=2, hidden_dim=c.model.head.hidden_dim, out_dim=c.model.head.out_dim, use_bn=True,
        last_bn=False, activation='relu'))
    c.ema = ml_collections.ConfigDict(dict(schedule='cosine', base=0.99, final=1.0))
    c.augment2 = ml_collections.ConfigDict(c.augment.to_dict())
  c.log_every_steps = 10
  c.eval_every_steps = 10
  c.eval.compare_random_init = False    # the same for both runs: the quickstart reports it
  c.rotation.enabled = arg.rotation
  c.rotation.weight = WEIGHTS[arg.framework]
  c.rotation.num_angles = 4
  c.rotation.head_on = 'projector'
  if arg.runlocal:
    c.log_every_steps = 2
    c.eval_every_steps = 3
  return c
