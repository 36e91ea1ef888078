r"""Batch fusion on the embedded digits: SimCLR or BYOL, with and without the module, on a CPU.

The quickstart's setting (configs/simclr_digits.py: ResNet-18 with 16 base channels, 24-px views, batch 256,
150 steps, SGD). The module is the released code's (ssl_jax/models/fusion.py): groups of 128, one block of
hidden width 256, view 2 only, fused after the input normalisation; 4x4 patches (36 patches of 48 values;
the patch size for small images is unknown). BYOL uses the same model, views, optimizer and budget, a
256-64 predictor and the EMA rate from 0.99 to 1 on a cosine (not tuned for the digits).
`variant=gated` is our earlier reading (P 4, G 4, 2 layers of width 64, both views), whose measured table
configs/fusion.md keeps.

Commands (2-core CPU; both runs of a framework, then sweep.md):
  python launch/sweep.py --config configs/fusion_digits.py:framework=simclr \
      --grid 'fusion.enabled=False,True' --workdir /tmp/fusion_digits/simclr
  python launch/sweep.py --config configs/fusion_digits.py:framework=byol \
      --grid 'fusion.enabled=False,True' --workdir /tmp/fusion_digits/byol
Expected: measured with ssl_jax in configs/fusion.md ("Measured on the digits"), one run each.

Arguments (comma-separated): framework=simclr|byol, fusion=true|false, variant=released|gated, runlocal
(seconds-long smoke run), synthetic (random images of the digits' size instead of the digits: the benchmark).
"""
import ml_collections

from configs import common, simclr_digits
from ssl_jax.errors import UserError


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, framework='simclr', fusion=True,
                         variant='released')
  if arg.framework not in ('simclr', 'byol'):
    raise UserError(f'framework={arg.framework!r}: use simclr or byol')
  c = simclr_digits.get_config('runlocal' if arg.runlocal else None)
  if arg.framework == 'byol':
    c.method = 'byol'
    c.model.predictor = ml_collections.ConfigDict(dict(
        num_layers=2, hidden_dim=c.model.head.hidden_dim, out_dim=c.model.head.out_dim, use_bn=True,
        last_bn=False, activation='relu'))
    c.ema = ml_collections.ConfigDict(dict(schedule='cosine', base=0.99, final=1.0))
    c.augment2 = ml_collections.ConfigDict(c.augment.to_dict())
  c.fusion.enabled = arg.fusion
  c.fusion.patch_size = 4       # unknown for small images (the code: 16 at 224 px)
  if arg.variant == 'released':
    c.fusion.group_size = 8 if arg.runlocal else 128
    c.fusion.width = 16 if arg.runlocal else 256
  elif arg.variant == 'gated':  # every value a guess
    c.fusion.update(dict(variant='gated', group_size=4, num_blocks=2, width=16 if arg.runlocal else 64,
                         views='both'))
  else:
    raise UserError(f'variant={arg.variant!r}: use released or gated')
  if arg.synthetic:
    common.use_synthetic(c)
    c.data.synthetic_shape = (c.data.image_size, c.data.image_size, 1)  # grey, as the digits
  return c
