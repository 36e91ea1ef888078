"""Tests of the model zoo: ResNet shapes and sizes, BatchNorm against numpy, the functional NNX round trip."""
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import models, sharding
from ssl_jax.errors import UserError
from ssl_jax.models import BatchNorm, MLPHead, ResNet, create_encoder
from ssl_jax.models.resnet import Bottleneck

import runs

# Widths giving an 8-channel first stage, so every network is tiny.
_WIDTH = {'resnet18': 0.125, 'resnet34': 0.125, 'resnet50': 0.125, 'resnet20': 0.5, 'resnet32': 0.5}
# Expected (stage channels, blocks per stage) at those widths, written out by hand from the papers.
_EXPECTED = {
    'resnet18': ((8, 16, 32, 64), (2, 2, 2, 2)),
    'resnet34': ((8, 16, 32, 64), (3, 4, 6, 3)),
    'resnet50': ((32, 64, 128, 256), (3, 4, 6, 3)),
    'resnet20': ((8, 16, 32), (3, 3, 3)),
    'resnet32': ((8, 16, 32), (5, 5, 5)),
}


def _abstract_encoder(name, **kwargs):
  """The encoder with shape-only parameters: building it costs no compute."""
  return nnx.eval_shape(lambda: create_encoder(name, rngs=nnx.Rngs(0), **kwargs))


def _forward_shapes(model, side, batch=2, channels=3):
  """Shapes and dtypes of (features, stages) for a (batch, side, side, channels) input, without computing."""
  graphdef, state = nnx.split(model)

  def forward(state, x):
    return nnx.merge(graphdef, state)(x, train=True, return_stages=True)

  return jax.eval_shape(forward, state, jax.ShapeDtypeStruct((batch, side, side, channels), jnp.float32))


def _num_params(model) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ------------------------------------------------------------------------------------------------- ResNet
@pytest.mark.parametrize('name,stem', [
    ('resnet18', 'imagenet'), ('resnet18', 'cifar'), ('resnet34', 'imagenet'), ('resnet50', 'imagenet'),
    ('resnet50', 'cifar'), ('resnet20', 'cifar'), ('resnet32', 'cifar')])
def test_resnet_shapes(name, stem):
  model = _abstract_encoder(name, stem=stem, width=_WIDTH[name])
  dims, blocks = _EXPECTED[name]
  assert model.stage_dims == dims and model.out_dim == dims[-1]
  assert [len(stage) for stage in model.stages] == list(blocks)
  features, stages = _forward_shapes(model, 32)
  assert features.shape == (2, dims[-1]) and features.dtype == jnp.float32
  side = 32 // (4 if stem == 'imagenet' else 1)
  assert [s.shape for s in stages] == [(2, side // 2**i, side // 2**i, d) for i, d in enumerate(dims)]


@pytest.mark.parametrize('name,stem,num_stages,expected_min', [
    ('resnet18', 'imagenet', None, 32), ('resnet18', 'imagenet', 3, 16), ('resnet18', 'cifar', None, 8),
    ('resnet50', 'cifar', 2, 2), ('resnet20', 'cifar', None, 4), ('resnet32', 'cifar', 1, 1)])
def test_num_stages_and_min_input_size(name, stem, num_stages, expected_min):
  model = _abstract_encoder(name, stem=stem, width=_WIDTH[name], num_stages=num_stages)
  kept = num_stages or len(_EXPECTED[name][0])
  assert model.stage_dims == _EXPECTED[name][0][:kept] and model.out_dim == model.stage_dims[-1]
  assert len(model.stages) == kept
  assert model.min_input_size == expected_min
  # At the minimum the last stage is exactly 1x1; at twice the minimum it is 2x2 (so it follows the strides).
  for scale in (1, 2):
    features, stages = _forward_shapes(model, scale * expected_min)
    assert len(stages) == kept and stages[-1].shape[1:3] == (scale, scale)
    assert features.shape == (2, model.out_dim)


@pytest.mark.parametrize('name,expected', [('resnet18', 11_176_512), ('resnet34', 21_284_672),
                                           ('resnet50', 23_508_032)])
def test_parameter_count_matches_torchvision_without_fc(name, expected):
  # torchvision counts with the 1000-class fc: 11,689,512 / 21,797,672 / 25,557,032.
  assert _num_params(_abstract_encoder(name, stem='imagenet')) == expected


def test_truncation_drops_parameters():
  full = _num_params(_abstract_encoder('resnet18'))
  # Stage 4 of ResNet-18: 3x3 256->512, 3x3 512->512, 1x1 256->512 projection, two 3x3 512->512, 5 BNs.
  stage4 = 9 * (256 * 512 + 3 * 512 * 512) + 256 * 512 + 5 * 2 * 512
  assert _num_params(_abstract_encoder('resnet18', num_stages=3)) == full - stage4


def test_bfloat16_compute_keeps_float32_params_and_features():
  model = _abstract_encoder('resnet18', stem='cifar', width=0.125, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
  features, stages = _forward_shapes(model, 16)
  assert features.dtype == jnp.float32
  assert all(s.dtype == jnp.bfloat16 for s in stages)


def test_conv_init_is_kaiming_fan_out():
  model = create_encoder('resnet20', width=4.0, num_stages=1, rngs=nnx.Rngs(0))   # 64-channel stage
  kernel = np.asarray(model.stages[0][0].conv2.kernel[...])                      # (3, 3, 64, 64)
  np.testing.assert_allclose(kernel.std(), math.sqrt(2 / (9 * 64)), rtol=0.03)
  assert abs(kernel.mean()) < 0.003
  assert np.all(np.asarray(model.stages[0][0].bn2.scale[...]) == 1.0)



def test_compiled_build_initialises_as_the_eager_one_and_places_the_state():
  build = lambda: create_encoder('resnet20', width=0.5, num_stages=2, rngs=nnx.Rngs(3))
  replicated = sharding.replicated(sharding.make_mesh(jax.devices()))
  compiled, eager = models.build_compiled(build, replicated), build()
  for a, b in zip(jax.tree.leaves(nnx.state(compiled)), jax.tree.leaves(nnx.state(eager))):
    assert a.sharding == replicated
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert type(compiled) is type(eager) and compiled.out_dim == eager.out_dim

def test_zero_init_residual_zeroes_the_last_bn_scale_of_each_block():
  basic = ResNet(depth=20, stem='cifar', width=4.0, num_stages=1, zero_init_residual=True, rngs=nnx.Rngs(0))
  assert all(np.all(np.asarray(b.bn2.scale[...]) == 0.0) for b in basic.stages[0])
  assert all(np.all(np.asarray(b.bn1.scale[...]) == 1.0) for b in basic.stages[0])
  bottleneck = Bottleneck(8, 2, 1, norm=BatchNorm, zero_init_residual=True, dtype=jnp.float32,
                          rngs=nnx.Rngs(0))
  assert np.all(np.asarray(bottleneck.bn3.scale[...]) == 0.0)
  assert np.all(np.asarray(bottleneck.bn2.scale[...]) == 1.0)


def _model_config(**model):
  """The tiny SimCLR recipe with `model` fields set."""
  c = runs.tiny_synthetic()
  c.model.update(model)
  return c


@pytest.mark.parametrize('model, match', [
    ({'name': 'resnet101'}, 'resnet18.*resnet20.*resnet32.*resnet34.*resnet50'),   # the schema's rules
    ({'stem': 'tiny'}, r"model.stem 'tiny' is unknown; use one of: imagenet, cifar"),
    ({'width': 0.0}, r'model.width=0.0 is out of range'),
    ({'bn_group_size': -1}, r'model.bn_group_size=-1 is out of range'),
    ({'head': {'activation': 'tanh'}}, 'gelu.*relu.*silu'),
    ({'head': {'num_layers': 0}}, r'model.head.num_layers=0 is out of range'),
    ({'name': 'resnet20', 'stem': 'imagenet'}, 'CIFAR network; set --config.model.stem=cifar'),  # check_run's
    ({'name': 'resnet20', 'num_stages': 4}, r'model.num_stages=4 is out of range for resnet20; use 1..3'),
    ({'bn_group_size': 3}, r'batch_size=16 is not divisible by model.bn_group_size=3'),
    ({'stem': 'imagenet'}, r"image size 16 is too small for resnet18 with 'imagenet' stem; use at least 32"),
])
def test_bad_architectures_raise_user_error(model, match):
  with pytest.raises(UserError, match=match) as info:
    runs.check(_model_config(**model))
  assert '\n' not in str(info.value)


def test_bad_library_arguments_raise_value_errors():
  runs.check(_model_config(stem='imagenet', num_stages=2))     # 16 px reach a 2x2 second stage: accepted
  assert _abstract_encoder('resnet32').min_input_size == 4    # default stem of CIFAR nets is 'cifar'
  with pytest.raises(ValueError, match='stem'):               # would silently build the CIFAR stem
    _abstract_encoder('resnet18', stem='tiny')
  with pytest.raises(ValueError, match='num_layers'):         # would silently build one Linear
    MLPHead(6, hidden_dim=8, out_dim=4, num_layers=0, rngs=nnx.Rngs(0))


# ------------------------------------------------------------------------------------------------- BatchNorm
def _np_normalize(x, scale, bias, eps=1e-5):
  x = np.asarray(x, np.float64)
  axes = tuple(range(x.ndim - 1))
  mean, var = x.mean(axes), x.var(axes)
  return (x - mean) / np.sqrt(var + eps) * scale + bias, mean, var


def _random_bn(num_features, seed, **kwargs):
  """A BatchNorm with non-trivial scale and bias."""
  bn = BatchNorm(num_features, **kwargs)
  rng = np.random.default_rng(seed)
  bn.scale[...] = jnp.asarray(rng.uniform(0.5, 2.0, num_features), jnp.float32)
  bn.bias[...] = jnp.asarray(rng.normal(size=num_features), jnp.float32)
  return bn


def test_batchnorm_train_matches_numpy():
  x = np.random.default_rng(0).normal(3.0, 2.0, (8, 3, 3, 4)).astype(np.float32)
  bn = _random_bn(4, seed=1, momentum=0.8)
  y = bn(jnp.asarray(x), train=True)
  expected, mean, var = _np_normalize(x, np.asarray(bn.scale[...]), np.asarray(bn.bias[...]))
  np.testing.assert_allclose(y, expected, atol=2e-5)
  np.testing.assert_allclose(bn.mean[...], 0.2 * mean, rtol=1e-5)
  np.testing.assert_allclose(bn.var[...], 0.8 + 0.2 * var, rtol=1e-5)   # biased variance


def test_batchnorm_eval_uses_running_stats():
  x = np.random.default_rng(2).normal(size=(6, 5)).astype(np.float32)
  bn = _random_bn(5, seed=3, epsilon=1e-3)
  running_mean = np.linspace(-1, 1, 5, dtype=np.float32)
  running_var = np.linspace(0.5, 2, 5, dtype=np.float32)
  bn.mean[...], bn.var[...] = jnp.asarray(running_mean), jnp.asarray(running_var)
  y = bn(jnp.asarray(x), train=False)
  scale, bias = np.asarray(bn.scale[...]), np.asarray(bn.bias[...])
  expected = (x - running_mean) / np.sqrt(running_var + 1e-3) * scale + bias
  np.testing.assert_allclose(y, expected, atol=1e-5)
  np.testing.assert_array_equal(bn.mean[...], running_mean)
  np.testing.assert_array_equal(bn.var[...], running_var)


def test_ghost_batchnorm_normalises_each_group_separately():
  rng = np.random.default_rng(4)
  # Each group of 4 consecutive examples has its own offset, so whole-batch statistics would differ.
  x = (rng.normal(size=(12, 2, 3)) + np.repeat([-5.0, 0.0, 7.0], 4)[:, None, None]).astype(np.float32)
  bn = _random_bn(3, seed=5, group_size=4)
  y = np.asarray(bn(jnp.asarray(x), train=True))
  scale, bias = np.asarray(bn.scale[...]), np.asarray(bn.bias[...])
  groups = [_np_normalize(x[i:i + 4], scale, bias) for i in range(0, 12, 4)]
  np.testing.assert_allclose(y, np.concatenate([g[0] for g in groups]), atol=3e-5)
  assert np.abs(y - _np_normalize(x, scale, bias)[0]).max() > 1.0
  group_means, group_vars = np.mean([g[1] for g in groups], axis=0), np.mean([g[2] for g in groups], axis=0)
  np.testing.assert_allclose(bn.mean[...], 0.1 * group_means, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * group_vars, rtol=1e-5)


def test_ghost_batchnorm_rejects_indivisible_batch():
  with pytest.raises(ValueError, match='not divisible'):   # a config's batch: test_bad_architectures_...
    BatchNorm(3, group_size=4)(jnp.ones((6, 3)), train=True)


def test_batchnorm_bfloat16_input_float32_statistics():
  x = np.random.default_rng(6).normal(2.0, 3.0, (16, 4)).astype(np.float32)
  xb = jnp.asarray(x, jnp.bfloat16)
  bn = BatchNorm(4)
  y = bn(xb, train=True)
  assert y.dtype == jnp.bfloat16
  assert bn.mean[...].dtype == jnp.float32 and bn.var[...].dtype == jnp.float32
  _, mean, var = _np_normalize(np.asarray(xb, np.float32), 1.0, 0.0)
  # Statistics of the bfloat16 values, computed to float32 precision (bfloat16 has ~3 significant digits).
  np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * var, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(y, np.float32).mean(0), 0.0, atol=0.02)


# --------------------------------------------------------------------------------------------- functional use
@pytest.fixture(scope='module')
def split_model():
  """A ghost-BN ResNet-20 (8-channel first stage) split into graphdef, params and batch stats."""
  model = create_encoder('resnet20', width=0.5, bn_group_size=4, rngs=nnx.Rngs(0))
  return nnx.split(model, nnx.Param, nnx.BatchStat)


@pytest.fixture(scope='module')
def step(split_model):
  graphdef = split_model[0]

  @jax.jit
  def forward(params, batch_stats, x):
    model = nnx.merge(graphdef, params, batch_stats)
    features = model(x, train=True)
    return features, nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat)

  return forward


def _images(seed=0, batch=16):
  return jax.random.uniform(jax.random.key(seed), (batch, 16, 16, 3))


def test_functional_round_trip_updates_only_batch_stats(split_model, step):
  _, params, batch_stats = split_model
  features, new_params, new_stats = step(params, batch_stats, _images())
  assert features.shape == (16, 32) and bool(jnp.all(jnp.isfinite(features)))
  jax.tree.map(np.testing.assert_array_equal, new_params, params)
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_stats, batch_stats))
  # Mean and var of 21 BNs: the stem, 2 per block in 9 blocks, 2 projections.
  assert len(changed) == 2 * 21 and all(changed)


def test_eval_mode_leaves_batch_stats_untouched(split_model):
  graphdef, params, batch_stats = split_model

  @jax.jit
  def forward_eval(params, batch_stats, x):
    model = nnx.merge(graphdef, params, batch_stats)
    return model(x, train=False), nnx.state(model, nnx.BatchStat)

  features, new_stats = forward_eval(params, batch_stats, _images(1, batch=6))   # any batch size in eval
  assert features.shape == (6, 32)
  jax.tree.map(np.testing.assert_array_equal, new_stats, batch_stats)


def test_ghost_batchnorm_does_not_depend_on_device_count(split_model, step):
  _, params, batch_stats = split_model
  assert jax.device_count() == 8
  x = _images(2)
  # 16 examples on 8 devices: each ghost group of 4 spans two devices, so per-device statistics would differ.
  x_sharded = jax.device_put(x, NamedSharding(sharding.make_mesh(), P('data')))
  plain = step(params, batch_stats, x)
  sharded = step(params, batch_stats, x_sharded)
  assert len(x_sharded.sharding.device_set) == 8
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), plain, sharded)


# ------------------------------------------------------------------------------------------------- heads
@pytest.mark.parametrize('num_layers', [1, 2, 3])
def test_mlp_head_shapes_and_layers(num_layers):
  head = MLPHead(6, hidden_dim=10, out_dim=4, num_layers=num_layers, rngs=nnx.Rngs(0))
  y = head(jnp.ones((8, 6)), train=True)
  assert y.shape == (8, 4)
  linears = [m for _, m in nnx.iter_graph(head) if isinstance(m, nnx.Linear)]
  norms = [m for _, m in nnx.iter_graph(head) if isinstance(m, BatchNorm)]
  assert len(linears) == num_layers and len(norms) == num_layers - 1
  assert [lin.bias is None for lin in linears] == [True] * (num_layers - 1) + [False]   # bias only at the end


def test_mlp_head_last_bn_and_activations():
  x = jax.random.normal(jax.random.key(0), (32, 6)) * 3 + 1
  for activation in ('relu', 'gelu', 'silu'):
    head = MLPHead(6, hidden_dim=12, out_dim=5, last_bn=True, activation=activation, rngs=nnx.Rngs(1))
    y = head(x, train=True)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-3)
    assert head.out.bias is None
    assert head.out_bn.scale is None and head.out_bn.bias is None
  no_bn = MLPHead(6, hidden_dim=12, out_dim=5, use_bn=False, rngs=nnx.Rngs(1))
  assert not any(isinstance(m, BatchNorm) for _, m in nnx.iter_graph(no_bn))
  assert no_bn(x, train=True).shape == (32, 5)
