r"""SwAV on ImageNet-1k as the rotation paper's authors released it (val-iisc/EffSSL), with or without rotation.

`scripts/swav_rotnet_50ep_bs1024_withmc.sh` (rotation=true, default) and `scripts/swav_50ep_bs1024_withmc.sh`
(rotation=false): ResNet-50 (ImageNet stem), batch 1024, 50 epochs, multi-crop 2 x 224 px (crop scale
0.14-1) + 6 x 96 px (0.05-0.14), codes of crops (0, 1), τ 0.1, Sinkhorn ε 0.05 with 3 rounds, 3000
prototypes re-normalised every step and frozen for the first 313 iterations, projector 2048 -> 2048 -> BN ->
ReLU -> 128, no queue; SGD momentum 0.9 in LARS (η 0.001, biases and BatchNorm excluded from LARS and weight
decay), weight decay 1e-6, base lr 1.2 at batch 1024 (the scripts' `--base_lr 1.2`, linear in the batch
size over 1024 here), 10 warm-up epochs then cosine to 0.0012 (end factor 0.001); colour jitter
(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale p 0.2, Gaussian blur p 0.5 σ 0.1-2, flip; rotation: both 224 px crops
copied and turned by a uniform quarter turn, each copy through the backbone in its own pass, head 2048 ->
2048 -> BN -> ReLU -> 4 on the backbone feature, loss + 0.1·(CE1 + CE2).

Deviations: the warm-up starts at 0 (the code's at 0.3); the code's ResNet-50 pads the input by 1 px
before a padding-2 stem conv (ours is torchvision's); float32/bfloat16 instead of fp16 AMP; the blur is
ours (separable, kernel 10% of the side) instead of PIL's. Multi-crop on the host-cropped ImageNet JPEGs
is not implemented yet (the run is refused with a one-line error; `:synthetic` runs, as does
`--config.multicrop.num_local=0`: the 2 x 224 px setting of the workshop paper's 30-epoch ResNet-50 runs).

Command:
  python -m ssl_jax.main --config configs/swav_imagenet.py:rotation=false --workdir DIR
Expected (paper, not measured here): the released 50-epoch scripts have no table; the workshop paper's
30-epoch ResNet-50 runs without multi-crop (Table 3): linear top-1 54.90 (SwAV) -> 57.30 (SwAV + Rot).

Arguments (comma-separated): rotation=true|false, runlocal (32 px + 16 px crops, tiny network), synthetic.
"""
import ml_collections

from configs import common


def swav_config(*, num_prototypes: int, epsilon: float, queue_length: int = 0, queue_start_epoch: float = 15.0,
                freeze_prototypes_steps: int = 313) -> ml_collections.ConfigDict:
  """The `swav` block; the defaults not given here are those of the official code."""
  return ml_collections.ConfigDict(dict(
      num_prototypes=num_prototypes, temperature=0.1, epsilon=epsilon, sinkhorn_iters=3, crops_for_assign=(0, 1),
      freeze_prototypes_steps=freeze_prototypes_steps, queue_length=queue_length,
      queue_start_epoch=queue_start_epoch))


def multicrop_config(num_local: int = 0, local_size: int = 96, local_crop_scale=(0.05, 0.14)):
  return ml_collections.ConfigDict(dict(num_global=2, num_local=num_local, local_size=local_size,
                                        local_crop_scale=tuple(local_crop_scale)))


def use_swav_augment(c, *, blur: bool) -> None:
  """SwAV's colour recipe: jitter (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2, blur p 0.5 (if `blur`)."""
  c.augment.update(jitter_prob=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, grayscale_prob=0.2,
                   blur_prob=0.5 if blur else 0.0)


def use_rotation(c, enabled: bool, weight: float) -> None:
  """The rotation task as the EffSSL code runs it on SwAV: head on the backbone feature, 4 angles."""
  c.rotation.update(enabled=enabled, weight=weight, num_angles=4, head_on='backbone', hidden_dim=0)


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, synthetic=False, rotation=True)
  c = common.base_config()
  c.method = 'swav'
  c.batch_size = 1024
  c.total_epochs = 50.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2500

  c.model.name = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.head.update(num_layers=2, hidden_dim=2048, out_dim=128, use_bn=True, last_bn=False)
  c.swav = swav_config(num_prototypes=3000, epsilon=0.05)
  c.multicrop = multicrop_config(num_local=6, local_size=96, local_crop_scale=(0.05, 0.14))

  c.data.name = 'imagenet2012'
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.image_size = 224
  c.data.synthetic_shape = (224, 224, 3)
  c.data.synthetic_classes = 1000
  c.augment.crop_scale = (0.14, 1.0)
  use_swav_augment(c, blur=True)

  c.optimizer.update(name='lars', base_lr=1.2, lr_scaling='linear', base_batch_size=1024, warmup_epochs=10.0,
                     end_lr_factor=0.001, momentum=0.9, weight_decay=1e-6, exclude_bias_and_norm=True,
                     trust_coefficient=1e-3)
  use_rotation(c, arg.rotation, weight=0.1)
  c.eval.linear_epochs = 25            # the released eval_linear.py's --epoch 25

  return finish(c, runlocal=arg.runlocal, synthetic=arg.synthetic)


def finish(c, *, runlocal: bool, synthetic: bool):
  """The `:synthetic` and `:runlocal` variants of an ImageNet-style SwAV recipe."""
  if synthetic:
    common.use_synthetic(c)
  if runlocal:
    common.shrink_for_runlocal(c)
    c.data.image_size = 32             # the ImageNet stem and 4 stages need at least 32 px
    c.data.synthetic_shape = (32, 32, 3)
    c.multicrop.local_size = 16
    c.swav.update(num_prototypes=10, freeze_prototypes_steps=2, queue_length=min(c.swav.queue_length, 32),
                  queue_start_epoch=0.0)
  return c
