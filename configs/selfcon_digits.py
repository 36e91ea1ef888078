r"""SelfCon vs SupCon vs SupCon-S on the embedded digits, on a CPU: the small-data comparison.

The quickstart's setting (configs/simclr_digits.py: 1497 train / 300 test digits at 24 px, ResNet-18 with 16
base channels, CIFAR stem, batch 256, SGD lr 0.3 with 1 warm-up epoch, crops and brightness/contrast only),
with SelfCon's model and loss (ssl_jax/methods/selfcon.py): an `fc` sub-network after stage 2, heads d-d-64,
τ 0.1 with the official τ/0.07 scaling, labels. kNN every 10 steps, and at the end kNN and linear probes
(per exit and the ensemble for SelfCon).
One deviation from the official heads (which have no BatchNorm): a BatchNorm without scale and bias after
each head's last layer (`model.head.last_bn=True`). Without it the projections collapse to one direction
within about 10 steps on the digits: SelfCon's loss stays at (0.1/0.07)·log(511) = 8.91 with z_std about
0.02 and its backbone's kNN falls below a random encoder's; the SupCon baselines recover only slowly.
`--config.model.head.last_bn=False` gives the official head.

Equal wall-clock: SupCon (two views) costs about twice a SelfCon or SupCon-S step, so give every run the
same training time, not the same steps. Measure the step times, then train each for budget / step time:
  python -m ssl_jax.benchmark --config configs/selfcon_digits.py \
      --baseline configs/selfcon_digits.py:variant=supcon --steps 10
  python -m ssl_jax.main --config configs/selfcon_digits.py:variant=supcon --workdir /tmp/sc_digits_supcon
  python -m ssl_jax.main --config configs/selfcon_digits.py --workdir /tmp/sc_digits_selfcon \
      --config.total_steps=N        # N = 150 x SupCon's step time / SelfCon's
  python -m ssl_jax.main --config configs/selfcon_digits.py:variant=supcon_s \
      --workdir /tmp/sc_digits_supcon_s --config.total_steps=M   # likewise with SupCon-S's step time
  python -m ssl_jax.report /tmp/sc_digits_supcon /tmp/sc_digits_selfcon /tmp/sc_digits_supcon_s --out /tmp/sc
The time-to-accuracy view of the same pair: `python launch/sweep.py --config configs/selfcon_digits.py
--grid 'config:variant=supcon,selfcon' --baseline config:variant=supcon --workdir /tmp/sc_cmp`.
Expected (measured with ssl_jax, one run each, 2-core CPU; configs/selfcon.md): with the official heads
(`--config.model.head.last_bn=False`) kNN / linear top-1 SupCon (150 steps) 54.3 / 63.0, SupCon-S (305
steps, equal time) 72.3 / 84.0, SelfCon (296 steps, equal time) 48.3 / 45.3, against a random encoder's
60.0 / 55.0: collapsed projections. With this recipe's heads (one run, seed 0, jax 0.10.2, flax 0.12.8):
SelfCon at 150 steps (`--config.total_steps=150`, equal steps, half SupCon's time) 93.7 / 94.7, sub-network
95.3, ensemble 97.0; SupCon on the quickstart's recipe with the same head (configs/supcon_digits.py)
94.0 / 94.7; the quickstart's SimCLR 81.3 / 90.7. Runtime on the 2-core CPU development machine: about 2-3
minutes per run when it is not shared (the quickstart's SimCLR, also two views, trains 150 steps in about
140 s; these runs shared the machine with other jobs and took 30-50 minutes).

Arguments (comma-separated): variant=selfcon|selfcon_m|selfcon_su|selfcon_mu|supcon|supcon_s, runlocal
(seconds-long smoke run).
"""
import ml_collections

from configs import common, selfcon_cifar100, simclr_digits
from ssl_jax.methods import selfcon


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, variant='selfcon')
  c = simclr_digits.get_config('runlocal' if arg.runlocal else None)
  c.method = 'selfcon'
  c.selfcon = selfcon_cifar100.selfcon_block(arg.variant, sub_net='fc')
  c.num_views = selfcon.VARIANTS[arg.variant].views   # documentation only: the variant decides
  c.model.head = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=0, out_dim=c.model.head.out_dim, use_bn=False, last_bn=True,
      activation='relu'))  # hidden 0: the exit's width (SelfCon's d -> d -> out); last_bn: see above
  c.loss.temperature = 0.1
  c.eval_every_steps = 0 if arg.runlocal else 10
  return c
