r"""MoCo v3 with a small ViT on the embedded digits: CPU, no download (compare configs/simclr_digits.py).

Command (2-core CPU):
  python -m ssl_jax.main --config configs/mocov3_digits.py --workdir /tmp/mocov3_digits
Recipe: ViT-Tiny at half width (3 heads of 32 = 96 channels), 4 blocks, 4x4 patches of the 24-px digits
(36 tokens + the class token), MoCo v3's frozen random patch projection and sin-cos positions; projector
96-256-256-64 and predictor 64-256-64, both ending in an affine-free BN (MoCo v3's ViT heads); AdamW lr 1e-3 (not scaled), weight decay 0.05, 10 warm-up
steps then cosine; T 0.2; momentum 0.99 -> 1 on a cosine; views as configs/simclr_digits.py (crops and
brightness/contrast only), the same for both views. Batch 256; the step count is set so that training
takes about as long as SimCLR's quickstart on the same CPU.
Expected: see configs/mocov3.md (measured here, with the command).

`:runlocal` is the seconds-long smoke variant.
"""
import ml_collections

from configs import common, simclr_digits


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False)
  c = simclr_digits.get_config('runlocal' if arg.runlocal else None)
  c.method = 'mocov3'
  c.total_steps = 253         # as long as SimCLR's 150 on the 2-core CPU: 499.5 s vs 484.5 s

  c.model.name = 'vit_tiny'
  c.model.width = 0.5
  c.model.num_stages = 4        # blocks kept
  c.model.patch_size = 4
  c.model.freeze_patch_embed = True
  c.model.head = ml_collections.ConfigDict(dict(
      num_layers=3, hidden_dim=256, out_dim=64, use_bn=True, last_bn=True, activation='relu'))
  c.model.predictor = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=256, out_dim=64, use_bn=True, last_bn=True, activation='relu'))
  c.ema = ml_collections.ConfigDict(dict(schedule='cosine', base=0.99, final=1.0))
  c.augment2 = ml_collections.ConfigDict(c.augment.to_dict())

  c.optimizer.name = 'adamw'
  c.optimizer.base_lr = 1e-3
  c.optimizer.lr_scaling = 'none'
  c.optimizer.warmup_epochs = 2.0   # about 10 steps (5.8 per epoch)
  c.optimizer.weight_decay = 0.05
  c.optimizer.exclude_bias_and_norm = False

  if arg.runlocal:
    c.total_steps = 6
    c.model.width = 0.25          # 3 heads of 16
    c.model.num_stages = 1
    c.model.head.hidden_dim = c.model.predictor.hidden_dim = 32
    c.model.head.out_dim = c.model.predictor.out_dim = 16
  return c
