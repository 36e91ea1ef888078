r"""SupCon on the embedded digits, on a CPU: the quickstart (configs/simclr_digits.py) with labels.

The quickstart's data, model, views, optimizer and budget (150 steps of batch 256), with SupCon's L_out
(`method='supcon'`), τ 0.1 (SupContrast's CIFAR scripts), and a BatchNorm without scale and bias after the
projection head's last layer (`model.head.last_bn=True`), which neither SupContrast's head nor the
quickstart's has: without it the projections collapse to one direction within about 10 steps here (loss at
log(511) = 6.23, z_std about 0.02) and recover only slowly.

Command (2-core CPU; as long as the quickstart, about 2-3 minutes on an idle machine):
  python -m ssl_jax.main --config configs/supcon_digits.py --workdir /tmp/supcon_digits
Expected, measured with ssl_jax (one run, seed 0, 2-core CPU shared with other jobs, jax 0.10.2, flax 0.12.8):
kNN top-1 94.0% (k = 20) and linear top-1 94.7% on the 300 held-out digits, against 60.0% / 55.0% for the
random initialisation and the quickstart's SimCLR 81.3% / 90.7%. (Measured as configs/simclr_digits.py with
`--config.method=supcon --config.loss.temperature=0.1 --config.model.head.last_bn=True`, this recipe's
settings.)

`:runlocal` is the seconds-long smoke variant.
"""
from configs import common, simclr_digits


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False)
  c = simclr_digits.get_config('runlocal' if arg.runlocal else None)
  c.method = 'supcon'
  c.model.head.last_bn = True
  c.loss.temperature = 0.1
  return c
