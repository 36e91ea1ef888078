r"""ssl_jax's SimCLR train step written in PyTorch, timed alike: the `--torch` side of `ssl_jax.benchmark`.

    python -m ssl_jax.benchmark --config simclr_cifar10:synthetic [--config.KEY=VALUE ...] --torch

runs this module in a child process (`python -m ssl_jax.torch_simclr --config ... --steps N --out FILE.json`)
before JAX takes the device. PyTorch (2.x) is an optional dependency (not in requirements.txt). The step runs
on one device (cuda when available, else the CPU); on CUDA in channels-last memory layout, with bf16
autocast when the recipe's `model.dtype` is bfloat16 ('auto' on a GPU), and with the loss computation
compiled by `torch.compile` when that works there (else eager, said in the notes). Timing as ssl_jax's: 2
warm-up steps, then the median of N steps, each synchronised with the device; views/s = batch_size x views
per example / step seconds; the first step's seconds are reported as the compile time.

"The same step" means, on both sides, for the recipe's config values:
  * input: one uint8 (B, H, W, C) batch of the recipe's image shape (`ssl_jax.benchmark.synthetic_like`), created
    once on the device;
  * augmentation on the device, per example, batched: `num_views` views of every image with the recipe's
    `augment` block in ssl_jax.data.augment's order: random resized crop (torchvision's box rule, 10 tries,
    `crop_scale`, `crop_ratio`), horizontal flip, colour jitter (brightness, contrast, saturation, HSV hue,
    applied with `jitter_prob` in a random order per example; both sides evaluate every op at every position
    and keep one, as ssl_jax does), grayscale, Gaussian blur and solarize when their probabilities are
    above 0 (an op at probability 0 is skipped, as ssl_jax skips it at trace time), then normalisation;
  * model: the ResNet of `model.name`, `model.stem` ('cifar': 3x3/1 conv; 'imagenet': 7x7/2 conv + max-pool),
    `model.width`, `model.num_stages`, then the MLP projector of `model.head` (hidden Linear without bias,
    BatchNorm1d, activation; last Linear with bias), BatchNorm over the whole batch of all views in one
    forward pass, momentum `model.bn_momentum`; the parameter counts are equal;
  * precision (`model.dtype`, 'auto' = bfloat16 on a GPU, float32 on the CPU): bfloat16 convolutions
    (PyTorch: `torch.autocast`), with the pooled features, the projector and the loss in float32 on both
    sides; on CUDA PyTorch also runs channels-last with `cudnn.benchmark`, and float32 matmuls may use TF32,
    as XLA's default precision lets them;
  * loss: NT-Xent over the B·V views (`loss.temperature`; each anchor's softmax over the B·V - 1 others),
    `loss.reduction` 'mean_of_log' or 'log_of_mean';
  * optimizer: `optimizer.name` lars (optax.lars as ssl_jax configures it: weight decay, trust ratio, learning
    rate, momentum; biases and BatchNorm parameters excluded from decay and trust ratio when
    `exclude_bias_and_norm`), sgd or adamw, with the same hyper-parameters;
  * the step's monitors: loss, gradient norm, parameter norm, z_std and the positive cosine.

Where the two steps differ:
  * ssl_jax compiles the whole step with XLA (augmentation, forward, backward, optimizer in one program);
    PyTorch runs the augmentation and the optimizer eagerly, op by op, with multi-tensor (`_foreach`)
    optimizer kernels, and the model and loss under torch.compile on CUDA (eagerly elsewhere): that is the
    comparison. None of the differences below should move the time by more than a few percent;
  * the learning rate: ssl_jax evaluates its warmup-cosine schedule on the device every step; PyTorch uses
    the peak rate as a constant;
  * crops: ssl_jax resamples with `jax.image.scale_and_translate` (antialiased when shrinking), PyTorch with
    `affine_grid` + `grid_sample` (bilinear, border padding, no antialiasing): the same pixels (to 1e-6) when
    a box is enlarged, which is always the case when the views have the images' size (the boxes lie inside
    the image); smaller views (e.g. `:runlocal`) differ. The flip is folded into the crop's affine map
    (free) instead of a separate select;
  * random numbers: JAX's threefry keys against torch's device generator: different draws, same
    distributions; the synthetic images differ too (both uniform random bytes);
  * BatchNorm: PyTorch keeps the unbiased running variance, ssl_jax the biased one (flax's convention);
  * bookkeeping: PyTorch converts the uint8 batch to float once per step (ssl_jax once per view) and orders
    the views view-major (ssl_jax example-major: BatchNorm and the loss see the same rows either way); its
    LARS trust ratios multiply one small kernel per tensor;
  * initialisation: convolutions as ssl_jax (He normal, fan-out); Linear layers keep torch's default init;
  * `loss.chunk_size` (ssl_jax's memory-saving chunked loss) is ignored: PyTorch builds the whole logit matrix;
  * ghost BatchNorm (`model.bn_group_size` > 0), batch fusion and the rotation add-on are refused here.
On several devices ssl_jax shards the batch over all of them while PyTorch uses one: run with one device
visible (e.g. CUDA_VISIBLE_DEVICES=0; on the CPU without --xla_force_host_platform_device_count).
Exit codes: 0 done; 2 bad input or no PyTorch (one line on stderr); 1 the step failed.
"""
import argparse
import functools
import json
import math
import pathlib
import statistics
import sys
import time

from ssl_jax import benchmark, config_schema, data, recipes
from ssl_jax.data.augment import blur_kernel_size, fixed_blur_kernel_size
from ssl_jax.errors import UserError

try:
  import torch
  from torch import nn
  import torch.nn.functional as F
except ImportError:  # reported by main() once the flags are checked; nothing below runs without torch
  torch = nn = F = None

# name -> (block kind, blocks per stage, base widths): ssl_jax/models/resnet.py's table.
_ARCHS = {'resnet18': ('basic', (2, 2, 2, 2), (64, 128, 256, 512)),
          'resnet34': ('basic', (3, 4, 6, 3), (64, 128, 256, 512)),
          'resnet50': ('bottleneck', (3, 4, 6, 3), (64, 128, 256, 512)),
          'resnet20': ('basic', (3, 3, 3), (16, 32, 64)),
          'resnet32': ('basic', (5, 5, 5), (16, 32, 64))}
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as ssl_jax.data.augment
_CROP_TRIES = 10


# Classes need a base class even when torch is missing; they are only instantiated when it is there.
_Module = nn.Module if nn is not None else object


# ----------------------------------------------------------------------------------------------- input


def check_supported(config) -> None:
  """Raises UserError for what the PyTorch side does not implement (see the module docstring).

  Names, types and ranges (model.name, model.stem, optimizer.name, ...) are `config_schema.validate`'s.
  """
  refusals = [
      (config.method != 'simclr', f'method {config.method!r} is not compared; only simclr is'),
      (config.model.name not in _ARCHS, f'model.name={config.model.name!r}: use one of {", ".join(_ARCHS)}'),
      (config.model.bn_group_size != 0, 'model.bn_group_size > 0 (ghost BatchNorm) is not implemented here'),
      (config.fusion.enabled or config.rotation.enabled,
       'batch fusion and the rotation add-on are not implemented here; turn them off'),
      (config.optimizer.name not in ('lars', 'sgd', 'adamw'),
       f'optimizer.name={config.optimizer.name!r}: use lars, sgd or adamw'),
      (config.loss.reduction == 'log_of_mean' and config.num_views != 2,
       "loss.reduction='log_of_mean' needs num_views=2"),
      (config.augment.fixed_blur_sigma[0] > 0,
       'a vertical fixed blur (augment.fixed_blur_sigma[0] > 0) is not implemented here'),
  ]
  for refused, message in refusals:
    if refused:
      raise UserError(message)


# ----------------------------------------------------------------------------------------------- model


def _conv(in_dim: int, out_dim: int, kernel: int, stride: int):
  """Bias-free conv, padding k // 2, He normal (fan-out) init: ssl_jax's `_conv`."""
  conv = nn.Conv2d(in_dim, out_dim, kernel, stride, padding=kernel // 2, bias=False)
  nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
  return conv


def _bn(features: int, momentum: float, dims: int = 2, affine: bool = True):
  """BatchNorm whose running statistics follow ssl_jax's `new = m * old + (1 - m) * batch`."""
  cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
  return cls(features, eps=1e-5, momentum=1.0 - momentum, affine=affine)


class _Block(_Module):
  """BasicBlock (two 3x3) or Bottleneck (1x1, 3x3 with the stride, 1x1 to 4x), plus shortcut, then ReLU."""

  def __init__(self, kind: str, in_dim: int, planes: int, stride: int, bn_momentum: float):
    super().__init__()
    bn = functools.partial(_bn, momentum=bn_momentum)
    if kind == 'basic':
      self.out_dim = planes
      layers = [_conv(in_dim, planes, 3, stride), bn(planes), nn.ReLU(inplace=True),
                _conv(planes, planes, 3, 1), bn(planes)]
    else:
      self.out_dim = planes * 4
      layers = [_conv(in_dim, planes, 1, 1), bn(planes), nn.ReLU(inplace=True),
                _conv(planes, planes, 3, stride), bn(planes), nn.ReLU(inplace=True),
                _conv(planes, self.out_dim, 1, 1), bn(self.out_dim)]
    self.residual = nn.Sequential(*layers)
    project = stride != 1 or in_dim != self.out_dim
    self.shortcut = (nn.Sequential(_conv(in_dim, self.out_dim, 1, stride), bn(self.out_dim)) if project
                     else nn.Identity())

  def forward(self, x):
    return F.relu(self.residual(x) + self.shortcut(x))


class _ResNet(_Module):
  """ssl_jax's ResNet: stem, the first `num_stages` stages, global average pool in float32."""

  def __init__(self, m, in_channels: int):
    super().__init__()
    kind, blocks, base_widths = _ARCHS[m.name]
    widths = [max(1, round(w * m.width)) for w in base_widths]
    imagenet = m.stem == 'imagenet'
    layers = [_conv(in_channels, widths[0], 7 if imagenet else 3, 2 if imagenet else 1),
              _bn(widths[0], m.bn_momentum), nn.ReLU(inplace=True)]
    if imagenet:
      layers.append(nn.MaxPool2d(3, 2, padding=1))
    in_dim = widths[0]
    for i in range(m.num_stages or len(blocks)):
      for j in range(blocks[i]):
        layers.append(_Block(kind, in_dim, widths[i], 2 if i > 0 and j == 0 else 1, m.bn_momentum))
        in_dim = layers[-1].out_dim
    self.body = nn.Sequential(*layers)
    self.out_dim = in_dim

  def forward(self, x):
    # The pooled features leave autocast in float32, as ssl_jax's encoder returns them.
    return self.body(x).float().mean(dim=(2, 3))


def _head(in_dim: int, h, bn_momentum: float):
  """ssl_jax's MLPHead: (num_layers - 1) x (Linear, BN1d, activation), Linear; optionally an affine-free BN."""
  # jax.nn.gelu is the tanh approximation; leaky_relu's slope 0.01 is both libraries' default.
  activations = {'relu': nn.ReLU, 'gelu': functools.partial(nn.GELU, approximate='tanh'), 'silu': nn.SiLU,
                 'leaky_relu': nn.LeakyReLU}
  layers, dim = [], in_dim
  for _ in range(h.num_layers - 1):
    layers.append(nn.Linear(dim, h.hidden_dim, bias=not h.use_bn))
    layers += [_bn(h.hidden_dim, bn_momentum, dims=1)] if h.use_bn else []
    layers.append(activations[h.activation]())
    dim = h.hidden_dim
  layers.append(nn.Linear(dim, h.out_dim, bias=not h.last_bn))
  layers += [_bn(h.out_dim, bn_momentum, dims=1, affine=False)] if h.last_bn else []
  return nn.Sequential(*layers)


class EncoderProjector(_Module):
  """The encoder and its projector, as `ssl_jax.models.EncoderProjector` (normalisation: in the views)."""

  def __init__(self, config, in_channels: int):
    super().__init__()
    self.encoder = _ResNet(config.model, in_channels)
    self.projector = _head(self.encoder.out_dim, config.model.head, config.model.bn_momentum)


# ----------------------------------------------------------------------------------------------- augmentation


@functools.lru_cache(maxsize=None)
def _channel_constant(values: tuple, device):
  """(1, C, 1, 1) float32 constant on `device`, made once: inside the step, copying a host list to a CUDA
  device would synchronise the stream and stall the queue of kernels."""
  return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def _luma(x):
  """(N, 1, H, W) grayscale of (N, C, H, W) images; a 1-channel image is its own grayscale."""
  if x.shape[1] == 1:
    return x
  return (x * _channel_constant(_LUMA, x.device)).sum(dim=1, keepdim=True)


def _per_image(v):
  """A (N,) tensor shaped to broadcast over (N, C, H, W)."""
  return v.view(-1, 1, 1, 1)


def _adjust_brightness(x, factor):
  """x · factor per image, clipped to [0, 1]."""
  return (x * _per_image(factor)).clamp(0.0, 1.0)


def _adjust_contrast(x, factor):
  """Each image blended with the mean of its grayscale by `factor`, clipped (torchvision's rule)."""
  mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
  f = _per_image(factor)
  return (f * x + (1 - f) * mean).clamp(0.0, 1.0)


def _adjust_saturation(x, factor):
  """Each pixel blended with its grayscale by `factor`, clipped (torchvision's rule)."""
  f = _per_image(factor)
  return (f * x + (1 - f) * _luma(x)).clamp(0.0, 1.0)


def _adjust_hue(x, delta):
  """Hue turned by `delta` (N,) turns in HSV space, as ssl_jax's adjust_hue: the same op, not a cheaper YIQ
  rotation, so both sides do the same work."""
  r, g, b = x.unbind(dim=1)
  value = x.amax(dim=1)
  chroma = value - x.amin(dim=1)
  saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, 1.0), 0.0)
  safe = torch.where(chroma > 0, chroma, 1.0)  # gray pixels have no hue; keeps unused branches finite
  sector = torch.where(value == r, (g - b) / safe,
                       torch.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  hue = torch.where(chroma > 0, torch.remainder(sector / 6.0, 1.0), 0.0)
  hue = torch.remainder(hue + delta.view(-1, 1, 1), 1.0)
  # Closed-form HSV -> RGB: channel n (R=5, G=3, B=1) dips by v·s on its own third of the hue circle.
  k = torch.remainder(_channel_constant((5.0, 3.0, 1.0), x.device) + 6.0 * hue[:, None], 6.0)
  dip = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
  return (value[:, None] * (1.0 - saturation[:, None] * dip)).clamp(0.0, 1.0)


def color_jitter(x, a):
  """ColorJitter with probability `a.jitter_prob`, the ops in a random order per image (ssl_jax's rule)."""
  n, channels = x.shape[:2]
  saturation, hue = (a.saturation, a.hue) if channels == 3 else (0.0, 0.0)
  u = torch.rand(n, 9, device=x.device)
  ops = []
  for i, (adjust, s) in enumerate(((_adjust_brightness, a.brightness), (_adjust_contrast, a.contrast),
                                   (_adjust_saturation, saturation))):
    if s > 0:
      lo = max(0.0, 1.0 - s)
      ops.append(functools.partial(adjust, factor=lo + (1.0 + s - lo) * u[:, 1 + i]))
  if hue > 0:
    ops.append(functools.partial(_adjust_hue, delta=hue * (2.0 * u[:, 4] - 1.0)))
  if not ops or a.jitter_prob == 0:
    return x
  order = u[:, 5:5 + len(ops)].argsort(dim=1)
  rows = torch.arange(n, device=x.device)
  y = x
  for i in range(len(ops)):
    # Every op on every image, each image keeping the one its order puts here: ssl_jax's vmapped selection.
    y = torch.stack([op(y) for op in ops])[order[:, i], rows]
  return torch.where(_per_image(u[:, 0] < a.jitter_prob), y, x)


def _crop_boxes(n: int, height: int, width: int, scale, ratio, device):
  """(top, left, box_h, box_w) float (N,) tensors: torchvision's RandomResizedCrop rule, as ssl_jax draws it."""
  s_lo, s_hi = (float(v) for v in scale)
  r_lo, r_hi = (float(v) for v in ratio)
  u = torch.rand(n, 2 * _CROP_TRIES + 2, device=device)
  area = height * width * (s_lo + (s_hi - s_lo) * u[:, :_CROP_TRIES])
  aspect = torch.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * u[:, _CROP_TRIES:2 * _CROP_TRIES])
  box_w, box_h = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
  fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
  first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first box that fits (0 if none does)
  found = fits.gather(1, first).squeeze(1)
  # Fallback: the central crop with its aspect ratio clamped into `ratio` (static shapes: plain Python).
  if width / height < r_lo:
    fb_w, fb_h = width, round(width / r_lo)
  elif width / height > r_hi:
    fb_w, fb_h = round(height * r_hi), height
  else:
    fb_w, fb_h = width, height
  box_h = torch.where(found, box_h.gather(1, first).squeeze(1), float(fb_h))
  box_w = torch.where(found, box_w.gather(1, first).squeeze(1), float(fb_w))
  top = torch.where(found, torch.minimum(torch.floor(u[:, -2] * (height - box_h + 1)), height - box_h),
                    float((height - fb_h) // 2))
  left = torch.where(found, torch.minimum(torch.floor(u[:, -1] * (width - box_w + 1)), width - box_w),
                     float((width - fb_w) // 2))
  return top, left, box_h, box_w


def _resample(x, box, flip, out_size: int):
  """Each image's box resized to out_size x out_size (bilinear), mirrored where `flip`: one grid_sample."""
  n, _, height, width = x.shape
  top, left, box_h, box_w = box
  # align_corners=False: -1 and 1 are the outer edges of the image, so the box [left, left + w) maps to
  # [2 left / W - 1, 2 (left + w) / W - 1] and output pixel centres land at ssl_jax's sample positions.
  sx = torch.where(flip, -box_w / width, box_w / width)
  zeros = torch.zeros_like(sx)
  theta = torch.stack([torch.stack([sx, zeros, (2 * left + box_w) / width - 1], dim=1),
                       torch.stack([zeros, box_h / height, (2 * top + box_h) / height - 1], dim=1)], dim=1)
  grid = F.affine_grid(theta, (n, x.shape[1], out_size, out_size), align_corners=False)
  return F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)


def _blur_separable(x, weights):
  """Each image correlated with its own 1-D kernel (N, K) along H then W, reflect-padded: grouped convs."""
  n, c, height, width = x.shape
  k = weights.shape[1]
  kernel = weights.to(x.dtype).repeat_interleave(c, dim=0)  # (N * C, K): one kernel per image and channel
  y = x.reshape(1, n * c, height, width)
  y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode='reflect'), kernel.view(n * c, 1, k, 1), groups=n * c)
  y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode='reflect'), kernel.view(n * c, 1, 1, k), groups=n * c)
  return y.view(n, c, height, width)


def _gaussian_taps(sigma, kernel_size: int):
  """(N, K) normalised Gaussian weights for (N,) standard deviations."""
  taps = torch.arange(kernel_size, device=sigma.device, dtype=torch.float32) - kernel_size // 2
  w = torch.exp(-0.5 * torch.square(taps / sigma[:, None]))
  return w / w.sum(dim=1, keepdim=True)


def augment_batch(x, a, out_size: int):
  """One view of every image of x (N, C, H, W) float in [0, 1]: ssl_jax.data.augment's `_augment`, batched."""
  n, channels, height, width = x.shape

  def coin(prob):
    return torch.rand(n, device=x.device) < prob

  flip = coin(a.flip_prob) if a.flip_prob > 0 else torch.zeros(n, dtype=torch.bool, device=x.device)
  if a.crop:
    x = _resample(x, _crop_boxes(n, height, width, a.crop_scale, a.crop_ratio, x.device), flip, out_size)
  else:
    side = min(height, width)  # the central square, resized when it is not out_size already
    if side != out_size:
      box = tuple(torch.full((n,), float(v), device=x.device)
                  for v in ((height - side) // 2, (width - side) // 2, side, side))
      x = _resample(x, box, torch.zeros_like(flip), out_size)
    x = torch.where(_per_image(flip), x.flip(3), x)
  x = color_jitter(x, a)
  if channels == 3 and a.grayscale_prob > 0:
    x = torch.where(_per_image(coin(a.grayscale_prob)), _luma(x).expand_as(x), x)
  if a.blur_prob > 0:
    lo, hi = (float(v) for v in a.blur_sigma)
    sigma = lo + (hi - lo) * torch.rand(n, device=x.device)
    blurred = _blur_separable(x, _gaussian_taps(sigma, blur_kernel_size(a.blur_kernel_frac, out_size)))
    x = torch.where(_per_image(coin(a.blur_prob)), blurred, x)
  sigma_x = float(a.fixed_blur_sigma[1])
  size = fixed_blur_kernel_size(a.blur_kernel_frac, out_size)
  if sigma_x > 0 and size > 1:  # horizontal only (vertical refused in check_supported)
    taps = _gaussian_taps(torch.full((n,), sigma_x, device=x.device), size)
    padded = F.pad(x.reshape(1, -1, *x.shape[2:]), (size // 2, size // 2, 0, 0), mode='reflect')
    x = F.conv2d(padded, taps.repeat_interleave(channels, 0).view(-1, 1, 1, size),
                 groups=n * channels).view_as(x)
  if a.solarize_prob > 0:
    x = torch.where(_per_image(coin(a.solarize_prob)) & (x >= a.solarize_threshold), 1.0 - x, x)
  return x


def make_views(images, config, mean, std, channels_last: bool):
  """(V·B, C, S, S) normalised views, view-major, of uint8 (B, H, W, C) images (no gradient)."""
  x = images.permute(0, 3, 1, 2).float() / 255.0
  views = torch.cat([augment_batch(x, config.augment, config.data.image_size)
                     for _ in range(config.num_views)])
  views = (views - mean) / std
  return views.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# ----------------------------------------------------------------------------------------------- loss, optimizer


def nt_xent(z, batch_size: int, num_views: int, temperature: float, reduction: str):
  """SimCLR's loss on view-major projections (V·B, P): every other row in the softmax, the other views positive."""
  z = F.normalize(z, dim=1)
  rows = z.shape[0]
  eye = torch.eye(rows, dtype=torch.bool, device=z.device)
  log_prob = (z @ z.T / temperature).masked_fill(eye, float('-inf')).log_softmax(dim=1)
  ids = torch.arange(batch_size, device=z.device).repeat(num_views)
  positive = (ids[:, None] == ids[None, :]) & ~eye
  # Mean over each anchor's positives of log p (V = 2: its one partner); the diagonal's -inf is masked out.
  per_anchor = log_prob.masked_fill(~positive, 0.0).sum(dim=1) / positive.sum(dim=1).clamp(min=1)
  if reduction == 'log_of_mean':
    return -(torch.logsumexp(per_anchor, dim=0) - math.log(rows))
  return -per_anchor.mean() if num_views > 1 else z.sum() * 0.0  # one view: no positives, loss 0 (ssl_jax)


class Lars:
  """optax.lars as ssl_jax builds it: decay, trust ratio (masked), x -lr, momentum trace; multi-tensor ops."""

  def __init__(self, decayed: list, plain: list, *, lr: float, o):
    self.decayed, self.plain, self.lr, self.o = decayed, plain, lr, o
    self.traces = [torch.zeros_like(p) for p in decayed + plain]

  def zero_grad(self, set_to_none: bool = True):
    """Drops (or zeroes) the gradients, as torch.optim optimizers do."""
    for p in self.decayed + self.plain:
      p.grad = None if set_to_none else torch.zeros_like(p)

  def step(self):
    """One update of every parameter from its `.grad`."""
    with torch.no_grad():
      self._update(self.o)

  def _update(self, o):
    """optax.lars's chain: add_decayed_weights, masked scale_by_trust_ratio, scale by -lr, trace."""
    params = self.decayed + self.plain
    updates = list(torch._foreach_add([p.grad for p in self.decayed], self.decayed, alpha=o.weight_decay))
    if self.decayed:
      p_norm = torch.stack(torch._foreach_norm(self.decayed))
      u_norm = torch.stack(torch._foreach_norm(updates))
      # optax.scale_by_trust_ratio: tc |p| / |u|, and 1 where either norm is 0 (nothing to scale against).
      ratio = torch.where((p_norm > 0) & (u_norm > 0), o.trust_coefficient * p_norm / u_norm, 1.0)
      # One 0-dim ratio per tensor, kept on the device (a host copy would stall the queue mid-step); the
      # shapes differ, so this is one small kernel per tensor.
      torch._foreach_mul_(updates, list(ratio.unbind()))
    updates += [p.grad for p in self.plain]
    updates = torch._foreach_mul(updates, -self.lr)
    torch._foreach_mul_(self.traces, o.momentum)  # optax.trace: t = u + momentum t
    torch._foreach_add_(self.traces, updates)
    torch._foreach_add_(params, torch._foreach_add(updates, self.traces, alpha=o.momentum) if o.nesterov
                        else self.traces)


def build_optimizer(config, model):
  """The recipe's optimizer at its peak learning rate; biases and BN parameters (ndim < 2) excluded as ssl_jax."""
  from ssl_jax.optim import peak_learning_rate  # pylint: disable=g-import-not-at-top
  o = config.optimizer
  lr = peak_learning_rate(o, config.batch_size)
  params = list(model.parameters())
  decayed = [p for p in params if p.ndim > 1 or not o.exclude_bias_and_norm]
  plain = [p for p in params if not (p.ndim > 1 or not o.exclude_bias_and_norm)]
  if o.name == 'lars':
    return Lars(decayed, plain, lr=lr, o=o)
  groups = [{'params': decayed, 'weight_decay': o.weight_decay}, {'params': plain, 'weight_decay': 0.0}]
  if o.name == 'sgd':  # optax: decay, then trace(momentum), then -lr; torch.optim.SGD computes the same
    return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov, foreach=True)
  return torch.optim.AdamW(groups, lr=lr, betas=(o.b1, o.b2), eps=1e-8, foreach=True)


# ----------------------------------------------------------------------------------------------- PyTorch step


def _device(name: str):
  """The torch device for --device; UserError when cuda is asked for and absent."""
  if name == 'cuda' and not torch.cuda.is_available():
    raise UserError('--device=cuda but this PyTorch sees no CUDA device; use --device=cpu or a CUDA build')
  if name == 'auto':
    name = 'cuda' if torch.cuda.is_available() else 'cpu'
  return torch.device(name)


def _sync(device) -> None:
  """Waits for the device's queued work (CUDA kernels run asynchronously; the CPU is already done)."""
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def _global_norm(tensors):
  """The L2 norm of all the tensors together (optax.tree.norm), on the device."""
  return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def _forward(model, views, batch_size: int, num_views: int, bf16: bool, *, temperature: float, reduction: str,
             device_type: str):
  """(loss, projections): the encoder under bf16 autocast when `bf16`, the projector and the loss in float32
  (as ssl_jax's heads and loss); the part of the step that torch.compile compiles."""
  with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
    h = model.encoder(views)
  z = model.projector(h)
  return nt_xent(z, batch_size, num_views, temperature, reduction), z


def train_step(model, opt, images, config, ctx) -> dict:
  """Views, forward (the encoder under bf16 autocast when ctx['bf16']), loss, backward, optimizer: one SimCLR
  step; returns its monitors as device tensors (nothing is copied to the host)."""
  b, v = config.batch_size, config.num_views
  with torch.no_grad():
    views = make_views(images, config, ctx['mean'], ctx['std'], ctx['channels_last'])
  opt.zero_grad(set_to_none=True)
  loss, z = ctx['forward'](model, views, b, v, ctx['bf16'])
  loss.backward()
  grad_norm = _global_norm([p.grad for p in model.parameters() if p.grad is not None])
  opt.step()
  with torch.no_grad():
    zn = F.normalize(z.detach(), dim=1)
    metrics = {'loss': loss.detach(), 'grad_norm': grad_norm,
               'param_norm': _global_norm(list(model.parameters())),
               'z_std': zn[:b].std(dim=0, correction=0).mean()}
    if v > 1:
      metrics['pos_cosine'] = (zn[:b] * zn[b:2 * b]).sum(dim=1).mean()
  return metrics


def _setup(config, device):
  """(model, optimizer, images, ctx) for the PyTorch step on `device`."""
  torch.manual_seed(config.seed)
  shape = tuple(benchmark.synthetic_like(config).data.synthetic_shape)  # the recipe's (H, W, C), as ssl_jax's
  cuda = device.type == 'cuda'
  bf16 = config.model.dtype == 'bfloat16' or (config.model.dtype == 'auto' and cuda)
  if cuda:
    torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once, in the warm-up
    torch.set_float32_matmul_precision('high')  # TF32 where float32 remains, as XLA's default precision
  model = EncoderProjector(config, in_channels=shape[2]).to(device)
  if cuda:
    model = model.to(memory_format=torch.channels_last)
  mean, std = (_channel_constant(tuple(s), device) for s in data.image_stats('synthetic', shape[2]))
  images = torch.randint(0, 256, (config.batch_size, *shape), dtype=torch.uint8, device=device)
  forward = functools.partial(_forward, temperature=float(config.loss.temperature),
                              reduction=str(config.loss.reduction), device_type=device.type)
  ctx = {'device': device, 'bf16': bf16, 'channels_last': cuda, 'mean': mean, 'std': std, 'forward': forward,
         'execution': 'eager'}
  return model, build_optimizer(config, model), images, ctx


def _timed(model, opt, images, config, ctx, steps: int) -> tuple[list, float, dict]:
  """(seconds of each step after the warm-up, the first step's seconds, the last step's monitors)."""
  times = []
  for _ in range(benchmark.WARMUP_STEPS + steps):
    _sync(ctx['device'])
    started = time.perf_counter()
    metrics = train_step(model, opt, images, config, ctx)
    _sync(ctx['device'])
    times.append(time.perf_counter() - started)
  return times[benchmark.WARMUP_STEPS:], times[0], metrics


def run_torch(config, *, steps: int, device, compile_model: bool) -> dict:
  """Times the PyTorch step as ssl_jax.benchmark times its own: 2 warm-up steps, median of `steps` steps.

  With `compile_model`, the forward pass and loss run under torch.compile; when that fails (no compiler on
  the machine, an unsupported op), the step runs eagerly and the notes say why.
  """
  model, opt, images, ctx = _setup(config, device)
  notes = []
  if compile_model:
    try:
      ctx.update(forward=torch.compile(ctx['forward']), execution='torch.compile')
      times, first_s, metrics = _timed(model, opt, images, config, ctx, steps)
    except Exception as e:  # pylint: disable=broad-except  (any failure of the compiler: eager instead)
      notes.append(f'torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); eager')
      model, opt, images, ctx = _setup(config, device)
  if ctx['execution'] == 'eager':
    times, first_s, metrics = _timed(model, opt, images, config, ctx, steps)
  loss = float(metrics['loss'])
  if not math.isfinite(loss):
    raise benchmark.TorchFailed(f'the PyTorch step produced a non-finite loss ({loss})')
  step_s = statistics.median(times)
  views = config.num_views
  cuda = device.type == 'cuda'
  how = {'lars': 'our multi-tensor LARS, as optax.lars'}.get(config.optimizer.name,
                                                             f'torch.optim, as optax.{config.optimizer.name}')
  notes.append(f'PyTorch: {config.optimizer.name} ({how}) at the peak learning rate; ssl_jax: one XLA program '
               'with its learning-rate schedule. Every difference: the docstring of ssl_jax/torch_simclr.py.')
  return {'torch_version': torch.__version__, 'device': device.type,
          'device_name': torch.cuda.get_device_name(device) if cuda else f'cpu ({torch.get_num_threads()} threads)',
          'dtype': 'bf16' if ctx['bf16'] else 'float32', 'channels_last': ctx['channels_last'],
          'execution': ctx['execution'], 'batch_size': config.batch_size, 'views_per_example': views,
          'compile_s': first_s, 'step_s': step_s, 'views_per_s': config.batch_size * views / step_s,
          'images_per_s': config.batch_size / step_s, 'last_loss': loss,
          'params': sum(p.numel() for p in model.parameters()),
          'peak_bytes': torch.cuda.max_memory_allocated(device) if cuda else None, 'notes': notes}


def main(argv=None) -> int:
  """`python -m ssl_jax.torch_simclr --config SPEC [--config.a.b=V ...] --steps N --out FILE.json`: the child
  process of `ssl_jax.benchmark --torch`; returns the exit code."""
  parser = argparse.ArgumentParser(prog='python -m ssl_jax.torch_simclr', description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True)
  parser.add_argument('--steps', type=int, required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--device', default='auto', choices=('auto', 'cuda', 'cpu'))
  args, flags = parser.parse_known_args(argv)
  try:
    config = recipes.load_with(args.config, recipes.split_overrides(flags)['config'])
    config_schema.validate(config)
    check_supported(config)
    if torch is None:
      raise UserError('PyTorch is not installed; pip install torch (optional: only --torch needs it)')
    device = _device(args.device)
    results = run_torch(config, steps=args.steps, device=device, compile_model=device.type == 'cuda')
  except (UserError, benchmark.TorchFailed) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2 if isinstance(e, UserError) else 1
  pathlib.Path(args.out).write_text(json.dumps(results, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
