r"""MoCo v2 on CUB-200-2011 at 112 px: S3L's small-resolution, small-data setting (Cao & Wu, 2103.13559).

Command (CUB-200-2011 from tfds; prepare it first with
`python -c "import tensorflow_datasets as tfds; tfds.builder('caltech_birds2011').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/moco_cub200.py --workdir /tmp/moco_cub200

Recipe (S3L's moco/pretrain_cub.sh): ResNet-50 (ImageNet stem), pretrained on CUB's 5,994 train images only,
random-resized crops of scale (0.2, 1) at 112 px (cropped on the host from the full image); batch 128, SGD
lr 0.03 (not scaled), momentum 0.9, wd 1e-4 on every parameter, cosine to 0 without warm-up (stepped per step
here, per epoch in S3L), 200 epochs (9,200
steps with drop-last batches of 128: 46 per epoch); InfoNCE τ 0.2, queue K 4096, key momentum 0.999
(constant), projector 2048-2048-128 without BN; MoCo v2's augmentation (blur p=0.5, σ in [0.1, 2]);
shuffle-BN as ghost BatchNorm groups of 32 (S3L's 32 images per GPU) with the key batch permuted.
S3L's small architecture (ResNet-50 without its last stage) is `--config.model.num_stages=3`; its multi-stage
resolution schedule is `--config.resolution_stages`.
Expected: not determined. S3L's tables could not be read (reference/s3l.md); S3L reports fine-tuning at 224 px
(best epoch), which ssl_jax does not run here: this config scores the frozen encoder (kNN and linear probe at
112 px). Hardware/runtime: meant for an accelerator; not measured with ssl_jax.

Arguments (comma-separated): runlocal (seconds-long smoke run on a tiny ResNet-18 at 32 px; needs the dataset
or tfds mock data).
"""
import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False)
  c = common.base_config()
  c.method = 'moco'
  c.batch_size = 128
  c.total_epochs = 200.0
  c.log_every_steps = 46
  c.checkpoint_every_steps = 920        # every 20 epochs, as S3L
  c.eval_every_steps = 0

  c.model.name = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.bn_group_size = 32
  c.model.head = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=2048, out_dim=128, use_bn=False, last_bn=False, activation='relu'))
  c.ema = ml_collections.ConfigDict(dict(schedule='constant', base=0.999, final=1.0))
  c.moco = ml_collections.ConfigDict(dict(queue_size=4096, shuffle_bn=True))
  c.loss.temperature = 0.2

  c.data.name = 'caltech_birds2011'
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.image_size = 112
  c.data.crop_scale = (0.2, 1.0)
  c.data.shuffle_buffer = 6000
  c.augment.crop_scale = (0.2, 1.0)
  c.augment.blur_prob = 0.5
  c.augment2 = ml_collections.ConfigDict(c.augment.to_dict())

  c.optimizer.name = 'sgd'
  c.optimizer.base_lr = 0.03
  c.optimizer.lr_scaling = 'none'
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.weight_decay = 1e-4
  c.optimizer.exclude_bias_and_norm = False

  if arg.runlocal:
    common.shrink_for_runlocal(c)
    c.model.name = 'resnet18'
    c.model.bn_group_size = 8
    c.moco.queue_size = 32
    c.data.image_size = 32
    c.data.shuffle_buffer = 64
  return c
