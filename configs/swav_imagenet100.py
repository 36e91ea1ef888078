r"""SwAV on ImageNet-100 as the rotation paper's workshop version ran it, with or without the rotation task.

Addepalli et al. (NeurIPS'21 SSL workshop, A3/A4.1, Table 5): ResNet-18 (ImageNet stem), batch 512, 100
epochs, the CMC 100-class list, 300 prototypes, a queue of 384 past projections, rotation weight w = 0.1
(the paper's "2λ"; head on the backbone feature, as the authors' SwAV code). Not stated there, taken from
the official SwAV ImageNet code and marked [guess]: ε 0.05, τ 0.1, 3 Sinkhorn rounds, 2 x 224 px crops
(0.14-1) + 6 x 96 px (0.05-0.14), projector 2048 -> 2048 -> BN -> ReLU -> 128, queue from epoch 15,
prototypes frozen for the first epoch, LARS base lr 0.6 per 256 examples, wd 1e-6, 10 warm-up epochs and
cosine, SwAV's colour recipe with blur. The official code would round a queue of 384 down to a multiple of
the global batch (0 at 512, i.e. no queue); here the queue holds the newest 384 rows (configs/swav.md).
Multi-crop on the host-cropped ImageNet JPEGs is not implemented yet: the run is refused with a one-line
error unless `--config.multicrop.num_local=0` (2 x 224 px); `:synthetic` runs as is.

Command:
  python -m ssl_jax.main --config configs/swav_imagenet100.py:multicrop=false --workdir DIR
Expected: the PAPER'S figures (workshop Table 5, linear top-1 / top-5; not measured with ssl_jax):
SwAV 72.20 / 92.96, SwAV + Rot 74.40 / 93.33.

Arguments (comma-separated): rotation=true|false (default true), multicrop=true|false (default true),
runlocal (32 px + 16 px crops, tiny network), synthetic (random images).
"""
from configs import common, swav_imagenet


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, rotation=True, multicrop=True)
  c = swav_imagenet.get_config()
  c.batch_size = 512
  c.total_epochs = 100.0
  c.model.name = 'resnet18'
  steps_per_epoch = 126_689 // 512
  c.swav = swav_imagenet.swav_config(num_prototypes=300, epsilon=0.05, queue_length=384, queue_start_epoch=15.0,
                                     freeze_prototypes_steps=steps_per_epoch)
  c.multicrop.num_local = 6 if arg.multicrop else 0
  c.data.name = 'imagenet100'
  c.data.synthetic_classes = 100
  c.optimizer.update(base_lr=0.6, base_batch_size=256, end_lr_factor=0.001)
  swav_imagenet.use_rotation(c, arg.rotation, weight=0.1)
  c.eval.linear_epochs = 100
  return swav_imagenet.finish(c, runlocal=arg.runlocal, synthetic=arg.synthetic)
