"""A trained encoder for PyTorch: `python -m ssl_jax.export WORKDIR_OR_STEP --out FILE [--format F] [--heads]`.

`--format safetensors` (the default; written without PyTorch) or `torch` (`torch.save` of
{'state_dict': ..., 'metadata': ...}; needs PyTorch). WORKDIR_OR_STEP is a workdir (its newest checkpoint) or
a `<workdir>/checkpoints/<step>` directory, relative, absolute or starting with `~`.

ResNets are written in torchvision's `state_dict` layout, float32 (params are float32 whatever the compute
dtype was), so `torchvision.models.resnet18/34/50` loads them with `strict=True` once `model.fc =
torch.nn.Identity()` (the encoder has no classifier; its output is the pooled feature `load_encoder` embeds):

    conv1.weight                                              every conv kernel OIHW: (out, in, kH, kW)
    bn1.{weight, bias, running_mean, running_var, num_batches_tracked}
    layer{s}.{b}.conv{1,2}.weight, layer{s}.{b}.bn{1,2}.*         BasicBlock (ResNet-18/34/20/32)
    layer{s}.{b}.conv{1,2,3}.weight, layer{s}.{b}.bn{1,2,3}.*     Bottleneck (ResNet-50; stride on conv2)
    layer{s}.0.downsample.0.weight, layer{s}.0.downsample.1.*      1x1 projection shortcut and its BN

What torchvision users replace for the other variants (each recorded in the metadata):
  * the CIFAR stem: `model.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)` and
    `model.maxpool = nn.Identity()`; grey images (in_channels 1) need a 1-channel conv1 with either stem.
  * fewer stages (S3L's `model.num_stages`): the missing `layer{s}` have no keys, so `model.layer4 =
    nn.Identity()` (and so on). ResNet-20/32 (3 stages of 16/32/64) follow the same layout; torchvision has no
    constructor for them.
  * `model.width` != 1 scales every channel count: the same keys, with shapes torchvision's constructors do
    not build (a torchvision-layout ResNet with `stage_widths` as its planes loads them).
BatchNorm: eps 1e-5 as PyTorch's; running_var is the running mean of the biased batch variance (Flax's), used
identically in eval mode; PyTorch's momentum is 1 - `model.bn_momentum`; num_batches_tracked is the step.
Only the backbone is exported: not SelfCon's sub-network exit, nor the momentum target of BYOL/MoCo.

`--heads` adds each MLP head (projector, predictor, rotation_head, ...) under its own name as a
`torch.nn.Sequential`: per hidden layer Linear (no bias when a BatchNorm1d follows), BatchNorm1d, activation,
then the last Linear and, with `last_bn`, BatchNorm1d(affine=False). Activations hold no weights, so their
indices have no keys: `projector.0.weight` (out, in), `projector.1.running_mean`, `projector.3.weight`.

Metadata (the safetensors header's `__metadata__`, the torch file's 'metadata'; all strings, lists as JSON):
ssl_jax_version, method, step, config (JSON), backbone, stem, block, stage_blocks, stage_widths, in_channels,
feature_dim, resolution, mean, std, compute_dtype, heads, layout. The model's input is an image in [0, 1],
centre-cropped to a square and resized to resolution x resolution, then (x - mean) / std per channel, NCHW.

Bad input (no checkpoint, an unknown format, an unwritable --out, a backbone without a converter, --format
torch without PyTorch) is one line and exit code 2.
"""
import argparse
import json
import os
import pathlib
import struct
import sys

import numpy as np

from ssl_jax import paths
from ssl_jax.errors import UserError

FORMATS = ('safetensors', 'torch')
_USAGE = 'usage: python -m ssl_jax.export WORKDIR_OR_STEP --out FILE [--format safetensors|torch] [--heads]'
_NO_TORCH = ('--format torch needs PyTorch, which is not installed; pip install torch, or use --format '
             'safetensors (no PyTorch needed)')


def _conv(conv) -> np.ndarray:
  """A Flax conv kernel (kH, kW, I, O) as PyTorch's (O, I, kH, kW)."""
  return np.asarray(conv.kernel[...], np.float32).transpose(3, 2, 0, 1)


def _batch_norm(prefix: str, bn, step: int) -> dict:
  """A BatchNorm as torch.nn.BatchNorm{1,2}d's state: weight/bias (if affine), running stats, batch count."""
  out = {}
  if bn.scale is not None:
    out[f'{prefix}.weight'] = bn.scale[...]
  if bn.bias is not None:
    out[f'{prefix}.bias'] = bn.bias[...]
  out[f'{prefix}.running_mean'] = bn.mean[...]
  out[f'{prefix}.running_var'] = bn.var[...]
  out[f'{prefix}.num_batches_tracked'] = np.asarray(step, np.int64)
  return out


def resnet_state_dict(encoder, step: int) -> dict:
  """ssl_jax.models.ResNet -> torchvision ResNet `state_dict` (without `fc`), numpy arrays."""
  out = {'conv1.weight': _conv(encoder.stem_conv), **_batch_norm('bn1', encoder.stem_bn, step)}
  for s, stage in enumerate(encoder.stages, start=1):
    for b, block in enumerate(stage):
      prefix = f'layer{s}.{b}'
      for i in (1, 2, 3):
        if hasattr(block, f'conv{i}'):
          out[f'{prefix}.conv{i}.weight'] = _conv(getattr(block, f'conv{i}'))
          out.update(_batch_norm(f'{prefix}.bn{i}', getattr(block, f'bn{i}'), step))
      if block.shortcut.project:
        out[f'{prefix}.downsample.0.weight'] = _conv(block.shortcut.conv)
        out.update(_batch_norm(f'{prefix}.downsample.1', block.shortcut.bn, step))
  return out


def resnet_metadata(encoder) -> dict:
  """What builds the matching torchvision-layout ResNet: block kind, blocks and planes per kept stage."""
  return {'stem': 'imagenet' if encoder.max_pool else 'cifar', 'layout': 'torchvision',
          'block': encoder.block_kind, 'stage_blocks': json.dumps(list(encoder.stage_blocks)),
          'stage_widths': json.dumps(list(encoder.stage_widths))}


def head_state_dict(name: str, head, step: int) -> dict:
  """An ssl_jax.models.MLPHead as a torch.nn.Sequential's `state_dict`, keys prefixed with `name`."""
  out, index = {}, 0
  for linear, bn in zip(head.hidden, head.hidden_bn):
    out.update(_linear(f'{name}.{index}', linear))
    index += 1
    if bn is not None:
      out.update(_batch_norm(f'{name}.{index}', bn, step))
      index += 1
    index += 1  # the activation
  out.update(_linear(f'{name}.{index}', head.out))
  if head.out_bn is not None:
    out.update(_batch_norm(f'{name}.{index + 1}', head.out_bn, step))
  return out


def _linear(prefix: str, linear) -> dict:
  out = {f'{prefix}.weight': np.asarray(linear.kernel[...]).T}
  if linear.bias is not None:
    out[f'{prefix}.bias'] = linear.bias[...]
  return out


def _converters() -> dict:
  """Backbone class -> (state_dict(encoder, step), metadata(encoder)): add another backbone here."""
  from ssl_jax.models import ResNet  # pylint: disable=g-import-not-at-top  (flax: only once a file is read)
  return {ResNet: (resnet_state_dict, resnet_metadata)}


def _heads(model) -> dict:
  """{name: MLPHead} of the heads outside the encoder, named by their attribute (online.projector ->
  projector)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from ssl_jax.models import MLPHead  # pylint: disable=g-import-not-at-top
  found = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, MLPHead) and 'encoder' not in path:
      found[str(path[-1])] = node
  return found


def convert(config, model, step: int, *, heads: bool = False) -> tuple[dict, dict]:
  """The state_dict (numpy arrays, torchvision key names) and the metadata (strings) of a model.

  Args:
    config: the run's ConfigDict.
    model: the method's nnx model (`encoder.build_from_checkpoint`).
    step: the checkpoint's step.
    heads: also the MLP heads, each under its own name.

  Returns:
    (tensors, metadata).
  """
  import ssl_jax  # pylint: disable=g-import-not-at-top
  from ssl_jax import data  # pylint: disable=g-import-not-at-top
  encoder = model.encoder
  converter = _converters().get(type(encoder))
  if converter is None:
    raise UserError(f'export of the {config.model.name} backbone ({type(encoder).__name__}) is not supported '
                    'yet; ResNets are; use ssl_jax.load_encoder in JAX meanwhile')
  to_state_dict, to_metadata = converter
  tensors = to_state_dict(encoder, step)
  found = _heads(model) if heads else {}
  for name, head in found.items():
    tensors.update(head_state_dict(name, head, step))
  in_channels = int(encoder.stem_conv.kernel.shape[-2])
  mean, std = data.image_stats(config.data.name, in_channels)
  metadata = {
      'format': 'pt',  # safetensors' tag for PyTorch-layout tensors
      'ssl_jax_version': ssl_jax.__version__, 'method': config.method, 'step': str(step),
      'config': config.to_json(), 'backbone': config.model.name, 'in_channels': str(in_channels),
      'feature_dim': str(encoder.out_dim), 'resolution': str(config.data.image_size),
      'mean': json.dumps(list(mean)), 'std': json.dumps(list(std)), 'compute_dtype': config.model.dtype,
      'heads': json.dumps(sorted(found)), **to_metadata(encoder)}
  return {k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata


_SAFETENSORS_DTYPES = {np.dtype(np.float32): 'F32', np.dtype(np.int64): 'I64'}


def safetensors_bytes(tensors: dict, metadata: dict) -> bytes:
  """The safetensors file of `tensors` (numpy float32/int64) and a string `metadata` map.

  The format: an 8-byte little-endian header length N, N bytes of JSON ({name: {dtype, shape,
  data_offsets: [begin, end)} relative to the data, plus '__metadata__'}, space-padded to 8-byte alignment),
  then the tensors' little-endian bytes back to back.
  """
  header, chunks, offset = {'__metadata__': metadata}, [], 0
  for name in sorted(tensors):
    array = tensors[name]
    raw = array.astype(array.dtype.newbyteorder('<')).tobytes()
    header[name] = {'dtype': _SAFETENSORS_DTYPES[array.dtype], 'shape': list(array.shape),
                    'data_offsets': [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  text = json.dumps(header, separators=(',', ':')).encode()
  text += b' ' * (-len(text) % 8)
  return struct.pack('<Q', len(text)) + text + b''.join(chunks)


def _torch_bytes(tensors: dict, metadata: dict) -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  torch.save({'state_dict': {k: torch.from_numpy(v.copy()) for k, v in tensors.items()},
              'metadata': metadata}, buffer)
  return buffer.getvalue()


def _check_out(out: pathlib.Path) -> None:
  if out.is_dir():
    raise UserError(f'--out {out} is a directory; pass a file name such as {out / "encoder.safetensors"}')
  if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
    raise UserError(f'--out {out}: cannot write into {out.parent} (missing or not writable); pass a file in '
                    'a writable directory')


def _write(out: pathlib.Path, content: bytes) -> None:
  """Writes through a temporary file in the same folder, so an interrupted export leaves no partial file."""
  partial = out.with_name(f'.{out.name}.partial')
  try:
    partial.write_bytes(content)
    os.replace(partial, out)
  except OSError as e:
    partial.unlink(missing_ok=True)
    raise UserError(f'cannot write {out} ({e.strerror}); pass another --out') from None


def export(path, out, *, format: str = 'safetensors',  # pylint: disable=redefined-builtin
           heads: bool = False) -> dict:
  """Writes a checkpoint's encoder (and optionally heads) in PyTorch layout; returns the metadata.

  Args:
    path: a workdir (its newest checkpoint) or a `<workdir>/checkpoints/<step>` directory; relative or `~`.
    out: the file to write (replaced if it exists).
    format: 'safetensors' (no PyTorch needed) or 'torch' (torch.save; needs PyTorch).
    heads: also the MLP heads (projector, predictor, ...), each under its own name.
  """
  if format not in FORMATS:
    raise UserError(f'--format {format!r} is unknown; use one of {", ".join(FORMATS)}')
  if format == 'torch':
    try:
      import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      raise UserError(_NO_TORCH) from None
  out = paths.user_path(out)
  _check_out(out)
  from ssl_jax import encoder  # pylint: disable=g-import-not-at-top  (jax, flax, orbax)
  # The newest step of a workdir, explicitly: an unreadable one is an error here, not a silent older export.
  step_dir = encoder._step_dir(paths.user_path(path))  # pylint: disable=protected-access
  config, model = encoder.build_from_checkpoint(step_dir)
  tensors, metadata = convert(config, model, int(step_dir.name), heads=heads)
  write = safetensors_bytes if format == 'safetensors' else _torch_bytes
  _write(out, write(tensors, metadata))
  return metadata


class _Parser(argparse.ArgumentParser):
  """argparse that raises UserError (one line, exit 2) instead of printing its usage and exiting."""

  def error(self, message):
    raise UserError(f'{message}; {_USAGE}')


def main(argv=None) -> int:
  """The command line; returns the exit code."""
  parser = _Parser(prog='python -m ssl_jax.export', description=__doc__.splitlines()[0])
  parser.add_argument('path', metavar='WORKDIR_OR_STEP', help='a workdir or <workdir>/checkpoints/<step>')
  parser.add_argument('--out', required=True, help='file to write')
  parser.add_argument('--format', default='safetensors', help='safetensors (default) or torch')
  parser.add_argument('--heads', action='store_true', help='also the projector/predictor heads')
  try:
    args = parser.parse_args(argv)
    metadata = export(args.path, args.out, format=args.format, heads=args.heads)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  heads = ', '.join(json.loads(metadata['heads'])) or 'none'
  print(f'wrote {args.out}: {metadata["backbone"]} ({metadata["stem"]} stem) of step {metadata["step"]}, '
        f'{metadata["method"]}, {metadata["layout"]} layout; heads: {heads}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
