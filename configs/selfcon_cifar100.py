r"""SelfCon (Bae et al., AAAI 2023), ResNet-18 (CIFAR stem) on CIFAR-100 or CIFAR-10: the official recipe.

The official scripts/selfcon_represent.sh: an `fc` sub-network after stage 2, one view per image, labels,
batch 1024, SGD (momentum 0.9, weight decay 1e-4 on every parameter) at lr 0.5, 10 warm-up epochs then
cosine to lr·1e-3, τ 0.1 with the official τ/0.07 loss scaling, 1000 epochs; heads 512-512-128 without BN;
crops of scale 0.2-1, flip, colour jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2, no blur.
The official run used 8 GPUs with DataParallel, which splits its view-major batch (all first views, then
all second views) into 8 chunks: each GPU's BatchNorm sees 128 images of one view (SelfCon, SupCon-S) or 256
images of one view (two-view variants). Here that is ghost BatchNorm over groups of 128 x views rows
(`model.bn_group_size`) taken in view-major order (`selfcon.view_major_bn=True`; False groups whole
examples, both views together), and bfloat16 compute stands in for its fp16 AMP
(`--config.model.dtype=float32` for full precision).
Differences from the official schedule: warm-up starts at 0 (official 0.01) and the cosine is per step over
the steps after warm-up (official: per epoch over all epochs, the warm-up ending on the cosine's value).

Commands (one GPU host; prepare the data first with
`python -c "import tensorflow_datasets as tfds; tfds.builder('cifar100').download_and_prepare()"`):
  python -m ssl_jax.main --config configs/selfcon_cifar100.py --workdir /tmp/selfcon_c100
  python -m ssl_jax.evaluate.linear_cli --workdir /tmp/selfcon_c100 --config.protocol=augmented \
      --config.crop_scale='(0.2, 1.0)' --config.lr=3 --config.batch_size=512 --config.standardize=False
The second line is the official linear protocol's closest match (official: SGD lr 3, batch 512, 100 epochs,
step decay x0.1 at 60 and 80 where ssl_jax decays on a cosine); it trains a probe on the backbone exit, one
on the sub-network exit and reports their ensemble (mean of the logits), best and last epoch.
Baselines with the same budget: `:variant=supcon` (two views, no sub-network) and `:variant=supcon_s` (one
view, no sub-network). CIFAR-10: `:dataset=cifar10`.

Expected (the paper's figures, none measured with ssl_jax; only abstracts could be read): the arXiv v1/v2
abstract reports CIFAR-100 ResNet-18 SelfCon 76.45% linear top-1, +2.87 over SupCon (73.58%), in that older
version's setup; the AAAI tables (CIFAR-10, CIFAR-100, SupCon-S, the ensemble) could not be retrieved.
Hardware/runtime: meant for an accelerator; not measured with ssl_jax. A SelfCon step encodes each image
once (SupCon: twice): see `python -m ssl_jax.benchmark` for the step-time and memory ratios.

Arguments (comma-separated):
  dataset=cifar100|cifar10
  variant=selfcon|selfcon_m|selfcon_su|selfcon_mu|supcon|supcon_s (see ssl_jax/methods/selfcon.py)
  runlocal    seconds-long smoke run (tiny network, a few steps); needs the dataset or tfds mock data.
  synthetic   random images instead of CIFAR: the throughput benchmark, no data needed.
Switches: --config.selfcon.sub_net=fc|small|same, --config.selfcon.exit_stage=1|2|3,
--config.selfcon.alpha=A (the "*" variants), --config.selfcon.official_temperature_scaling=False,
--config.selfcon.mu_other_view_positive=True, --config.selfcon.view_major_bn=False.
"""
import ml_collections

from configs import common
from ssl_jax.methods import selfcon

DATASETS = ('cifar100', 'cifar10')


def selfcon_block(variant: str, *, sub_net: str) -> ml_collections.ConfigDict:
  """The `config.selfcon` block of the recipes."""
  if variant not in selfcon.VARIANTS:
    raise ValueError(f'variant={variant!r}: use one of {", ".join(selfcon.VARIANTS)}')
  return ml_collections.ConfigDict(dict(
      variant=variant, exit_stage=2, sub_net=sub_net, alpha=0.0, official_temperature_scaling=True,
      mu_other_view_positive=False, view_major_bn=True))


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, dataset='cifar100', variant='selfcon')
  if arg.dataset not in DATASETS:
    raise ValueError(f'dataset={arg.dataset!r}: use one of {", ".join(DATASETS)}')
  c = common.base_config()
  c.method = 'selfcon'
  c.selfcon = selfcon_block(arg.variant, sub_net='fc')
  views = selfcon.VARIANTS[arg.variant].views
  c.num_views = views            # documentation only: the variant decides
  c.batch_size = 1024
  c.total_epochs = 1000.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  c.eval_every_steps = 5000

  c.model.name = 'resnet18'
  c.model.stem = 'cifar'
  c.model.dtype = 'bfloat16'
  c.model.bn_group_size = 128 * views   # the official per-GPU BatchNorm: 1024 x views rows over 8 GPUs
  c.model.head = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=0, out_dim=128, use_bn=False, last_bn=False, activation='relu'))  # 0: d

  c.data.name = arg.dataset
  c.data.image_size = 32
  c.augment.crop_scale = (0.2, 1.0)

  c.optimizer.name = 'sgd'
  c.optimizer.base_lr = 0.5
  c.optimizer.lr_scaling = 'none'
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.end_lr_factor = 1e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.exclude_bias_and_norm = False   # torch SGD decays every parameter
  c.loss.temperature = 0.1

  if arg.synthetic:
    common.use_synthetic(c)
  if arg.runlocal:
    common.shrink_for_runlocal(c)
    c.model.dtype = 'float32'
    c.model.bn_group_size = 8 * views
  return c
