r"""RepMix against SimCLR on the embedded digits: the efficiency measurement, on a CPU, no download.

Everything is the quickstart's (`configs/simclr_digits.py`: ResNet-18 with 16 base channels, 24-px views,
batch 256 anchors, 150 steps, SGD lr 0.3 with a 1-epoch warmup and cosine, τ 0.2, NT-Xent, crops and
brightness/contrast only), so `method=simclr` *is* the quickstart run; only the method changes. The kNN
monitor runs every 25 steps, so both runs have accuracy curves against steps and against wall-clock.
`recipe=official` trains both with the RepMix code's recipe instead (AdamW 0.03, weight decay 5e-4, its
periodic per-step cosine, τ 0.5, -log(mean p), LeakyReLU projector; the digits' views and head sizes stay).

Command (trains both, then reports kNN against steps and against wall-clock):
  python launch/sweep.py --config configs/repmix_digits.py --grid 'config:method=simclr,repmix' \
      --baseline config:method=simclr --workdir /tmp/repmix_vs_simclr_digits
or one at a time:
  python -m ssl_jax.main --config configs/repmix_digits.py --workdir /tmp/repmix_digits
  python -m ssl_jax.main --config configs/repmix_digits.py:method=simclr --workdir /tmp/simclr_digits_rm
Expected (measured with ssl_jax, one run each, 2-core CPU; README "Representation mixing"): SimCLR 81.3% kNN
top-1 (k=20) / 90.7% linear after 150 steps in 163 s of training; RepMix 84.3% / 91.0% in 299 s (1.94x the
time per step: it encodes 4 x 256 images per step against SimCLR's 2 x 256); both first reach 81.3% at
step 125.

Arguments (comma-separated): method=repmix|simclr, recipe=quickstart|official, runlocal (the seconds-long
smoke variant).
"""
from configs import common
from configs import repmix_cifar10
from configs import simclr_digits


def get_config(arg=None):
  arg = common.parse_arg(arg, method='repmix', recipe='quickstart', runlocal=False)
  if arg.method not in ('repmix', 'simclr') or arg.recipe not in ('quickstart', 'official'):
    raise ValueError(f'method={arg.method!r}, recipe={arg.recipe!r}: use method=repmix|simclr and '
                     'recipe=quickstart|official')
  c = simclr_digits.get_config('runlocal' if arg.runlocal else None)
  if arg.recipe == 'official':
    views, head = c.augment.to_dict(), (c.model.head.hidden_dim, c.model.head.out_dim)
    repmix_cifar10.official_recipe(c, repmix_cifar10.parse(None), image_size=c.data.image_size)
    c.augment.update(views)
    c.model.head.hidden_dim, c.model.head.out_dim = head
  c.method = arg.method
  c.eval_every_steps = 3 if arg.runlocal else 25
  return c
