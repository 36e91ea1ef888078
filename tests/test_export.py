"""ssl_jax.export: the exported encoder is the same encoder in PyTorch (torchvision's module layout).

PyTorch and safetensors are imported unconditionally: without them this file fails instead of being skipped
(launch/test.sh installs both, CPU build).
"""
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import ml_collections
import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch
from flax import nnx
from torch import nn

import ssl_jax
from configs import byol_cifar10
from ssl_jax import checkpoint, export, methods, train
from ssl_jax.encoder import build_from_checkpoint
from ssl_jax.errors import UserError

import runs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _env(*path):
  """The CLI's environment: `path` first on PYTHONPATH, and the suite's compilation cache, which holds the
  small computations of building the model (they dominate the command's time otherwise)."""
  return {**os.environ, 'PYTHONPATH': os.pathsep.join([*map(str, path), str(ROOT)]),
          'JAX_COMPILATION_CACHE_DIR': str(jax.config.jax_compilation_cache_dir),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


# ----------------------------------------------------------------------- torchvision's ResNet, written out
class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
  """torchvision.models.ResNet's attribute names and forward, with any widths and number of stages, `fc`
  replaced by Identity and the CIFAR stem replaced as torchvision users do (3x3/1 conv1, no max-pool)."""

  def __init__(self, block, layers, widths, *, stem, in_channels):
    super().__init__()
    self.inplanes = widths[0]
    kernel, stride, pad = (7, 2, 3) if stem == 'imagenet' else (3, 1, 1)
    self.conv1 = nn.Conv2d(in_channels, widths[0], kernel, stride, pad, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == 'imagenet' else nn.Identity()
    self.stages = len(layers)
    for i, (blocks, planes) in enumerate(zip(layers, widths), start=1):
      setattr(self, f'layer{i}', self._make_layer(block, planes, blocks, 1 if i == 1 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Identity()

  def _make_layer(self, block, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes, 1, None) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(1, self.stages + 1):
      x = getattr(self, f'layer{i}')(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))


# torchvision's resnet18 and resnet50.
_TORCH_ARCHS = {'resnet18': (BasicBlock, [2, 2, 2, 2]), 'resnet50': (Bottleneck, [3, 4, 6, 3])}


def torch_resnet(metadata: dict) -> nn.Module:
  """The torchvision-layout ResNet of the metadata's backbone, its widths and stages, in eval mode."""
  block, layers = _TORCH_ARCHS[metadata['backbone']]
  planes = json.loads(metadata['stage_widths'])
  assert json.loads(metadata['stage_blocks']) == layers[:len(planes)]
  assert metadata['block'] == {BasicBlock: 'basic', Bottleneck: 'bottleneck'}[block]
  return TorchvisionResNet(block, layers[:len(planes)], planes, stem=metadata['stem'],
                           in_channels=int(metadata['in_channels'])).eval()


def torch_head(head_config: dict, in_dim: int) -> nn.Sequential:
  """An ssl_jax MLPHead's config as the nn.Sequential its export loads into (ReLU, BN on hidden layers)."""
  layers, dim = [], in_dim
  for _ in range(head_config['num_layers'] - 1):
    layers += [nn.Linear(dim, head_config['hidden_dim'], bias=False), nn.BatchNorm1d(head_config['hidden_dim']),
               nn.ReLU()]
    dim = head_config['hidden_dim']
  layers.append(nn.Linear(dim, head_config['out_dim'], bias=not head_config['last_bn']))
  if head_config['last_bn']:
    layers.append(nn.BatchNorm1d(head_config['out_dim'], affine=False))
  return nn.Sequential(*layers).eval()


# ----------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A trained BasicBlock ResNet with the CIFAR stem: the encoder API tests' run (same compiled step)."""
  path = tmp_path_factory.mktemp('export') / 'trained'
  train.train_and_evaluate(runs.tiny_synthetic(), path)
  return path


def _built(workdir: pathlib.Path, config, step: int = 5) -> pathlib.Path:
  """A checkpoint written by the trainer's Checkpointer for `config`'s model, its params and BatchNorm
  statistics randomised (no training: nothing to compile but the forward pass)."""
  model = methods.get_method(config).build_model(config, in_channels=3, rngs=nnx.Rngs(0))
  params, batch_stats = nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32), params)
  batch_stats = jax.tree_util.tree_map_with_path(
      lambda path, s: (rng.uniform(0.5, 2.0, s.shape) if 'var' in jax.tree_util.keystr(path)
                       else 0.2 * rng.standard_normal(s.shape)).astype(np.float32), batch_stats)
  (workdir / 'checkpoints').mkdir(parents=True)
  ckpt = checkpoint.Checkpointer(workdir, keep=1)
  ckpt.save(step, {'params': params, 'batch_stats': batch_stats}, config)
  ckpt.close()
  return workdir


@pytest.fixture(scope='module')
def bottleneck(tmp_path_factory):
  """BYOL (projector and predictor) on a width-1/16 ResNet-50 with the ImageNet stem, all four stages, at
  32 px (its last stage 1x1); the projector ends with an affine-free BatchNorm."""
  c = byol_cifar10.get_config('runlocal,synthetic')
  c.model.name, c.model.stem, c.model.width = 'resnet50', 'imagenet', 1 / 16
  c.data.image_size, c.model.head.last_bn = 32, True
  return _built(tmp_path_factory.mktemp('export') / 'bottleneck', c)


@pytest.fixture(scope='module')
def two_stages(tmp_path_factory):
  """S3L's kind of network: a ResNet-18 that keeps its first two stages."""
  c = runs.tiny_synthetic()
  c.model.stem, c.model.num_stages = 'imagenet', 2
  return _built(tmp_path_factory.mktemp('export') / 'two_stages', c)


def _images(n, size=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), np.uint8)


def _close(got, want):
  """Equal within 1e-4 relative to the features' scale."""
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _torch_input(images, metadata):
  mean, std = (np.asarray(json.loads(metadata[k]), np.float32) for k in ('mean', 'std'))
  return torch.from_numpy(((images / np.float32(255) - mean) / std).transpose(0, 3, 1, 2).copy())


# ----------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize('run', ['trained', 'bottleneck', 'two_stages'])
def test_pytorch_resnet_with_torchvision_layout_gives_the_same_features(run, request, tmp_path):
  workdir = request.getfixturevalue(run)
  out = tmp_path / 'encoder.safetensors'
  metadata = export.export(workdir, out, heads=True)
  tensors = safetensors.torch.load_file(out)
  net = torch_resnet(metadata)
  net.load_state_dict({k: v for k, v in tensors.items() if k.split('.')[0] not in ('projector', 'predictor')},
                      strict=True)
  encoder = ssl_jax.load_encoder(workdir)
  x = _images(6, size=int(metadata['resolution']))
  with torch.no_grad():
    got = net(_torch_input(x, metadata)).numpy()
  want = encoder.embed(x)
  assert got.shape == want.shape == (6, int(metadata['feature_dim']))
  _close(got, want)
  # The heads: each loads into its nn.Sequential and maps the features as the JAX head does.
  model = nnx.merge(encoder.graphdef, encoder.params, encoder.batch_stats)
  config = json.loads(metadata['config'])['model']
  heads = {'projector': config['head']} | ({'predictor': config['predictor']} if 'predictor' in json.loads(
      metadata['heads']) else {})
  assert json.loads(metadata['heads']) == sorted(heads)
  jax_heads = export._heads(model)  # pylint: disable=protected-access
  h = want
  for name, head_config in heads.items():
    seq = torch_head(head_config, h.shape[1])
    seq.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f'{name}.')},
                        strict=True)
    with torch.no_grad():
      got = seq(torch.from_numpy(np.array(h))).numpy()
    h = np.asarray(jax_heads[name](h, train=False))
    _close(got, h)


def test_metadata_and_torch_format(trained, tmp_path):
  metadata = export.export(trained, tmp_path / 'encoder.pt', format='torch')
  saved = torch.load(tmp_path / 'encoder.pt', weights_only=True)
  config = ssl_jax.load_encoder(trained).config
  assert saved['metadata'] == metadata
  assert metadata['ssl_jax_version'] == ssl_jax.__version__ and metadata['method'] == 'simclr'
  assert metadata['step'] == '3' and metadata['backbone'] == 'resnet18' and metadata['stem'] == 'cifar'
  assert ml_collections.ConfigDict(json.loads(metadata['config'])) == config
  assert metadata['resolution'] == '16' and metadata['heads'] == '[]'
  assert len(json.loads(metadata['mean'])) == len(json.loads(metadata['std'])) == 3
  state = saved['state_dict']
  assert 'projector.0.weight' not in state and 'fc.weight' not in state
  assert state['conv1.weight'].shape == (8, 3, 3, 3)                   # OIHW, the CIFAR stem
  assert state['layer2.0.downsample.0.weight'].shape == (16, 8, 1, 1)
  assert state['bn1.num_batches_tracked'].dtype == torch.int64
  # Its running statistics are the checkpoint's, not a fresh BatchNorm's.
  assert not torch.allclose(state['bn1.running_var'], torch.ones(8))


def test_safetensors_cli_needs_no_pytorch_and_takes_relative_paths(trained, tmp_path):
  (tmp_path / 'torch.py').write_text("raise ImportError('PyTorch blocked by the test')\n")
  (tmp_path / 'out').mkdir()
  (tmp_path / 'run').symlink_to(trained)
  proc = subprocess.run([sys.executable, '-m', 'ssl_jax.export', 'run/checkpoints/3', '--out',
                         'out/encoder.safetensors'], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                        env=_env(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'wrote out/encoder.safetensors: resnet18 (cifar stem) of step 3' in proc.stdout
  path = tmp_path / 'out' / 'encoder.safetensors'
  with safetensors.safe_open(path, 'np') as f:
    metadata = f.metadata()
  loaded = safetensors.numpy.load_file(path)
  config, model = build_from_checkpoint(trained)
  tensors, want = export.convert(config, model, 3)
  assert metadata == want and metadata['step'] == '3'
  assert sorted(loaded) == sorted(tensors)
  for key, value in tensors.items():
    assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
    np.testing.assert_array_equal(loaded[key], value)


def _cli(tmp_path, *args, block_torch=False):
  if block_torch:
    (tmp_path / 'torch.py').write_text("raise ImportError('PyTorch blocked by the test')\n")
  return subprocess.run([sys.executable, '-m', 'ssl_jax.export', *args], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300, env=_env(*[tmp_path] * block_torch))


@pytest.mark.parametrize('args, block_torch, message', [
    (['empty', '--out', 'x.safetensors'], False, 'no checkpoint in'),
    (['RUN', '--out', 'x.onnx', '--format', 'onnx'], False, "--format 'onnx' is unknown"),
    (['RUN', '--out', 'missing/x.safetensors'], False, 'cannot write into'),
    (['RUN', '--out', 'empty'], False, 'is a directory'),
    (['RUN', '--out', 'x.pt', '--format', 'torch'], True, 'pip install torch'),
    (['RUN'], False, 'required: --out'),
])
def test_bad_input_is_one_line_and_exit_2(trained, tmp_path, args, block_torch, message):
  (tmp_path / 'empty').mkdir()
  proc = _cli(tmp_path, *[str(trained) if a == 'RUN' else a for a in args], block_torch=block_torch)
  lines = proc.stderr.splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
  assert message in lines[0]
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['empty'] + ['torch.py'] * block_torch)


def test_another_backbone_is_not_supported_yet():
  config = ml_collections.ConfigDict({'model': {'name': 'vit_tiny'}})
  model = types.SimpleNamespace(encoder=object())
  with pytest.raises(UserError, match='export of the vit_tiny backbone .* is not supported yet'):
    export.convert(config, model, 1)
