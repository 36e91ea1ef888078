r"""S3L with BYOL on CUB-200-2011 at 112 px (Cao & Wu, arXiv 2103.13559; S3L's byol/byol_pretrain_cub.sh).

Command (prepare CUB as in configs/s3l_moco_cub.py):
  python -m ssl_jax.main --config configs/s3l_byol_cub.py --workdir runs/s3l_byol_112
  python -m ssl_jax.evaluate.finetune_cli --workdir runs/s3l_byol_112 --config.preset=s3l

Recipe: ResNet-50 (ImageNet stem), CUB train split only, batch 128, SGD momentum 0.9, lr 0.125 with a cosine
to 0 and no warm-up (per step here, per epoch in S3L), wd 1e-4 on every parameter, 800 epochs (46 steps each);
projector and predictor MLPs 4096 (BN, ReLU) -> 128 (S3L's builder hard-codes 4096 whatever its flag says),
target momentum τ 0.99 constant, loss 2 - 2·cos summed over both directions; MoCo v2's views on both branches
(as configs/s3l_moco_cub.py); BatchNorm per GPU (32 images, both views in one pass): ghost groups of 64 rows.
Multi-stage (res=AtoB) carries the target network over with everything else (S3L's BYOL code cannot load a
checkpoint into a second stage; reference/s3l.md §4.7). Other arguments as configs/s3l_moco_cub.py.
Expected: not determined (S3L's tables could not be read; reference/s3l.md). Relative target: at 112 px,
fine-tuned at 224, at least as good as res=224 for about a quarter of its compute. Not measured with ssl_jax.
Hardware/runtime: meant for one accelerator (S3L used 4 GPUs); 36,800 steps of batch 128.

Arguments (comma-separated): as configs/s3l_moco_cub.py (res, arch, epochs=800, later_epochs, dataset,
runlocal, synthetic).
"""
import ml_collections

from configs import common, s3l_moco_cub


def get_config(arg=None):
  arg = s3l_moco_cub.parse(arg, epochs=800.0)
  c = common.base_config()
  c.method = 'byol'
  c.batch_size = 128
  c.log_every_steps = 46
  c.checkpoint_every_steps = 920        # every 20 epochs, as S3L
  c.eval_every_steps = 0
  c.model.bn_group_size = 64            # per GPU: 32 images x 2 views
  c.model.head = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=4096, out_dim=128, use_bn=True, last_bn=False, activation='relu'))
  c.model.predictor = ml_collections.ConfigDict(c.model.head.to_dict())
  c.ema = ml_collections.ConfigDict(dict(schedule='constant', base=0.99, final=1.0))
  c.optimizer.base_lr = 0.125
  s3l_moco_cub.apply_s3l(c, arg)
  if arg.runlocal:
    c.model.bn_group_size = 8
  return c
