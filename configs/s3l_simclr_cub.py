r"""S3L with SimCLR on CUB-200-2011 at 112 px (Cao & Wu, arXiv 2103.13559; S3L's simclr_pretrain_cub.sh).

Command (prepare CUB as in configs/s3l_moco_cub.py):
  python -m ssl_jax.main --config configs/s3l_simclr_cub.py --workdir runs/s3l_simclr_112
  python -m ssl_jax.evaluate.finetune_cli --workdir runs/s3l_simclr_112 --config.preset=s3l

Recipe: ResNet-50 (ImageNet stem), CUB train split only, batch 512, SGD momentum 0.9, lr 0.5 with 10 warm-up
epochs then cosine to 0 (S3L warms up from 0.01 and steps the cosine per epoch; per step here), wd 1e-4 on
every parameter, 200 epochs (11 steps each); NT-Xent with τ 0.1, projector d-d-128 without BN with d the
encoder's width (2048; 1024 for arch=no_conv5: S3L's SimCLR builder, like MoCo's, sizes the hidden layer by
the encoder; `model.head.hidden_dim=0`); MoCo v2's views on both branches (as configs/s3l_moco_cub.py).
Two details of S3L's code (SupContrast's loss), kept:
  * the loss is scaled by τ / base_τ = 0.1 / 0.07. For SGD with momentum and weight decay added to the
    gradient that is exactly lr × 1/0.7 and wd × 0.7, which is how it is written here (lr 0.714, wd 7e-5);
  * BatchNorm per GPU (4 GPUs of 128 images, both views in one pass): ghost groups of 256 rows.
  Not reproduced: S3L computes the loss per GPU (254 negatives per anchor); here every anchor sees the other
  1,022 views of the global batch.
Multi-stage and arch arguments as configs/s3l_moco_cub.py (S3L's SimCLR history shows 800 epochs at 56 px
followed by 200 at 112: res=56to112,epochs=800,later_epochs=200).
Expected: not determined (S3L's tables could not be read; reference/s3l.md). Relative target: at 112 px,
fine-tuned at 224, at least as good as the same recipe at res=224 for about a quarter of its compute.
Not measured with ssl_jax. Hardware/runtime: meant for one accelerator (S3L used 4 GPUs).

Arguments (comma-separated): as configs/s3l_moco_cub.py (res, arch, epochs=200, later_epochs, dataset,
runlocal, synthetic).
"""
import ml_collections

from configs import common, s3l_moco_cub

_LOSS_SCALE = 0.1 / 0.07   # SupContrast's temperature / base_temperature


def get_config(arg=None):
  arg = s3l_moco_cub.parse(arg, epochs=200.0)
  c = common.base_config()
  c.method = 'simclr'
  c.batch_size = 512
  c.log_every_steps = 11
  c.checkpoint_every_steps = 1100       # every 100 epochs, as S3L
  c.eval_every_steps = 0
  c.model.bn_group_size = 256           # per GPU: 128 images x 2 views
  c.model.head = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=0, out_dim=128, use_bn=False, last_bn=False, activation='relu'))  # 0: d
  c.loss.temperature = 0.1
  s3l_moco_cub.apply_s3l(c, arg)
  c.optimizer.base_lr = 0.5 * _LOSS_SCALE
  c.optimizer.weight_decay = 1e-4 / _LOSS_SCALE
  c.optimizer.warmup_epochs = 10.0
  if arg.runlocal:
    c.model.bn_group_size = 8
  return c
