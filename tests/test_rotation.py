"""Rotation add-on: the rotation op, the CE, the loss composition, isolation from the SSL loss, the trainer
on 1 vs 8 devices, the recipes, and time to accuracy through the sweep and `ssl_jax.report`."""
import dataclasses
import json
import pathlib
import runpy

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from configs import (byol_cifar10, rotation_cifar, rotation_digits, rotation_imagenet100, selfcon_digits,
                     simsiam_cifar10)
from ssl_jax import losses, methods, recipes, report, train
from ssl_jax.data import augment
from ssl_jax.errors import UserError
from ssl_jax.methods import byol, rotation

import runs

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEIGHT = 0.3


# ----------------------------------------------------------------------------------------------- rotation op
def _reference_rotation(image, degrees):
  """numpy / scipy: exact quarter turns, bilinear turns with zero fill otherwise (counter-clockwise)."""
  if degrees % 90 == 0:
    return np.rot90(image, int(degrees // 90))
  return ndimage.rotate(image, degrees, reshape=False, order=1, mode='grid-constant', cval=0.0)


@pytest.mark.parametrize('num_angles', [2, 4, 8, 12])
def test_each_rotated_image_is_its_source_turned_by_its_labels_angle(num_angles):
  rng = np.random.default_rng(num_angles)
  images = rng.random((6, 2, 9, 9, 3)).astype(np.float32)
  labels = np.stack([np.arange(6) % num_angles, (np.arange(6) + 1) % num_angles], axis=1)
  rotated = np.asarray(jax.jit(augment.rotate_by_label, static_argnums=2)(images, labels, num_angles))
  assert rotated.shape == images.shape
  for b in range(6):
    for v in range(2):
      degrees = labels[b, v] * 360 // num_angles
      expected = _reference_rotation(images[b, v], degrees)
      if degrees % 90 == 0:
        np.testing.assert_array_equal(rotated[b, v], expected)  # a pixel permutation, exactly
      else:
        np.testing.assert_allclose(rotated[b, v], expected, atol=1e-5)
  # Label 1 of the 4-angle set is a 90-degree counter-clockwise turn: the top row becomes the left column.
  if num_angles == 4:
    np.testing.assert_array_equal(rotated[1, 0][:, 0], images[1, 0][0, ::-1])


def test_angle_labels_are_uniform_independent_and_off_the_frameworks_stream():
  labels = np.asarray(rotation.draw_labels(jax.random.key(0), 6000, 4))
  assert labels.shape == (6000, 2) and labels.min() == 0 and labels.max() == 3
  counts = np.bincount(labels.ravel(), minlength=4)
  assert np.all(np.abs(counts / labels.size - 0.25) < 0.02), counts   # > 6 sigma away otherwise
  assert np.mean(labels[:, 0] == labels[:, 1]) == pytest.approx(0.25, abs=0.03)   # views drawn independently
  assert not np.array_equal(labels[:, 0], np.asarray(jax.random.randint(jax.random.key(0), (6000,), 0, 4)))


def test_rotation_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits, labels = rng.normal(size=(7, 4)).astype(np.float32), rng.integers(0, 4, 7)
  shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
  log_prob = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
  np.testing.assert_allclose(losses.rotation_cross_entropy(logits, labels),
                             -log_prob[np.arange(7), labels].mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.rotation_cross_entropy(np.zeros((3, 8)), np.array([0, 5, 7])), np.log(8),
                             rtol=1e-6)


# ----------------------------------------------------------------------------------------------- one step
def _config(framework, **rotation_fields):
  c = rotation_cifar.get_config(f'framework={framework},runlocal,synthetic,rotation=false')
  c.batch_size = 8
  c.model.num_stages = 1   # the add-on does not look inside the encoder; a short one compiles fast
  c.rotation.update(rotation_fields)
  return c


def _numpy_ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(1, keepdims=True)
  return np.mean(np.log(np.exp(shifted).sum(1)) - shifted[np.arange(len(labels)), labels])


@pytest.fixture(scope='module')
def one_step():
  """One BYOL step's quantities: the add-on (w = WEIGHT and w = 0) against the framework alone.

  BYOL exercises the two-branch model (the head reads the online projection) and the EMA target; the trainer
  test below runs SimCLR (encoder + projector model).
  """
  framework = 'byol'
  config = _config(framework, enabled=True, weight=WEIGHT)
  config_0 = _config(framework, enabled=True, weight=0.0)
  base = methods.get_method(_config(framework))
  addon, addon_0 = methods.get_method(config), methods.get_method(config_0)
  model = addon.build_model(config, in_channels=3, rngs=nnx.Rngs(0))
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  ctx = methods.StepContext(config=config, resolution=16, step=jnp.int32(1), total_steps=4,
                            extra=base.init_extra(model, config))
  key = jax.random.key(3)
  batch = {'image': jax.random.randint(jax.random.key(1), (8, 16, 16, 3), 0, 256).astype(jnp.uint8),
           'label': jnp.arange(8) % 3}
  views = np.asarray(jax.jit(lambda k, b: base.make_views(k, b, ctx))(key, batch))
  labels = np.asarray(rotation.draw_labels(key, 8, 4))
  # The reference's rotated copies: numpy quarter turns of views 1 and 2.
  rotated = np.stack([[np.rot90(views[b, m], labels[b, m]) for m in range(2)] for b in range(8)])
  fresh = lambda p: nnx.merge(graphdef, p, jax.tree.map(lambda x: x, stats))
  loss = lambda method, cfg, p: method.loss_fn(fresh(p), views, batch, key,
                                               dataclasses.replace(ctx, config=cfg))

  @jax.jit
  def forward(params):
    total, (metrics, _, _) = loss(addon, config, params)
    ref = fresh(params)
    ref_logits = [ref.rotation_head(ref(rotated[:, m], train=True), train=True) for m in range(2)]
    return dict(total=total, metrics=metrics, base_loss=loss(base, config, params)[0], ref_logits=ref_logits)

  @jax.jit
  def param_grads(params):
    return {name: jax.grad(lambda p: loss(method, cfg, p)[0])(params)
            for name, method, cfg in (('grads_0', addon_0, config_0), ('grads_base', base, config_0))}

  @jax.jit
  def rotated_grads(params, rotated):
    # d/d(rotated copies) of [framework loss, total loss], both from one pass of the add-on's composition.
    def terms(r):
      total, (metrics, _, _) = rotation.combined_loss(base.loss_fn, fresh(params), views, r, labels, batch,
                                                      key, ctx)
      return jnp.stack([metrics['ssl_loss'], total])
    return jax.jacrev(terms)(rotated)

  jac = rotated_grads(params, rotated)
  out = jax.device_get({**forward(params), **param_grads(params), 'ssl_grad_rotated': jac[0],
                        'total_grad_rotated': jac[1]})
  return dict(labels=labels, same_views=addon.make_views is base.make_views, **out)


def test_loss_is_base_plus_weight_times_both_views_ce(one_step):
  s = one_step
  ce = [_numpy_ce(s['ref_logits'][m], s['labels'][:, m]) for m in range(2)]
  np.testing.assert_allclose(s['total'], s['base_loss'] + WEIGHT * (ce[0] + ce[1]), rtol=1e-5)
  np.testing.assert_allclose(s['metrics']['ssl_loss'], s['base_loss'], rtol=1e-6)
  np.testing.assert_allclose(s['metrics']['rotation_loss'], (ce[0] + ce[1]) / 2, rtol=1e-5)
  hits = [np.argmax(s['ref_logits'][m], axis=1) == s['labels'][:, m] for m in range(2)]
  np.testing.assert_allclose(s['metrics']['rotation_top1'], np.mean(hits), rtol=1e-6)
  assert abs(ce[0] + ce[1]) > 0.1   # the term is really there


def test_rotated_copies_do_not_reach_the_ssl_loss(one_step):
  assert not np.any(one_step['ssl_grad_rotated'])
  assert np.abs(one_step['total_grad_rotated']).sum() > 0


def test_weight_zero_trains_exactly_as_the_framework_alone(one_step):
  # Same views, same initial weights, and bit-identical gradients for every parameter: the rotated passes
  # (own BatchNorm batches) and the head leave the framework's training untouched.
  leaves_0, leaves_base = jax.tree.leaves(one_step['grads_0']), jax.tree.leaves(one_step['grads_base'])
  assert len(leaves_0) == len(leaves_base) > 10
  for a, b in zip(leaves_0, leaves_base):
    np.testing.assert_array_equal(a, b)
  assert any(np.any(g) for g in jax.tree.leaves(one_step['grads_base']))
  assert not any(np.any(g) for g in jax.tree.leaves(one_step['grads_0']['rotation_head']))
  assert one_step['same_views']


def test_switched_off_the_addon_is_not_there():
  config = _config('byol', enabled=False, weight=5.0, num_angles=12, head_on='backbone')
  method = methods.get_method(config)
  assert (method.build_model, method.make_views, method.loss_fn) == (byol.build_model, byol.make_views,
                                                                     byol.loss_fn)
  off = method.build_model(config, in_channels=3, rngs=nnx.Rngs(0))
  config.rotation.enabled = True
  on = methods.get_method(config).build_model(config, in_channels=3, rngs=nnx.Rngs(0))
  assert not hasattr(off, 'rotation_head')
  assert set(byol.init_extra(on, config)['target']['params']) == {'encoder', 'projector'}   # no head
  # The head is built after the framework's model: the framework's initial weights are unchanged.
  on_params = nnx.state(on, nnx.Param)
  assert on_params['rotation_head']['out']['kernel'][...].shape == (on.encoder.out_dim, 12)
  for a, b in zip(jax.tree.leaves(nnx.state(off, nnx.Param)), jax.tree.leaves(on_params['online'])
                  + jax.tree.leaves(on_params['predictor'])):
    np.testing.assert_array_equal(a, b)


def test_frameworks_that_do_not_declare_rotation_refuse_it():
  config = selfcon_digits.get_config('runlocal')
  config.rotation = _config('simclr', enabled=True).rotation
  with pytest.raises(UserError, match="rotation.enabled=True does not support method 'selfcon'; use one of "
                     'byol, moco, mocov3, simclr, simsiam, supcon, swav'):
    runs.check(config)


@pytest.mark.parametrize('field, value, expected', [
    ('rotation.weight', -0.1, 'rotation.weight=-0.1'),
    ('rotation.num_angles', 3, 'rotation.num_angles 3 is unknown'),
    ('rotation.head_on', 'predictor', "rotation.head_on 'predictor' is unknown"),
    ('rotation.hidden_dim', -1, 'rotation.hidden_dim=-1'),
    ('num_views', 1, 'two views'),
])
def test_bad_rotation_settings_are_user_errors(field, value, expected):
  config = _config('simclr', enabled=True)
  node, _, leaf = field.rpartition('.')
  (config[node] if node else config)[leaf] = value
  with pytest.raises(UserError, match=expected) as info:
    runs.check(config)   # the two places a config is checked, in the trainer's order
  assert '\n' not in str(info.value)


# ----------------------------------------------------------------------------------------------- recipes
def test_recipes_reproduce_the_papers_grid():
  for (framework, dataset), weight in rotation_cifar.WEIGHTS.items():
    c = rotation_cifar.get_config(f'framework={framework},dataset={dataset}')
    assert (c.method, c.data.name, c.batch_size, c.total_epochs) == (framework, dataset, 512, 200.0)
    assert c.rotation.enabled and c.rotation.weight == weight and c.rotation.num_angles == 4
  # The baseline rows are the existing recipe=rotation200 recipes, with only the kNN interval changed (and the
  # switched-off block's weight, which nothing reads).
  for base in (byol_cifar10, simsiam_cifar10):
    name = base.__name__.split('.')[-1].split('_')[0]
    ours = rotation_cifar.get_config(f'framework={name},dataset=cifar100,rotation=false').to_dict()
    theirs = base.get_config('dataset=cifar100,recipe=rotation200').to_dict()
    assert not ours['rotation']['enabled'] and not theirs['rotation']['enabled']
    same = lambda d: {k: v for k, v in d.items() if k not in ('eval_every_steps', 'rotation')}
    assert same(ours) == same(theirs)
  assert rotation_cifar.get_config('framework=simsiam,dataset=cifar100').rotation.weight == 0.2
  c = rotation_imagenet100.get_config()
  assert (c.method, c.data.name, c.model.stem, c.total_epochs, c.rotation.weight) == (
      'byol', 'imagenet100', 'imagenet', 100.0, pytest.approx(1 / 6))
  assert not rotation_imagenet100.get_config('rotation=false').rotation.enabled
  for get_config, arg in ((rotation_imagenet100.get_config, 'runlocal'),
                          (rotation_digits.get_config, 'runlocal,framework=simclr'),
                          (rotation_digits.get_config, 'runlocal')):
    c = get_config(arg)
    runs.check(c)   # passes the add-on's checks
    assert c.rotation.enabled and methods.get_method(c).name == c.method


# ----------------------------------------------------------------------------------------------- trainer
# The runlocal recipe for SimCLR + rotation (w = 1.0) on 16-px synthetic data with a one-stage encoder (fast
# to compile: the devices, the trainer and the add-on are what is tested). The sweep's test trains the
# same config again, so its candidate run reuses this compiled step through the persistent cache.
_SPEC = f'{ROOT}/configs/rotation_cifar.py:framework=simclr,runlocal,synthetic'
_TINY = ['model.num_stages=1', 'total_steps=3', 'log_every_steps=1', 'data.synthetic_examples=64',
         'data.synthetic_shape=(16, 16, 3)']


def _records(workdir):
  return [json.loads(l) for l in open(workdir / 'metrics.jsonl')]


def test_runlocal_trains_end_to_end_and_one_device_equals_eight(tmp_path):
  c = recipes.load(_SPEC)
  for assignment in _TINY:
    recipes.override(c, assignment)
  c.eval.final = False
  train.train_and_evaluate(c, tmp_path / 'one', devices=jax.devices()[:1])
  train.train_and_evaluate(c, tmp_path / 'eight', devices=jax.devices())
  one, eight = _records(tmp_path / 'one'), _records(tmp_path / 'eight')
  assert len(one) == 3
  for key in ('loss', 'ssl_loss', 'rotation_loss', 'rotation_top1'):
    np.testing.assert_allclose([r[key] for r in one], [r[key] for r in eight], rtol=1e-5, atol=1e-6)
  for r in one:   # one step per record: the logged terms compose exactly as the loss
    np.testing.assert_allclose(r['loss'], r['ssl_loss'] + 1.0 * 2 * r['rotation_loss'], rtol=1e-5)
    assert 0.0 <= r['rotation_top1'] <= 1.0
  a, b = runs.final_state(tmp_path / 'one'), runs.final_state(tmp_path / 'eight')
  assert set(a['params']) == {'encoder', 'projector', 'rotation_head'}
  head = lambda state: jax.tree.leaves(state['params']['rotation_head'])
  step_2 = runs.checkpoints(tmp_path / 'one')[2]
  assert any(np.any(x != y) for x, y in zip(head(a), head(step_2)))   # the head trains
  for x, y in zip(jax.tree.leaves(a['params']), jax.tree.leaves(b['params'])):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------- time to accuracy
def _fake_run(path, knn, *, step_time, results_top1, eval_time=5.0):
  """A run dir: log records every 2 steps, kNN records at the given steps (eval_time each), results.json."""
  path.mkdir(parents=True)
  records, t, last = [], 100.0 + 30.0, 0   # the first log interval holds a 30 s compile
  for step in range(2, 11, 2):
    t += (step - last) * step_time
    records.append({'step': step, 'time': t, 'loss': 1.0})
    last = step
    if step in knn:
      t += eval_time
      records.append({'step': step, 'time': t, 'knn_top1': knn[step]})
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  (path / 'results.json').write_text(json.dumps({'steps': 10, 'knn_top1': results_top1}))
  return path


def test_report_finds_the_first_step_reaching_the_baselines_final_accuracy(tmp_path):
  base = _fake_run(tmp_path / 'baseline', {4: 0.30, 8: 0.52}, step_time=1.0, results_top1=0.55)
  cand = _fake_run(tmp_path / 'candidate', {4: 0.56, 8: 0.70}, step_time=2.0, results_top1=0.72)
  curves = {'baseline': report.knn_curve(base), 'candidate': report.knn_curve(cand)}
  points, sps, steps = curves['candidate']
  # Compile and evaluation time left out: step k is at exactly k x the step time.
  assert sps == pytest.approx(2.0) and steps == 10
  assert [(p.step, p.seconds, p.top1) for p in points] == [(4, 8.0, 0.56), (8, 16.0, 0.70), (10, 20.0, 0.72)]
  summary = report.time_to_accuracy(curves, 'baseline', {'baseline': 5, 'candidate': 5})
  b, c = summary['runs']['baseline'], summary['runs']['candidate']
  assert summary['threshold'] == 0.55
  assert b['reach_step'] == 10 and c['reach_step'] == 4
  assert c['reach_epoch'] == pytest.approx(0.8)
  assert c['reach_seconds'] == pytest.approx(8.0)
  assert b['reach_seconds'] == pytest.approx(10.0)
  assert c['steps_fraction'] == pytest.approx(0.4) and c['step_time_ratio'] == pytest.approx(2.0)
  assert report.first_reaching(points, 0.9) is None
  md = report.time_to_accuracy_markdown(summary)
  assert '| first step reaching the baseline\'s final 55.00% | 10 (epoch 2) | 4 (epoch 0.8) |' in md
  # The CLI: the same table from the run directories (no epochs: the report reads no data).
  assert report.main([str(cand), '--baseline', str(base), '--out', str(tmp_path / 'out')]) == 0
  assert '| 10 | 4 |' in (tmp_path / 'out' / 'time_to_accuracy.md').read_text()


def test_sweep_trains_a_baseline_and_a_candidate_and_reports_time_to_accuracy(tmp_path, capsys):
  sweep_main = runpy.run_path(str(ROOT / 'launch' / 'sweep.py'))['main']  # a script, not in the package
  assert sweep_main(['--config', _SPEC, '--grid', 'config:rotation=false,true', '--workdir', str(tmp_path / 'bad'),
                     '--baseline', 'config:rotation=false', '--config.rotation.weigth=1']) == 2
  assert 'rotation.weigth' in capsys.readouterr().err and not (tmp_path / 'bad').exists()
  # The rotation add-on against its framework, kNN after every step, as the digits measurement does.
  argv = ['--config', _SPEC, '--grid', 'config:rotation=false,true', '--workdir', str(tmp_path / 'cmp'),
          '--baseline', 'config:rotation=false', *[f'--config.{a}' for a in _TINY],
          '--config.eval_every_steps=1', '--config.eval.final=True', '--config.eval.compare_random_init=False']
  assert sweep_main(argv + ['--config.eval_every_steps=0']) == 2   # no kNN curve: refused before any run
  assert 'eval_every_steps' in capsys.readouterr().err and not (tmp_path / 'cmp').exists()
  assert sweep_main(argv) == 0
  capsys.readouterr()
  names = {'baseline': 'config:rotation=false', 'candidate': 'config:rotation=true'}
  out = (tmp_path / 'cmp' / 'time_to_accuracy.md').read_text()
  assert '| steps trained | 3 | 3 |' in out and 'step time / the baseline\'s' in out
  summary = json.loads((tmp_path / 'cmp' / 'time_to_accuracy.json').read_text())
  final = {role: json.loads((tmp_path / 'cmp' / name / 'results.json').read_text())['knn_top1']
           for role, name in names.items()}
  for role, name in names.items():
    records = map(json.loads, open(tmp_path / 'cmp' / name / 'metrics.jsonl'))
    knn = [(r['step'], r['knn_top1']) for r in records if 'knn_top1' in r]
    assert [s for s, _ in knn] == [1, 2]
    reached = [s for s, top1 in knn + [(3, final[role])] if top1 >= final['baseline']]
    assert summary['runs'][name]['reach_step'] == (reached[0] if reached else None)
  assert summary['threshold'] == final['baseline']
  assert (tmp_path / 'cmp' / 'time_to_accuracy.png').stat().st_size > 1000
  assert 'rotation_loss' in _records(tmp_path / 'cmp' / names['candidate'])[0]
  assert 'rotation_loss' not in _records(tmp_path / 'cmp' / names['baseline'])[0]
  assert sweep_main(argv) == 0   # finished runs are reused, not trained again
  assert capsys.readouterr().out.count('done before, skipped') == 2
