r"""S3L's question on the embedded digits, on a CPU: pretrain at full size, at half size, or half then full?

The embedded digits (configs/simclr_digits.py: 24x24 canvases, 1497 train / 300 test) are upsampled so that
"full resolution" is 48 px: views are random-resized crops of the 24-px canvas resized to the stage's size.
Three runs at the same pretraining compute, counted in 48-px steps (a 24-px step costs a quarter of one: the
CIFAR-stem ResNet's FLOPs scale with the pixels), `budget` = B:
  res=48      the standard paradigm: B steps at 48 px
  res=24      small resolution: 4B steps at 24 px
  res=24to48  multi-stage: 2B steps at 24 px, then B/2 steps at 48 px with a fresh optimizer and schedule
All three are scored at 48 px (kNN and linear probe of the frozen encoder: `data.image_size` stays 48; the
24-px run trains in one stage of 24 px), so only the pretraining differs. SimCLR as the quickstart
(configs/simclr_digits.py), batch 256, SGD lr 0.3, one warm-up epoch, cosine.

Equal FLOPs, not equal wall-clock: on the 2-core development CPU a 48-px step took 5.6 s (measured with
ssl_jax, 8 steps) against about 0.93 s for a 24-px one (the quickstart's), so at B = 100 training takes
about 560 s (res=48), 370 s (res=24) and 470 s (res=24to48); report both axes (ssl_jax.report plots
wall-clock). Commands:
  python -m ssl_jax.main --config configs/s3l_digits.py:res=48 --workdir runs/s3l_digits_48
  python -m ssl_jax.main --config configs/s3l_digits.py:res=24 --workdir runs/s3l_digits_24
  python -m ssl_jax.main --config configs/s3l_digits.py:res=24to48 --workdir runs/s3l_digits_24to48
  python -m ssl_jax.report runs/s3l_digits_48 runs/s3l_digits_24 runs/s3l_digits_24to48 --out runs/s3l_digits
Expected (measured with ssl_jax, one run each, 2-core CPU; README "S3L"): kNN / linear top-1 at 48 px:
res=48 61.0 / 85.7 (624 s of training), res=24 95.0 / 98.0 (475 s), res=24to48 88.0 / 95.7 (539 s); a
random encoder 64.7 / 78.7.

Arguments (comma-separated): res=48|24|24to48 (default 24to48), budget=100 (48-px steps), runlocal (a few
steps of a tiny network at 16 / 24 px).
"""
from configs import common, simclr_digits

RESOLUTIONS = ('48', '24', '24to48')


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, res='24to48', budget=100)
  if arg.res not in RESOLUTIONS or arg.budget < 2:
    raise ValueError(f'res={arg.res!r} budget={arg.budget}: use res in {RESOLUTIONS} and budget >= 2')
  c = simclr_digits.get_config('runlocal' if arg.runlocal else None)
  full, small = (24, 16) if arg.runlocal else (48, 24)
  budget = 2 if arg.runlocal else arg.budget
  c.data.image_size = full          # evaluation at full resolution for every run
  c.total_steps = 0
  c.total_epochs = 0.0
  if arg.res == '48':
    c.stages = ({'image_size': full, 'steps': budget},)
  elif arg.res == '24':
    c.stages = ({'image_size': small, 'steps': 4 * budget},)
  else:
    c.stages = ({'image_size': small, 'steps': 2 * budget}, {'image_size': full, 'steps': budget // 2})
  c.checkpoint_every_steps = max(budget, 2)
  return c
