"""Batch fusion: the released module and the gated reading, the add-on on every framework, configs, sweeps."""
import dataclasses
import importlib.util
import json
import pathlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssl_jax
from configs import fusion_cdoa, fusion_cifar, fusion_digits, fusion_imagenet, fusion_imagenet100, mocov3_imagenet
from ssl_jax import config_schema, methods, train
from ssl_jax.errors import UserError
from ssl_jax.methods import _momentum
from ssl_jax.methods import fusion as fusion_addon
from ssl_jax.models import BatchFusion, fusion

import runs

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Every framework that accepts the add-on and has a CIFAR recipe (what configs/fusion_cifar.py builds on).
FRAMEWORKS = [m for m in methods.available() if 'fusion' in methods.capabilities(m).addons
              and (ROOT / 'configs' / f'{m}_cifar10.py').exists()]


def _sweep_module():
  spec = importlib.util.spec_from_file_location('sweep', ROOT / 'launch' / 'sweep.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _images(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape)


def _split(build):
  """(graphdef, params) of the module `build()` makes, initialised under jit (eager NNX ops each compile)."""
  graphdef = nnx.graphdef(nnx.eval_shape(build))
  return graphdef, jax.jit(lambda: nnx.state(build(), nnx.Param))()


def _released(**kw):
  kw = {'patch_size': 4, 'group_size': 4, 'num_blocks': 1, 'width': 8, **kw}
  return BatchFusion(3, rngs=nnx.Rngs(0), **kw)


def _gated(alpha=0.0, **kw):
  kw = {'patch_size': 2, 'group_size': 4, 'num_blocks': 2, 'width': 4, **kw}
  layer = fusion.GatedBatchFusion(3, rngs=nnx.Rngs(0), **kw)
  if layer.alpha is not None:
    layer.alpha[...] = jnp.float32(alpha)
  return layer


# ----------------------------------------------------------------------------------------- partition / restore
def test_patch_partition_images_to_channels_and_group_stacking_match_numpy():
  x = np.random.default_rng(0).normal(size=(6, 4, 6, 2)).astype(np.float32)
  p, g = 2, 3
  grid = np.zeros((6, 2, 3, p * p * 2), np.float32)
  for b, i, j, r, c, ch in np.ndindex(6, 2, 3, p, p, 2):
    grid[b, i, j, (r * p + c) * 2 + ch] = x[b, i * p + r, j * p + c, ch]
  np.testing.assert_array_equal(fusion.patch_partition(jnp.asarray(x), p), grid)
  np.testing.assert_array_equal(fusion.patch_restore(jnp.asarray(grid), p), x)
  # The released layout: group n's channel m is image n·G + m; patch l = row·(W/P) + col; then the values.
  channels = np.zeros((2, 6, 8, g), np.float32)
  for n, m, l, k in np.ndindex(2, g, 6, 8):
    channels[n, l, k, m] = grid[n * g + m, l // 3, l % 3, k]
  y = fusion.images_to_channels(jnp.asarray(x), p, g)
  np.testing.assert_array_equal(y, channels)
  np.testing.assert_array_equal(fusion.channels_to_images(y, p, 4, 6), x)  # exact round trip
  # The gated reading's layout: G patch grids stacked on the channel axis.
  stacked = np.zeros((2, 2, 3, g * 8), np.float32)
  for n, member, k in np.ndindex(2, g, 8):
    stacked[n, :, :, member * 8 + k] = grid[n * g + member, :, :, k]
  np.testing.assert_array_equal(fusion.stack_groups(jnp.asarray(grid), g), stacked)
  np.testing.assert_array_equal(fusion.unstack_groups(jnp.asarray(stacked), g), grid)


# ----------------------------------------------------------------------------------------- the released module
def _numpy_block(x, p):
  """One released block on (N, L, K, G) in numpy: the structure of ssl_jax/models/fusion.py's docstring."""
  def conv(a, q):
    kernel, bias = q['kernel'], q['bias']
    k = kernel.shape[0] // 2
    padded = np.pad(a, ((0, 0), (k, k), (k, k), (0, 0)))
    out = sum(padded[:, i:i + a.shape[1], j:j + a.shape[2]] @ kernel[i, j]
              for i in range(kernel.shape[0]) for j in range(kernel.shape[1]))
    return out + bias

  def norm(a, q):
    mean, var = a.mean(axis=(1, 2), keepdims=True), a.var(axis=(1, 2), keepdims=True)
    return (a - mean) / np.sqrt(var + 1e-5) * q['scale'] + q['bias']

  mish = lambda a: a * np.tanh(np.log1p(np.exp(a)))
  a = x
  for i in (1, 2, 3):
    a = mish(norm(conv(a, p[f'conv{i}']), p[f'norm{i}']))
  a = conv(a + conv(x, p['shortcut']), p['squeeze'])
  return np.maximum(a + x, 0.0)


def test_released_module_matches_numpy_and_is_not_the_identity():
  x = np.asarray(_images((8, 8, 8, 3)), np.float64) * 2 - 1
  graphdef, params = _split(lambda: _released(num_blocks=2))
  rng = np.random.default_rng(1)  # non-trivial affine parameters, so the normalisation is checked
  params = jax.tree.map(lambda v: v + rng.normal(size=v.shape).astype(np.float32) * 0.3, params)
  out = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, jnp.asarray(x, jnp.float32))
  pure = jax.tree.map(lambda v: np.asarray(v, np.float64), nnx.to_pure_dict(params))
  y = np.asarray(fusion.images_to_channels(jnp.asarray(x), 4, 4), np.float64)
  for i in range(2):
    y = _numpy_block(y, pure['blocks'][i])
  expected = x + np.asarray(fusion.channels_to_images(jnp.asarray(y), 4, 8, 8))
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  assert np.abs(np.asarray(out) - x).mean() > 0.1  # no gate: the layer changes the images from the start


@pytest.mark.parametrize('blocks', [0, 1, 3])
def test_num_blocks_ablation_shapes(blocks):
  abstract = nnx.eval_shape(lambda: _released(num_blocks=blocks, group_size=8, width=16))
  shapes = jax.tree.map(lambda v: v.shape, nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
  block = {'conv1': {'kernel': (1, 1, 8, 8), 'bias': (8,)}, 'norm1': {'scale': (8,), 'bias': (8,)},
           'conv2': {'kernel': (3, 3, 8, 16), 'bias': (16,)}, 'norm2': {'scale': (16,), 'bias': (16,)},
           'conv3': {'kernel': (1, 1, 16, 16), 'bias': (16,)}, 'norm3': {'scale': (16,), 'bias': (16,)},
           'shortcut': {'kernel': (1, 1, 8, 16), 'bias': (16,)},
           'squeeze': {'kernel': (1, 1, 16, 8), 'bias': (8,)}}
  assert shapes == ({'blocks': {i: block for i in range(blocks)}} if blocks else {})
  x = _images((16, 8, 8, 3))
  out = jax.eval_shape(lambda x: _released(num_blocks=blocks, group_size=8, width=16)(x), x)
  assert out.shape == x.shape
  if not blocks:  # no module: exactly the input
    np.testing.assert_array_equal(_released(num_blocks=0)(x), x)


@pytest.mark.parametrize('share', [True, False])
def test_no_information_crosses_a_group_boundary(share):
  """Perturbing one example changes only its own group's outputs, in its own view."""
  views = _images((12, 2, 8, 8, 3))
  fuse = jax.jit(lambda v: fusion_addon.fuse_views(_released(), v, jax.random.key(3), progress=0.0,
                                                   permute=not share))
  y = fuse(views)
  changed = np.abs(np.asarray(fuse(views.at[5, 1].add(1.0)) - y)).reshape(12, 2, -1).max(axis=2) > 0
  assert not changed[:, 0].any()  # the other view of the batch never sees it
  assert changed[:, 1].sum() == 4 and changed[5, 1]  # exactly one group of 4 in its own view
  if share:  # consecutive examples: the group of examples 4..7
    np.testing.assert_array_equal(changed[:, 1], [False] * 4 + [True] * 4 + [False] * 4)


# ----------------------------------------------------------------------------------------- the gated reading
@pytest.mark.parametrize('p, g, blocks, gate', [(1, 2, 1, 'learned'), (4, 8, 3, 'schedule'), (8, 2, 0, 'learned')])
def test_gated_shapes_and_identity_at_alpha_zero(p, g, blocks, gate):
  x = _images((16, 8, 8, 3))
  kw = dict(patch_size=p, group_size=g, num_blocks=blocks, gate=gate, gate_max=0.5)
  abstract = nnx.eval_shape(lambda: _gated(**kw))
  kernels = [(3, 3, g * p * p * 3, 4)] + [(3, 3, 4, 4)] * (blocks - 1)
  assert [c.kernel.shape for c in abstract.convs] == kernels[:blocks]
  assert blocks or not jax.tree.leaves(nnx.state(abstract, nnx.Param))  # 0 layers: nothing to learn

  @jax.jit  # built inside: eager NNX ops would each compile
  def outputs(x):
    layer = _gated(**kw)
    alphas = [layer.alpha_at(q) for q in (0.5, 1.0, 2.0)]
    return layer(x, progress=0.0), layer(x, progress=1.0), layer.fuse(x), alphas

  start, end, fused, alphas = outputs(x)
  np.testing.assert_array_equal(start, x)  # α = 0 (learned, and the schedule at step 0): the identity
  assert fused.shape == x.shape
  if blocks:
    assert abstract.restore.kernel.shape == (1, 1, 4, g * p * p * 3) and np.abs(fused).max() > 0
  else:
    assert not np.any(fused)
    np.testing.assert_array_equal(end, x)
  if gate == 'schedule':  # α = 0.5·(1 - cos πp)/2 up to p = 1
    np.testing.assert_allclose(alphas, [0.25, 0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(end, x + 0.5 * fused, rtol=1e-6, atol=1e-6)


def test_gated_gradients_reach_alpha_and_the_embedding_weights():
  x = _images((8, 4, 4, 3))
  weights = _images((8, 4, 4, 3), seed=1)
  graphdef, params = _split(_gated)
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
def _tiny(framework='simclr', fusion_on=True, placement='input', variant='released'):
  """The runlocal recipe on 16-px synthetic images, with one encoder stage: quick to trace and compile."""
  c = runs.tiny_synthetic(lambda a: fusion_cifar.get_config(f'{a},framework={framework},variant={variant}'))
  c.model.num_stages = 1
  c.fusion.enabled = fusion_on
  c.fusion.placement = placement
  return c


def _flat(state) -> dict:
  return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(state)}


_BATCH = {'image': jnp.zeros((16, 16, 16, 3), jnp.uint8), 'partner': jnp.zeros((16, 16, 16, 3), jnp.uint8),
          'label': jnp.arange(16) % 10}


def _without_fusion(c):
  c = c.copy_and_resolve_references()
  c.fusion.enabled = False
  return c


def _released_on_view_2(model, views, c):
  """The released module applied by hand to the normalised view 2, mapped back to [0, 1] units."""
  mean, std = (jnp.asarray(s) for s in ssl_jax.data.image_stats(c.data.name, 3))
  return model.fusion((views[:, 1] - mean) / std) * std + mean


def test_only_view_2_is_fused_after_normalisation_and_only_it_sends_gradients():
  c = _tiny()
  inner = methods.get_method(_without_fusion(c))
  views = _images((16, 2, 16, 16, 3))
  seen = {}

  def run(view):
    def loss_fn(model, views, batch, key, ctx):
      seen[view] = views
      return jnp.sum(views[:, view] * views[:, view]), ({}, ctx.extra, jnp.zeros((16, 4)))
    method = fusion_addon.apply(dataclasses.replace(inner, loss_fn=loss_fn), c)
    graphdef, params, rest = nnx.split(method.build_model(c, in_channels=3, rngs=nnx.Rngs(0)), nnx.Param, ...)
    ctx = methods.StepContext(config=c, resolution=16, step=jnp.int32(0), total_steps=3, extra={})

    def loss_of(p):
      model = nnx.merge(graphdef, p, rest)
      loss, _ = method.loss_fn(model, views, _BATCH, jax.random.key(1), ctx)
      fused = seen[view]
      return loss, (fused, _released_on_view_2(model, views, c))

    (_, (fused, direct)), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(params)
    return fused, direct, _flat(grads['fusion'])

  fused, direct, grads = run(0)
  np.testing.assert_array_equal(fused[:, 0], views[:, 0])  # view 1 untouched
  np.testing.assert_allclose(fused[:, 1], direct, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(fused[:, 1] - views[:, 1])).mean() > 0.01
  assert all(not g.any() for g in grads.values())  # a loss of view 1 alone: no gradient into the module
  _, _, grads = run(1)
  assert all(np.abs(g).max() > 0 for g in grads.values())  # through view 2 every parameter learns


def _step_grads(c, views, capture=None):
  """The fusion parameters' gradient of one real step of `c`'s framework (and what `capture` recorded)."""
  method = methods.get_method(c)
  model = method.build_model(c, in_channels=3, rngs=nnx.Rngs(0))
  extra = method.init_extra(model, c)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  ctx = methods.StepContext(config=c, resolution=16, step=jnp.int32(1), total_steps=3, extra=extra)

  def loss_of(p):
    model = nnx.merge(graphdef, p, jax.tree.map(lambda x: x, rest))
    loss, _ = method.loss_fn(model, views, _BATCH, jax.random.key(1), ctx)
    return loss, (capture[-1] if capture else None, _released_on_view_2(model, views, c))

  (_, aux), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(params)
  return _flat(grads['fusion']), aux


def test_the_momentum_target_sees_the_fused_view_and_sends_no_gradient(monkeypatch):
  views = _images((16, 2, 16, 16, 3))
  seen = []
  run_target = _momentum.run_target

  def recording(module, target, images, **kw):
    seen.append(images)
    return run_target(module, target, images, **kw)

  monkeypatch.setattr(_momentum, 'run_target', recording)
  grads, (target_rows, fused_view_2) = _step_grads(_tiny('byol'), views, seen)
  target_views = np.asarray(target_rows).reshape(16, 2, 16, 16, 3)  # BYOL: all views, example-major
  np.testing.assert_array_equal(target_views[:, 0], views[:, 0])
  np.testing.assert_allclose(target_views[:, 1], fused_view_2, rtol=1e-5, atol=1e-5)
  assert all(np.abs(g).max() > 0 for g in grads.values())  # BYOL's online branch sees fused view 2
  # MoCo v2's asymmetric loss: view 2 reaches only the key (momentum) encoder, under its stop-gradient.
  c = _tiny('moco')
  c.moco.symmetric = False
  seen.clear()
  grads, (keys, fused_view_2) = _step_grads(c, views, seen)
  np.testing.assert_allclose(keys, fused_view_2, rtol=1e-5, atol=1e-5)
  assert all(not g.any() for g in grads.values())


@pytest.mark.parametrize('placement', ['input', 'stem'])
def test_gated_first_step_at_alpha_zero_equals_the_framework_alone(placement):
  views = _images((16, 2, 16, 16, 3))  # augmentation is the framework's, the same with or without fusion
  out = {}
  for on in (False, True):
    c = _tiny(fusion_on=on, placement=placement, variant='gated')
    method = methods.get_method(c)
    graphdef, params, stats = nnx.split(method.build_model(c, in_channels=3, rngs=nnx.Rngs(0)), nnx.Param,
                                        nnx.BatchStat)
    ctx = methods.StepContext(config=c, resolution=16, step=jnp.int32(0), total_steps=3, extra={})

    def loss_of(p, graphdef=graphdef, stats=stats, method=method, ctx=ctx):
      model = nnx.merge(graphdef, p, jax.tree.map(lambda x: x, stats))
      return method.loss_fn(model, views, _BATCH, jax.random.key(1), ctx)[0]

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


@pytest.mark.parametrize('framework', FRAMEWORKS)
def test_plugs_into_every_framework(framework):
  placements = ['input'] + (['stem'] if methods.capabilities(framework).stem_hook else [])
  for placement in placements:
    c = _tiny(framework, placement=placement)
    try:
      method = methods.get_method(c)
    except UserError:
      assert placement == 'stem'  # a framework may refuse the stem for some encoders (a ViT has none)
      continue

    def step(method=method, c=c):
      model = method.build_model(c, in_channels=3, rngs=nnx.Rngs(0))
      extra = method.init_extra(model, c)
      ctx = methods.StepContext(config=c, resolution=16, step=jnp.int32(1), total_steps=3, extra=extra)
      views = method.make_views(jax.random.key(0), _BATCH, ctx)
      loss, (metrics, _, features) = method.loss_fn(model, views, _BATCH, jax.random.key(0), ctx)
      return nnx.state(model, nnx.Param), extra, loss, metrics, features

    params, extra, loss, metrics, features = jax.eval_shape(step)  # traced, not compiled: cheap
    assert 'fusion' in params and loss.shape == () and features.shape[0] == 16
    assert 'fusion_change' in metrics or placement == 'stem'
    # The group's G images (or stem outputs) are the channels, whatever was fused.
    assert params['fusion']['blocks'][0]['conv1']['kernel'].shape == (1, 1, 8, 8)
    # A momentum target copies the online network only; the fusion layer is never part of it.
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(extra)]
    assert not any('fusion' in path for path in paths)


@pytest.mark.parametrize('change, match', [
    (('batch_size', 18), 'group_size'), (('fusion.patch_size', 3), 'patch_size'),
    (('fusion.placement', 'middle'), 'placement'), (('fusion.variant', 'paper'), 'variant'),
    (('fusion.views', 'first'), 'views'), (('fusion.variant', 'gated', 'fusion.gate', 'ramp'), 'gate'),
    (('fusion.num_blocks', -1), 'num_blocks'), (('fusion.variant', 'gated', 'fusion.norm', 'batch'), 'norm'),
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
    runs.check(c)


@pytest.mark.parametrize('framework, expected', [
    ('simclr', [(32, 0)]), ('supcon', [(32, 0)]), ('simsiam', [(32, 0)]),
    ('byol', [(32, 0), (32, 0)]),      # online, then the target over the same rows: the same partners
    ('moco', [(16, 0), (16, 1), (16, 0), (16, 1)])])  # symmetric: queries of views 1, 2, then their keys
def test_every_encoder_call_of_a_step_passes_the_stem_hook(framework, expected):
  """Each framework hands `ctx.after_stem` to all its training-step encoder calls, the target's included."""
  c = _tiny(framework, fusion_on=False)
  method = methods.get_method(c)
  calls = []

  def hook(rows, first_view=0):
    calls.append((rows.shape[0], first_view))
    return rows

  def step():
    model = method.build_model(c, in_channels=3, rngs=nnx.Rngs(0))
    ctx = methods.StepContext(config=c, resolution=16, step=jnp.int32(1), total_steps=3,
                              extra=method.init_extra(model, c), after_stem=hook)
    views = method.make_views(jax.random.key(0), _BATCH, ctx)
    return method.loss_fn(model, views, _BATCH, jax.random.key(0), ctx)

  jax.eval_shape(step)
  assert calls == expected


def test_stem_placement_fuses_the_chosen_views_rows_only():
  """The stem hook gets rows of views first_view.. (example-major) and fuses view 2's only, by default."""
  c = _tiny(placement='stem')
  method = methods.get_method(c)
  rows = _images((32, 16, 16, 8))  # 16 examples x 2 views of stem output
  seen = {}

  def inner_loss(model, views, batch, key, ctx):
    seen['both'] = ctx.after_stem(rows)
    seen['view1'] = ctx.after_stem(rows[::2], first_view=0)
    seen['view2'] = ctx.after_stem(rows[1::2], first_view=1)
    return jnp.zeros(()), ({}, ctx.extra, jnp.zeros((16, 4)))

  inner = methods.get_method(_without_fusion(c))
  method = fusion_addon.apply(dataclasses.replace(inner, loss_fn=inner_loss), c)

  @jax.jit
  def run():
    model = method.build_model(c, in_channels=3, rngs=nnx.Rngs(0))
    ctx = methods.StepContext(config=c, resolution=16, step=jnp.int32(0), total_steps=3, extra={})
    method.loss_fn(model, _images((16, 2, 16, 16, 3)), _BATCH, jax.random.key(0), ctx)
    return seen['both'], seen['view1'], seen['view2'], model.fusion(rows[1::2])

  both, view1, view2, direct = run()
  np.testing.assert_array_equal(both[::2], rows[::2])
  np.testing.assert_array_equal(view1, rows[::2])
  np.testing.assert_allclose(both[1::2], direct, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(view2, direct, rtol=1e-5, atol=1e-5)


def test_zero_blocks_is_the_framework_alone():
  c = _tiny()
  c.fusion.num_blocks = 0
  fused, alone = methods.get_method(c), methods.get_method(_tiny(fusion_on=False))
  assert fused.build_model is alone.build_model and fused.loss_fn is alone.loss_fn


def test_configs_build_and_validate():
  built = [fusion_imagenet.get_config(a) for a in ('', 'fusion=false', 'runlocal', 'runlocal,synthetic')]
  built += [fusion_cifar.get_config(f'dataset={d},framework={f}{v}') for d in ('cifar10', 'cifar100')
            for f in FRAMEWORKS for v in ('', ',variant=gated')]
  built += [fusion_imagenet100.get_config(f'framework={f},fusion={on}{extra}')
            for f in FRAMEWORKS for on in ('true', 'false') for extra in ('', ',runlocal')]
  built += [fusion_digits.get_config(f'framework={f}{extra}') for f in ('simclr', 'byol')
            for extra in ('', ',runlocal', ',synthetic', ',variant=gated')]
  for c in built:
    config_schema.validate(c)
    methods.get_method(c)
  assert fusion_cifar.get_config('dataset=cifar100').data.name == 'cifar100'
  assert fusion_imagenet100.get_config('framework=moco').data.name == 'imagenet100'
  assert not fusion_imagenet100.get_config('fusion=false').fusion.enabled
  with pytest.raises(UserError, match='framework'):
    fusion_cifar.get_config('framework=barlow')


def test_cdoa_recipes_are_moco_v3_vit_s16_with_the_released_settings():
  for arg in ('', 'aug=cdoa+', 'aug=cdoa+,fusion=false', 'runlocal', 'runlocal,synthetic', 'synthetic'):
    c = fusion_cdoa.get_config(arg)
    config_schema.validate(c)
    methods.get_method(c)
  cdoa, plus = fusion_cdoa.get_config(''), fusion_cdoa.get_config('aug=cdoa+')
  mocov3 = mocov3_imagenet.get_config('')
  assert (cdoa.method, cdoa.model.name, cdoa.model.patch_size, cdoa.data.image_size) == ('mocov3', 'vit_small', 16, 224)
  assert (cdoa.batch_size, cdoa.total_epochs, cdoa.loss.temperature) == (256, 250.0, 0.5)
  assert (cdoa.fusion.enabled, cdoa.fusion.variant, cdoa.fusion.views, cdoa.fusion.group_size) == (
      True, 'released', 'second', 128)
  for view in (cdoa.augment, cdoa.augment2):  # CDOA: a random-resized crop and nothing else
    assert view.crop and not any(view[k] for k in ('flip_prob', 'jitter_prob', 'grayscale_prob', 'blur_prob',
                                                   'solarize_prob'))
  assert plus.augment.to_dict() == mocov3.augment.to_dict()  # CDOA+: MoCo v3's (BYOL's) views
  assert plus.augment2.to_dict() == mocov3.augment2.to_dict()
  with pytest.raises(UserError, match='aug'):
    fusion_cdoa.get_config('aug=strong')


# ----------------------------------------------------------------------------------------------- trainer
# The sweep test below trains the same step (8 devices), so its compilation comes from the cache.
_SHARED_OVERRIDES = {'total_steps': 2, 'model.num_stages': 1, 'fusion.views': 'both'}


def test_runlocal_trains_end_to_end_one_device_equals_eight_and_loads(tmp_path):
  c = runs.tiny_synthetic(fusion_cifar.get_config, steps=_SHARED_OVERRIDES['total_steps'])
  c.model.num_stages = _SHARED_OVERRIDES['model.num_stages']  # the ResNet is not under test: keep it small
  c.fusion.views = _SHARED_OVERRIDES['fusion.views']  # both views, each permuted: the permutations sharded
  # Groups of 8 over 8 devices of 2 examples each: every group spans 4 devices.
  train.train_and_evaluate(c, tmp_path / 'one', devices=jax.devices()[:1])
  train.train_and_evaluate(c, tmp_path / 'eight', devices=jax.devices())
  losses = runs.logged(tmp_path / 'one')
  assert np.isfinite(losses).all() and runs.logged(tmp_path / 'one', 'fusion_change')[0] > 0.01
  np.testing.assert_allclose(losses, runs.logged(tmp_path / 'eight'), rtol=1e-5, atol=1e-6)
  one, eight = runs.final_state(tmp_path / 'one'), runs.final_state(tmp_path / 'eight')
  assert 'fusion' in one['params']
  for a, b in zip(jax.tree.leaves(one['params']), jax.tree.leaves(eight['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # load_encoder rebuilds the fused model from the checkpoint, but its features never run the module:
  # poisoning the module's weights changes nothing.
  encoder = ssl_jax.load_encoder(tmp_path / 'one')
  images = np.asarray(_images((3, 16, 16, 3)))
  features = encoder.embed(images)
  assert features.shape == (3, encoder.feature_dim) and np.isfinite(features).all()
  encoder.params['fusion'] = jax.tree.map(lambda v: v * jnp.nan, encoder.params['fusion'])
  np.testing.assert_array_equal(encoder.embed(images), features)


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
                              '--config.model.num_stages=1 --config.fusion.views=both '
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
  assert sweep.main(argv[:2] + ['--grid', 'fusion.num_blocks=one', '--workdir', str(tmp_path)]) == 2


def test_sweep_collects_results_into_a_table_and_a_plot(tmp_path):
  sweep = _sweep_module()
  for layers in (0, 2):
    for width in (8, 16):
      run = tmp_path / f'fusion.num_blocks={layers},fusion.width={width}'
      run.mkdir()
      (run / 'config.json').write_text(json.dumps({'fusion': {'num_blocks': layers, 'width': width}}))
      (run / 'results.json').write_text(json.dumps({'knn_top1': 0.5 + layers / 10 + width / 100}))
  argv = ['--config', f'{ROOT}/configs/fusion_cifar.py', '--grid', 'fusion.num_blocks=0,2', '--grid',
          'fusion.width=8,16,32', '--workdir', str(tmp_path), '--collect']
  assert sweep.main(argv) == 0
  table = (tmp_path / 'sweep.md').read_text()
  assert '| fusion.num_blocks=2,fusion.width=16 | 2 | 16 | 0.86 |' in table
  assert ('without results yet: fusion.num_blocks=0,fusion.width=32, fusion.num_blocks=2,fusion.width=32'
          in table)
  assert (tmp_path / 'sweep.png').stat().st_size > 1000
