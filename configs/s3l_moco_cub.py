r"""S3L with MoCo v2 on CUB-200-2011 (Cao & Wu, "Rethinking Self-Supervised Learning: Small is Beautiful").

Commands (CUB-200-2011 from tfds; prepare it once with
`python -c "import tensorflow_datasets as tfds; tfds.builder('caltech_birds2011').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/s3l_moco_cub.py:res=224 --workdir runs/s3l_moco_224  # baseline
  python -m ssl_jax.main --config configs/s3l_moco_cub.py:res=112 --workdir runs/s3l_moco_112  # S3L
  python -m ssl_jax.main --config configs/s3l_moco_cub.py:res=112to224 --workdir runs/s3l_moco_112to224
  python -m ssl_jax.main --config configs/s3l_moco_cub.py:res=112,arch=no_conv5 --workdir runs/s3l_moco_nc5
then S3L's fine-tuning protocol at 224 px (for arch=no_conv5 it rebuilds the full ResNet-50, loads stages
1-3, warms stage 4 and a head up for 10 epochs with stages 1-3 frozen, then fine-tunes everything):
  python -m ssl_jax.evaluate.finetune_cli --workdir runs/s3l_moco_112 --config.preset=s3l

Recipe (S3L's moco/pretrain_cub.sh; reference/s3l.md): ResNet-50 (ImageNet stem; arch=no_conv5: its last
stage removed, `model.num_stages=3`), pretrained on CUB's 5,994 train images only; random-resized crops of
scale (0.2, 1) cut from the full image on the host at each stage's resolution; batch 128, SGD lr 0.03 (not
scaled), momentum 0.9, wd 1e-4 on every parameter, cosine to 0 without warm-up (per step here, per epoch in
S3L), 200 epochs (46 steps each); InfoNCE τ 0.2 (MoCo v2's asymmetric loss), queue K 4096, key momentum
0.999 (constant), projector d-d-128 without BN, d the encoder's output width (2048; 1024 for arch=no_conv5:
MoCo's builder sizes the hidden layer by the encoder; `model.head.hidden_dim=0`, set it to fix the width);
MoCo v2's augmentation (blur p 0.5, σ in [0.1, 2] px, not rescaled at low resolution, as S3L's code; the
kernel is wide enough for σ = 2 at 56 px); shuffle-BN as ghost BatchNorm groups of 32 (S3L's 32 images per
GPU) with the key batch permuted.
Multi-stage (res=AtoB[toC]): `epochs` at the first size, then `later_epochs` at each next one, every later
stage starting from the previous model, queue and key encoder with a fresh SGD state and a fresh cosine from
lr 0.03 (S3L's --pretrained: its momentum is not restored). The length of the later stages is our reading:
S3L's ImageNet checkpoint name says 50 epochs at 224 after 200 at 112; its CUB README reuses 200.
Cost in "224-px ResNet-50 epochs" (FLOP ratios 0.26 at 112 and 0.07 at 56; 0.80 without conv5):
224: 200; 112: 53; 56: 15; 112to224: 103; 56to112: 28; 56to112to224: 78; 112,arch=no_conv5: 40.
Expected: not determined. S3L's tables could not be read (reference/s3l.md), so the targets are relative: at
S3L's settings, 112 px (and 112to224) should fine-tune at least as well as the 224-px baseline for a quarter
(half) of its pretraining compute. Nothing here is measured with ssl_jax on CUB yet. The trainer's own final
scores (kNN and linear probe of the frozen encoder at the last stage's resolution) are not S3L's metric.
Hardware/runtime: meant for one accelerator (S3L used 4 GPUs); 9,200 steps of batch 128 at 112 px.

Arguments (comma-separated): res=224|112|56|112to224|56to112|56to112to224 (default 112), arch=full|no_conv5,
epochs=200 (first stage), later_epochs=50, dataset=cub|cars|aircraft|flowers|pets (aircraft: ImageFolder,
set --config.data.root, see ssl_jax/data/aircraft.py), runlocal (a few steps of a tiny ResNet-18 at 16-32 px;
needs the dataset or tfds mock data), synthetic (random images, for benchmarks).
"""
import ml_collections

from configs import common

# dataset argument -> (data.name, train split, eval split). S3L trains on the train split and evaluates on the
# test split ("val" folder) of each; Flowers-102 trains on train + validation (its usual 2,040 images).
DATASETS = {
    'cub': ('caltech_birds2011', 'train', 'test'),
    'cars': ('cars196', 'train', 'test'),
    'aircraft': ('image_folder', 'train', 'test'),
    'flowers': ('oxford_flowers102', 'train+validation', 'test'),
    'pets': ('oxford_iiit_pet', 'train', 'test'),
}
RESOLUTIONS = ('224', '112', '56', '112to224', '56to112', '56to112to224')
ARCHS = ('full', 'no_conv5')
# :runlocal keeps each stage's place in the schedule at sizes a CPU runs in seconds.
_RUNLOCAL_SIZES = {56: 16, 112: 24, 224: 32}


def parse(arg, *, epochs: float):
  """The arguments every S3L recipe takes (module docstring); `epochs` is the recipe's first-stage default."""
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, res='112', arch='full', epochs=epochs,
                         later_epochs=50.0, dataset='cub')
  if arg.res not in RESOLUTIONS or arg.arch not in ARCHS or arg.dataset not in DATASETS:
    raise ValueError(f'res={arg.res!r} arch={arg.arch!r} dataset={arg.dataset!r}: use res in {RESOLUTIONS}, '
                     f'arch in {ARCHS}, dataset in {tuple(DATASETS)}')
  return arg


def apply_s3l(c, arg) -> None:
  """What S3L's recipes share: ResNet-50, the data, MoCo v2's views, plain SGD, the resolution stages."""
  c.model.name = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.num_stages = 3 if arg.arch == 'no_conv5' else 0   # no_conv5: S3L's custom_resnet50
  c.data.name, c.data.train_split, c.data.eval_split = DATASETS[arg.dataset]
  c.data.shuffle_buffer = 10_000
  c.augment.crop_scale = (0.2, 1.0)
  c.augment.blur_prob = 0.5
  c.augment.blur_kernel_frac = 0.25   # >= 13 taps at 56 px: σ up to 2 px is not truncated at any size
  c.augment2 = ml_collections.ConfigDict(c.augment.to_dict())
  c.optimizer.name = 'sgd'
  c.optimizer.lr_scaling = 'none'
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.weight_decay = 1e-4
  c.optimizer.exclude_bias_and_norm = False   # PyTorch's SGD weight_decay: every parameter
  sizes = [int(size) for size in arg.res.split('to')]
  c.data.image_size = sizes[-1]   # evaluation (kNN, probes, load_encoder) at the last stage's size
  c.total_epochs = arg.epochs
  if len(sizes) > 1:
    c.total_epochs = 0.0
    c.stages = tuple({'image_size': size, 'epochs': arg.epochs if i == 0 else arg.later_epochs}
                     for i, size in enumerate(sizes))
  if arg.synthetic:
    common.use_synthetic(c)
    # Images of the largest stage's size, cropped on the device at each stage's size: the step cost scales
    # with the resolution as with host-cropped data (benchmarks: python -m ssl_jax.benchmark).
    c.data.synthetic_shape = (max(sizes), max(sizes), 3)
  if arg.runlocal:
    shrink_s3l_for_runlocal(c)


def shrink_s3l_for_runlocal(c) -> None:
  """`common.shrink_for_runlocal`, a CIFAR-stem ResNet-18, and 2 steps per stage at 16-32 px."""
  common.shrink_for_runlocal(c)
  c.model.name = 'resnet18'
  c.model.stem = 'cifar'
  c.data.shuffle_buffer = 64
  if c.data.name == 'synthetic':
    c.data.synthetic_shape = (32, 32, 3)
  c.data.image_size = _RUNLOCAL_SIZES[c.stages[-1]['image_size'] if c.stages else 112]
  if c.stages:
    c.total_steps = 0
    c.stages = tuple({'image_size': _RUNLOCAL_SIZES[s['image_size']], 'steps': 2} for s in c.stages)


def get_config(arg=None):
  arg = parse(arg, epochs=200.0)
  c = common.base_config()
  c.method = 'moco'
  c.batch_size = 128
  c.log_every_steps = 46
  c.checkpoint_every_steps = 920        # every 20 epochs, as S3L
  c.eval_every_steps = 0
  c.model.bn_group_size = 32            # S3L's 32 images per GPU; shuffle-BN below
  c.model.head = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=0, out_dim=128, use_bn=False, last_bn=False, activation='relu'))  # 0: d
  c.ema = ml_collections.ConfigDict(dict(schedule='constant', base=0.999, final=1.0))
  c.moco = ml_collections.ConfigDict(dict(queue_size=4096, shuffle_bn=True, symmetric=False))
  c.loss.temperature = 0.2
  c.optimizer.base_lr = 0.03
  apply_s3l(c, arg)
  if arg.runlocal:
    c.model.bn_group_size = 8
    c.moco.queue_size = 32
  return c
