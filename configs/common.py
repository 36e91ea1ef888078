"""Defaults shared by every recipe. Each recipe copies this and changes what it needs."""
import ml_collections

from ssl_jax.data import augment
from ssl_jax.errors import UserError


_TRUE, _FALSE = ('1', 'true', 'yes', 'on'), ('0', 'false', 'no', 'off')


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'runlocal' or 'key=value,key2' config arguments (big_vision style) over `defaults`.

  An unknown key or a value of the wrong type is a UserError (exit code 2), never silently ignored.
  """
  out = ml_collections.ConfigDict(defaults)
  known = ', '.join(out) or 'none'
  for part in (arg or '').split(','):
    if not part:
      continue
    key, _, value = part.partition('=')
    if key not in out:
      raise UserError(f'unknown config argument {key!r}; this recipe takes: {known}')
    if isinstance(out[key], bool):
      value = (value or 'true').lower()
      if value not in _TRUE + _FALSE:
        raise UserError(f'config argument {key}={value!r} is not true or false; write :{key} (or {key}=false)')
      out[key] = value in _TRUE
    else:
      try:
        out[key] = type(out[key])(value)
      except ValueError:
        raise UserError(f'config argument {key}={value!r} is not {type(out[key]).__name__}; e.g. '
                        f'{key}={out[key]}') from None
  return out


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = 'simclr'
  c.seed = 0
  c.batch_size = 256            # global, over all devices and processes
  c.num_views = 2
  c.total_epochs = 100.0        # used when total_steps is 0
  c.total_steps = 0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.eval_every_steps = 0        # 0: evaluate only at the end
  # Stages of training, e.g. ({'image_size': 112, 'epochs': 200}, {'image_size': 224, 'epochs': 50}): each
  # with its view size, length and optimizer changes (ssl_jax/stages.py); () = one stage of data.image_size.
  c.stages = ()
  c.distributed = False         # call jax.distributed.initialize() (multi-host)
  # A non-finite loss (README "Reliability"): 'stop' (exit 1), 'skip_step' (that step's update is dropped on
  # the device; after nan_max_skipped_steps in a row, stop), or 'rollback' (back to the last checkpoint, on
  # with the next batch; at most nan_max_rollbacks times per launch, then stop).
  c.on_nan = 'stop'
  c.nan_max_rollbacks = 3
  c.nan_max_skipped_steps = 5
  # Resume from a workdir whose checkpoint was trained with a different config (e.g. continue it with a new
  # learning rate or dataset): the differing fields are printed and the run goes on.
  c.resume_from_different_config = False

  c.model = ml_collections.ConfigDict(dict(
      name='resnet18', stem='cifar', width=1.0, num_stages=0,  # 0 keeps every stage
      bn_group_size=0,          # 0: BatchNorm over the global batch; G: over fixed groups of G examples
      # Compute dtype: 'auto' = bfloat16 on GPU/TPU, float32 on CPU; params, optimizer state, BatchNorm
      # statistics, heads and loss logits stay float32 (ssl_jax/models/precision.py).
      bn_momentum=0.9, dtype='auto',
      # ViTs only (ssl_jax/models/vit.py; ResNets ignore them): patch side, heads (0 = the model's own),
      # position embedding 'sincos' (fixed, MoCo v3) or 'learned', MoCo v3's frozen random patch projection,
      # feature = the class token ('token') or the mean patch token ('avg') after the final LayerNorm.
      patch_size=16, num_heads=0, pos_embed='sincos', freeze_patch_embed=False, pool='token'))
  c.model.head = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_dim=2048, out_dim=128, use_bn=True, last_bn=False, activation='relu'))

  # download: a missing dataset that tfds can download is prepared on first use (by process 0); False: an
  # error that says how to prepare it. ImageNet is always a manual download.
  c.data = ml_collections.ConfigDict(dict(
      name='cifar10', data_dir='', download=True, root='', train_split='train', eval_split='test', image_size=32,
      shuffle_buffer=50_000, synthetic_examples=1024, synthetic_shape=(32, 32, 3), synthetic_classes=10,
      # Small data: N random train examples, or n of every class, fixed by subset_seed (0 = whole split).
      subset_num=0, subset_per_class=0, subset_seed=0))

  c.augment = augment.default_config()

  c.optimizer = ml_collections.ConfigDict(dict(
      name='lars', base_lr=0.3, lr_scaling='linear', base_batch_size=256, warmup_epochs=10.0,
      end_lr_factor=0.0, momentum=0.9, nesterov=False, weight_decay=1e-6, exclude_bias_and_norm=True,
      trust_coefficient=1e-3, b1=0.9, b2=0.999,
      schedule='warmup_cosine', cosine_t_max_steps=0))  # ssl_jax/optim.py: 'periodic_cosine' is RepMix's

  # reduction: 'mean_of_log' (NT-Xent / SupCon, -mean log p) or 'log_of_mean' (-log mean p: the RepMix code's
  # form, two views and no labels; ssl_jax/losses.py nt_xent_log_of_mean). chunk_size: 0 builds the whole
  # N x N logit matrix of the contrastive losses at once; C > 0 runs C anchors at a time with the chunk's
  # logits recomputed in the backward pass: same loss and gradients, memory O(N·C) (very large batches).
  # supcon_form: 'out' (SupCon's L_out: mean over positives of -log p) or 'in' (-log of the positives' summed
  # p: solo-learn's supcon). no_positive: an anchor without positives is left out of the mean ('exclude':
  # SelfCon's code) or counts as 0 over all anchors ('zero': SupContrast's). ssl_jax/losses.py contrastive_loss.
  c.loss = ml_collections.ConfigDict(dict(temperature=0.2, reduction='mean_of_log', chunk_size=0,
                                          supcon_form='out', no_positive='exclude'))

  # Representation mixing (method 'repmix', Sharma et al., BDA 2024; ssl_jax/methods/repmix.py): projections
  # mixed as λ·g(f(clean)) + (1 - λ)·g(f(augmented)); λ = mix_weight (0.5: the paper's plain sum, up to a
  # scale the cosine ignores), or, with mix_beta_alpha > 0, λ ~ Beta(α, α) drawn per anchor (our extension).
  c.repmix = ml_collections.ConfigDict(dict(mix_weight=0.5, mix_beta_alpha=0.0))

  # Rotation prediction as an auxiliary task (Addepalli et al., ECCV 2022; ssl_jax/methods/rotation.py): a
  # rotated copy of views 1 and 2 (angle k·360/num_angles, k uniform per copy; num_angles 2, 4, 8 or 12), its
  # own forward pass, a head (hidden_dim, 0 = its input width; BN, ReLU, one logit per angle) on the
  # 'projector' output (the paper) or the 'backbone' feature (the official SwAV code);
  # loss = framework loss + weight·(CE1 + CE2).
  c.rotation = ml_collections.ConfigDict(dict(
      enabled=False, weight=0.1, num_angles=4, head_on='projector', hidden_dim=0))

  # Batch fusion (BA-SSL / CDOA; ssl_jax/models/fusion.py, ssl_jax/methods/fusion.py), pre-training only.
  # variant 'released' (the authors' code: groups of group_size consecutive examples of the global batch as
  # the channels of one (patches, patch values) tensor, num_blocks conv blocks of hidden width `width`, an
  # outer residual, no gate) or 'gated' (our earlier reading; it also reads kernel_size, norm, activation,
  # gate, gate_init, gate_max). num_blocks=0: no module. patch_size: 16 in the code at 224 px; unknown for
  # small images. views: 'second' (the code: view 2 only) or 'both'; share_groups: with both, the views use
  # the same partners (off: independent, see ssl_jax/methods/fusion.py). placement: 'input' or 'stem'.
  c.fusion = ml_collections.ConfigDict(dict(
      enabled=False, variant='released', placement='input', views='second', patch_size=16, group_size=128,
      num_blocks=1, width=256, share_groups=False, kernel_size=3, norm='layer', activation='gelu',
      gate='learned', gate_init=0.0, gate_max=1.0))

  # Online linear probe on stop-gradient encoder features, trained in the same step (only when labelled).
  c.probe = ml_collections.ConfigDict(dict(enabled=True, lr=0.1, momentum=0.9, weight_decay=0.0))

  # kNN monitor (every eval_every_steps; knn_top1 is the first k of knn_ks; bank: the first knn_bank_size train
  # images, 0 = all) and the final kNN + linear probe of the frozen encoder and of its random initialisation.
  c.eval = ml_collections.ConfigDict(dict(
      knn_ks=(200, 20), knn_temperature=0.1, knn_bank_size=0, linear_epochs=100, linear_lr=1e-2,
      linear_weight_decay=1e-4, batch_size=256, final=True, compare_random_init=True))
  return c


def shrink_for_runlocal(c):
  """A few steps of a tiny network at 16 px: the `:runlocal` variant of the CIFAR / CUB recipes."""
  c.batch_size = 16
  c.total_steps = 4
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  c.eval_every_steps = 0
  c.model.width = 0.125
  c.model.head.hidden_dim = 32
  c.model.head.out_dim = 16
  if 'predictor' in c.model:
    c.model.predictor.hidden_dim = 32
    c.model.predictor.out_dim = 16
  c.data.image_size = 16
  c.eval.knn_ks = (10,)
  c.eval.linear_epochs = 5
  c.eval.batch_size = 32


def use_synthetic(c) -> None:
  """Random images instead of the dataset (`:synthetic`): benchmarks and tests that need no data."""
  c.data.name = 'synthetic'
  c.data.synthetic_examples = 4096
  c.eval.final = False
