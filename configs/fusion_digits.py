r"""Batch fusion (BA-SSL, our reading) on the embedded digits: SimCLR or BYOL, with and without it, on CPU.

The quickstart's setting (configs/simclr_digits.py: ResNet-18 with 16 base channels, 24-px views, batch 256,
150 steps, SGD) with the fusion layer of ssl_jax/models/fusion.py (every choice there is a guess): 4x4
patches (a 6x6 grid), groups of 4, 2 embedding layers of width 64. BYOL uses the same model, views, optimizer
and budget, a 256-64 predictor and the EMA rate from 0.99 to 1 on a cosine (not tuned for the digits).

Commands (2-core CPU, about 2.5 minutes of training per run; both runs of a framework, then sweep.md):
  python launch/sweep.py --config configs/fusion_digits.py:framework=simclr \
      --grid 'fusion.enabled=False,True' --workdir /tmp/fusion_digits/simclr
  python launch/sweep.py --config configs/fusion_digits.py:framework=byol \
      --grid 'fusion.enabled=False,True' --workdir /tmp/fusion_digits/byol
Expected (measured with ssl_jax, one run each, README "Batch fusion"): kNN / linear top-1 SimCLR 81.3 / 90.7
without fusion, 76.3 / 88.0 with it; BYOL 47.3 / 51.7 without (it barely learns in this short setting),
71.0 / 62.7 with it (α rose to 2.9).

Arguments (comma-separated): framework=simclr|byol, fusion=true|false, runlocal (seconds-long smoke run).
"""
import ml_collections

from configs import common, simclr_digits


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, framework='simclr', fusion=True)
  if arg.framework not in ('simclr', 'byol'):
    raise ValueError(f'framework={arg.framework!r}: use simclr or byol')
  c = simclr_digits.get_config('runlocal' if arg.runlocal else None)
  if arg.framework == 'byol':
    c.method = 'byol'
    c.model.predictor = ml_collections.ConfigDict(dict(
        num_layers=2, hidden_dim=c.model.head.hidden_dim, out_dim=c.model.head.out_dim, use_bn=True,
        last_bn=False, activation='relu'))
    c.ema = ml_collections.ConfigDict(dict(schedule='cosine', base=0.99, final=1.0))
    c.augment2 = ml_collections.ConfigDict(c.augment.to_dict())
  c.fusion.enabled = arg.fusion
  c.fusion.patch_size = 4       # [guess]
  c.fusion.group_size = 4       # [guess]
  c.fusion.num_layers = 2       # [guess]
  c.fusion.width = 16 if arg.runlocal else 64  # [guess]
  return c
