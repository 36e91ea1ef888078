"""Batch fusion (BA-SSL, our reading): the layer, the add-on on every framework, configs, the sweep tool."""
import importlib.util
import json
import pathlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssl_jax
from configs import fusion_cifar, fusion_digits, fusion_imagenet, fusion_imagenet100
from ssl_jax import config_schema, methods, train
from ssl_jax.errors import UserError
from ssl_jax.methods import fusion as fusion_addon
from ssl_jax.models import BatchFusion, fusion

import runs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _sweep_module():
  spec = importlib.util.spec_from_file_location('sweep', ROOT / 'launch' / 'sweep.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _layer(channels=3, alpha=0.0, **kw):
  kw = {'patch_size': 2, 'group_size': 4, 'num_layers': 2, 'width': 4, **kw}
  layer = BatchFusion(channels, rngs=nnx.Rngs(0), **kw)
  if layer.alpha is not None:
    layer.alpha[...] = jnp.float32(alpha)
  return layer


def _split(**kw):
  """(graphdef, params) of `_layer(**kw)`, initialised under jit: eager NNX ops would each compile (slow)."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: _layer(**kw)))
  return graphdef, jax.jit(lambda: nnx.state(_layer(**kw), nnx.Param))()


def _images(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape)


# ----------------------------------------------------------------------------------------------- the layer
def test_patch_partition_and_group_stacking_match_numpy():
  x = np.random.default_rng(0).normal(size=(6, 4, 6, 2)).astype(np.float32)
  p, g = 2, 3
  expected = np.zeros((6, 2, 3, p * p * 2), np.float32)
  for b, i, j, r, c, ch in np.ndindex(6, 2, 3, p, p, 2):
    expected[b, i, j, (r * p + c) * 2 + ch] = x[b, i * p + r, j * p + c, ch]
  patches = fusion.patch_partition(jnp.asarray(x), p)
  np.testing.assert_array_equal(patches, expected)
  stacked = np.zeros((2, 2, 3, g * 8), np.float32)
  for n, member, k in np.ndindex(2, g, 8):
    stacked[n, :, :, member * 8 + k] = expected[n * g + member, :, :, k]
  np.testing.assert_array_equal(fusion.stack_groups(patches, g), stacked)
  np.testing.assert_array_equal(fusion.unstack_groups(jnp.asarray(stacked), g), expected)
  np.testing.assert_array_equal(fusion.patch_restore(jnp.asarray(expected), p), x)


@pytest.mark.parametrize('p, g, layers, gate', [
    (1, 2, 1, 'learned'), (4, 8, 3, 'schedule'), (8, 2, 0, 'learned')])
def test_shapes_and_identity_at_alpha_zero(p, g, layers, gate):
  x = _images((16, 8, 8, 3))
  kw = dict(patch_size=p, group_size=g, num_layers=layers, gate=gate, gate_max=0.5)
  abstract = nnx.eval_shape(lambda: _layer(**kw))
  kernels = [(3, 3, g * p * p * 3, 4)] + [(3, 3, 4, 4)] * (layers - 1)
  assert [c.kernel.shape for c in abstract.convs] == kernels[:layers]
  assert layers or not jax.tree.leaves(nnx.state(abstract, nnx.Param))  # L = 0: nothing to learn

  @jax.jit  # built inside: eager NNX ops would each compile
  def outputs(x):
    layer = _layer(**kw)
    alphas = [layer.alpha_at(q) for q in (0.5, 1.0, 2.0)]
    return layer(x, progress=0.0), layer(x, progress=1.0), layer.fuse(x), alphas

  start, end, fused, alphas = outputs(x)
  np.testing.assert_array_equal(start, x)  # α = 0 (learned, and the schedule at step 0): the identity
  assert fused.shape == x.shape
  if layers:
    assert abstract.restore.kernel.shape == (1, 1, 4, g * p * p * 3) and np.abs(fused).max() > 0
  else:
    assert not np.any(fused)
    np.testing.assert_array_equal(end, x)
  if gate == 'schedule':  # α = 0.5·(1 - cos πp)/2 up to p = 1
    np.testing.assert_allclose(alphas, [0.25, 0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(end, x + 0.5 * fused, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('share', [True, False])
def test_no_information_crosses_a_group_boundary(share):
  """Each view's batch is fused on its own, in groups of 4 consecutive (or randomly partnered) samples."""
  views = _images((12, 2, 4, 4, 3))
  fuse = jax.jit(lambda alpha, v: fusion_addon.fuse_views(_layer(alpha=alpha), v, jax.random.key(3),
                                                          progress=0.0, share_groups=share))
  y = fuse(0.7, views)
  changed = np.abs(np.asarray(fuse(0.7, views.at[5, 0].add(1.0)) - y)).reshape(12, 2, -1).max(axis=2) > 0
  assert not changed[:, 1].any()  # the other view of the batch never sees it
  assert changed[:, 0].sum() == 4 and changed[5, 0]  # exactly one group of 4 in its own view
  if share:
    np.testing.assert_array_equal(changed[:, 0], [False] * 4 + [True] * 4 + [False] * 4)
  # Permuted and put back: at α = 0 still exactly the identity.
  np.testing.assert_array_equal(fuse(0.0, views), views)


def test_gradients_reach_alpha_and_the_embedding_weights():
  x = _images((8, 4, 4, 3))
  weights = _images((8, 4, 4, 3), seed=1)
  graphdef, params = _split()
  grad_of = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) * weights)))
  grads = dict(nnx.to_flat_state(grad_of(params)))
  assert float(grads[('alpha',)][...]) != 0.0
  # At α = 0 the branch gets no gradient yet (it starts learning once α moves), as any zero-gated residual.
  assert all(not np.any(v[...]) for path, v in grads.items() if path != ('alpha',))
  params['alpha'][...] = jnp.float32(0.5)
  grads = dict(nnx.to_flat_state(grad_of(params)))
  # alpha, 2 conv kernels, 2 LayerNorms (scale, bias), the restore conv (kernel, bias).
  assert len(grads) == 9 and all(np.abs(v[...]).max() > 0 for v in grads.values())


# ----------------------------------------------------------------------------------------------- the add-on
def _tiny(framework='simclr', fusion_on=True, placement='input'):
  """The runlocal recipe on 16-px synthetic images, with one ResNet stage: quick to trace and compile."""
  c = runs.tiny_synthetic(lambda a: fusion_cifar.get_config(f'{a},framework={framework}'))
  c.model.num_stages = 1
  c.fusion.enabled = fusion_on
  c.fusion.placement = placement
  return c


def _flat(state) -> dict:
  return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(state)}


@pytest.mark.parametrize('placement', ['input', 'stem'])
def test_first_step_at_alpha_zero_equals_the_framework_alone(placement):
  batch = {'image': jnp.zeros((16, 16, 16, 3), jnp.uint8), 'label': jnp.arange(16) % 10}
  views = _images((16, 2, 16, 16, 3))  # augmentation is the framework's, the same with or without fusion
  out = {}
  for on in (False, True):
    c = _tiny(fusion_on=on, placement=placement)
    method = methods.get_method(c)
    graphdef, params, stats = nnx.split(method.build_model(c, in_channels=3, rngs=nnx.Rngs(0)), nnx.Param,
                                        nnx.BatchStat)
    ctx = methods.StepContext(config=c, resolution=16, step=jnp.int32(0), total_steps=3, extra={})

    def loss_of(p, graphdef=graphdef, stats=stats, method=method, ctx=ctx):
      model = nnx.merge(graphdef, p, jax.tree.map(lambda x: x, stats))
      return method.loss_fn(model, views, batch, jax.random.key(1), ctx)[0]

    loss, grads = jax.jit(jax.value_and_grad(loss_of))(params)
    out[on] = loss, _flat(params), _flat(grads)
  (loss, base, grads), (fused_loss, fused, fused_grads) = out[False], out[True]
  assert {path[0] for path in fused} == {path[0] for path in base} | {'fusion'}
  # Equal up to float32 rounding: XLA fuses the two graphs differently (a fused input is bitwise the input).
  np.testing.assert_allclose(fused_loss, loss, rtol=1e-6)
  for path in base:
    np.testing.assert_array_equal(fused[path], base[path])  # the same initial weights
    np.testing.assert_allclose(fused_grads[path], grads[path], rtol=1e-4,
                               atol=1e-5 * np.abs(grads[path]).max(), err_msg=str(path))
  assert fused_grads[('fusion', 'alpha')] != 0.0


@pytest.mark.parametrize('placement', ['input', 'stem'])
@pytest.mark.parametrize('framework', list(fusion_cifar.FRAMEWORKS))
def test_plugs_into_every_framework(framework, placement):
  c = _tiny(framework, placement=placement)
  method = methods.get_method(c)
  batch = {'image': jnp.zeros((16, 16, 16, 3), jnp.uint8), 'label': jnp.arange(16) % 10}

  def step():
    model = method.build_model(c, in_channels=3, rngs=nnx.Rngs(0))
    extra = method.init_extra(model, c)
    ctx = methods.StepContext(config=c, resolution=16, step=jnp.int32(1), total_steps=3, extra=extra)
    views = method.make_views(jax.random.key(0), batch, ctx)
    loss, (metrics, new_extra, features) = method.loss_fn(model, views, batch, jax.random.key(0), ctx)
    return nnx.state(model, nnx.Param), extra, loss, metrics, features

  params, extra, loss, metrics, features = jax.eval_shape(step)  # traced, not compiled: cheap
  assert 'fusion' in params and loss.shape == () and 'fusion_alpha' in metrics
  assert features.shape[0] == 16
  # Its first conv stacks G patches of P x P pixels of the images (3 channels) or of the stem's 8 channels.
  channels = 8 if placement == 'stem' else 3
  stacked = c.fusion.group_size * c.fusion.patch_size**2 * channels
  assert params['fusion']['convs'][0]['kernel'].shape[2] == stacked
  # A momentum target copies the online network only; the fusion layer is never part of it.
  paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(extra)]
  assert not any('fusion' in path for path in paths)


@pytest.mark.parametrize('change, match', [
    (('batch_size', 18), 'group_size'), (('fusion.patch_size', 3), 'patch_size'),
    (('fusion.placement', 'middle'), 'placement'), (('fusion.gate', 'ramp'), 'gate'),
    (('fusion.num_layers', -1), 'num_layers'), (('fusion.norm', 'batch'), 'norm'),
    (('model.stem', 'imagenet', 'fusion.placement', 'stem', 'fusion.patch_size', 8), 'stem stride 4'),
    (('fusion.placement', 'stem', 'method', 'repmix'), 'not available with method')])
def test_bad_settings_are_user_errors(change, match):
  c = _tiny()
  for key, value in zip(change[::2], change[1::2]):
    *parents, last = key.split('.')
    node = c
    for part in parents:
      node = node[part]
    node[last] = value
  with pytest.raises(UserError, match=match):
    methods.get_method(c)


@pytest.mark.parametrize('framework, expected', [
    ('simclr', [(32, 0)]), ('supcon', [(32, 0)]), ('simsiam', [(32, 0)]),
    ('byol', [(32, 0), (32, 0)]),      # online, then the target over the same rows: the same partners
    ('moco', [(16, 0), (16, 1), (16, 0), (16, 1)])])  # symmetric: queries of views 1, 2, then their keys
def test_every_encoder_call_of_a_step_passes_the_stem_hook(framework, expected):
  """Each framework hands `ctx.after_stem` to all its training-step encoder calls, the target's included."""
  c = _tiny(framework, fusion_on=False)
  method = methods.get_method(c)
  batch = {'image': jnp.zeros((16, 16, 16, 3), jnp.uint8), 'label': jnp.arange(16) % 10}
  calls = []

  def hook(rows, first_view=0):
    calls.append((rows.shape[0], first_view))
    return rows

  def step():
    model = method.build_model(c, in_channels=3, rngs=nnx.Rngs(0))
    ctx = methods.StepContext(config=c, resolution=16, step=jnp.int32(1), total_steps=3,
                              extra=method.init_extra(model, c), after_stem=hook)
    views = method.make_views(jax.random.key(0), batch, ctx)
    return method.loss_fn(model, views, batch, jax.random.key(0), ctx)

  jax.eval_shape(step)
  assert calls == expected


def test_zero_layers_is_the_framework_alone():
  c = _tiny()
  c.fusion.num_layers = 0
  fused, alone = methods.get_method(c), methods.get_method(_tiny(fusion_on=False))
  assert fused.build_model is alone.build_model and fused.loss_fn is alone.loss_fn


def test_configs_build_and_validate():
  built = [fusion_imagenet.get_config(a) for a in ('', 'fusion=false', 'runlocal', 'runlocal,synthetic')]
  built += [fusion_cifar.get_config(f'dataset={d},framework={f}') for d in ('cifar10', 'cifar100')
            for f in fusion_cifar.FRAMEWORKS]
  built += [fusion_imagenet100.get_config(f'framework={f},fusion={on}{extra}')
            for f in fusion_cifar.FRAMEWORKS for on in ('true', 'false') for extra in ('', ',runlocal')]
  built += [fusion_digits.get_config(f'framework={f}{extra}') for f in ('simclr', 'byol')
            for extra in ('', ',runlocal')]
  for c in built:
    config_schema.validate(c)
    methods.get_method(c)
  assert fusion_cifar.get_config('dataset=cifar100').data.name == 'cifar100'
  assert fusion_imagenet100.get_config('framework=moco').data.name == 'imagenet100'
  assert not fusion_imagenet100.get_config('fusion=false').fusion.enabled
  with pytest.raises(ValueError, match='framework'):
    fusion_cifar.get_config('framework=barlow')


# ----------------------------------------------------------------------------------------------- trainer
# The sweep test below trains the same step (8 devices), so its compilation comes from the cache.
_SHARED_OVERRIDES = {'total_steps': 2, 'model.num_stages': 1, 'fusion.share_groups': False}


def test_runlocal_trains_end_to_end_one_device_equals_eight_and_loads(tmp_path):
  c = runs.tiny_synthetic(fusion_cifar.get_config, steps=_SHARED_OVERRIDES['total_steps'])
  c.model.num_stages = _SHARED_OVERRIDES['model.num_stages']  # the ResNet is not under test: keep it small
  c.fusion.share_groups = _SHARED_OVERRIDES['fusion.share_groups']  # the per-view permutations, sharded
  c.fusion.gate_init = 0.5  # fused from the first step: both device counts see the fusion at work
  train.train_and_evaluate(c, tmp_path / 'one', devices=jax.devices()[:1])
  train.train_and_evaluate(c, tmp_path / 'eight', devices=jax.devices())
  losses = runs.logged(tmp_path / 'one')
  assert np.isfinite(losses).all() and runs.logged(tmp_path / 'one', 'fusion_alpha')[0] == 0.5
  np.testing.assert_allclose(losses, runs.logged(tmp_path / 'eight'), rtol=1e-5, atol=1e-6)
  one, eight = runs.final_state(tmp_path / 'one'), runs.final_state(tmp_path / 'eight')
  assert 'fusion' in one['params']
  for a, b in zip(jax.tree.leaves(one['params']), jax.tree.leaves(eight['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # load_encoder rebuilds the fused model from the checkpoint but embeds with the encoder alone.
  encoder = ssl_jax.load_encoder(tmp_path / 'one')
  assert encoder.embed(np.zeros((3, 16, 16, 3), np.uint8)).shape == (3, encoder.feature_dim)


# ----------------------------------------------------------------------------------------------- sweep tool
def test_sweep_runs_a_grid_then_tabulates_and_resumes(tmp_path, capsys):
  sweep = _sweep_module()
  argv = ['--config', f'{ROOT}/configs/fusion_cifar.py:runlocal,synthetic', '--grid', 'seed=0,1',
          '--workdir', str(tmp_path), '--config.data.synthetic_examples=64',
          '--config.data.synthetic_shape=(16, 16, 3)']
  argv += [f'--config.{key}={value}' for key, value in _SHARED_OVERRIDES.items()]
  assert sweep.main(argv + ['--print']) == 0
  commands = capsys.readouterr().out.splitlines()
  assert len(commands) == 2 and all('ssl_jax.main' in cmd for cmd in commands)
  assert commands[1].endswith(f"--workdir {tmp_path}/seed=1 --config.data.synthetic_examples=64 "
                              "'--config.data.synthetic_shape=(16, 16, 3)' --config.total_steps=2 "
                              '--config.model.num_stages=1 --config.fusion.share_groups=False '
                              '--config.seed=1')
  assert not list(tmp_path.iterdir())
  assert sweep.main(argv) == 0
  table = (tmp_path / 'sweep.md').read_text()
  assert '| seed=0 | 0 |' in table and '| seed=1 | 1 |' in table
  assert (tmp_path / 'sweep_curves.png').stat().st_size > 1000
  assert runs.logged(tmp_path / 'seed=0') != runs.logged(tmp_path / 'seed=1')
  capsys.readouterr()
  assert sweep.main(argv) == 0 and capsys.readouterr().out.count('done before, skipped') == 2
  assert sweep.main(argv[:4] + ['--grid', 'fusion.no_such=1', '--workdir', str(tmp_path)]) == 2
  assert sweep.main(argv[:2] + ['--grid', 'fusion.num_layers=one', '--workdir', str(tmp_path)]) == 2


def test_sweep_collects_results_into_a_table_and_a_plot(tmp_path):
  sweep = _sweep_module()
  for layers in (0, 2):
    for width in (8, 16):
      run = tmp_path / f'fusion.num_layers={layers},fusion.width={width}'
      run.mkdir()
      (run / 'config.json').write_text(json.dumps({'fusion': {'num_layers': layers, 'width': width}}))
      (run / 'results.json').write_text(json.dumps({'knn_top1': 0.5 + layers / 10 + width / 100}))
  argv = ['--config', f'{ROOT}/configs/fusion_cifar.py', '--grid', 'fusion.num_layers=0,2', '--grid',
          'fusion.width=8,16,32', '--workdir', str(tmp_path), '--collect']
  assert sweep.main(argv) == 0
  table = (tmp_path / 'sweep.md').read_text()
  assert '| fusion.num_layers=2,fusion.width=16 | 2 | 16 | 0.86 |' in table
  assert ('without results yet: fusion.num_layers=0,fusion.width=32, fusion.num_layers=2,fusion.width=32'
          in table)
  assert (tmp_path / 'sweep.png').stat().st_size > 1000
