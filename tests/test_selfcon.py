"""SelfCon: every variant's loss against a numpy port of the official code, positives, the shared stages,
the exit ensemble, bad config values, and the :runlocal recipe end to end on 1 vs 8 devices."""
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import selfcon_cifar100, selfcon_digits, selfcon_imagenet
from ssl_jax import benchmark, losses, methods, train
from ssl_jax.errors import UserError
from ssl_jax.evaluate import exits, linear_cli as linear
from ssl_jax.evaluate.linear_probe import linear_predict, topk_accuracy, train_linear_probe
from ssl_jax.methods import common, selfcon

import runs

_TAU = 0.1
_LABELS = np.array([0, 0, 1, 2, 2, 2, 3, 4])  # classes 1, 3, 4 appear once: SupCon-S anchors without positive


# ----------------------------------------------------------------------------------------------- numpy port
def _conloss(features, labels=None, *, base, supcon_s=False, fg=False, m_fg=False):
  """The official ConLoss (losses/losses.py), float64: features (N, n_views, D) already L2-normalised."""
  n, v, _ = features.shape
  bsz = n // 2 if m_fg else n
  mask = np.eye(bsz) if labels is None else (labels[:, None] == labels[None, :]).astype(np.float64)
  cols = [features[:, i] for i in range(v)]
  if fg or m_fg:  # anchors: the sub-network columns only; contrast: all columns
    anchor = np.concatenate(cols[:-1])
    contrast = np.concatenate([anchor, cols[-1]])
    anchor_count, contrast_count = (v - 1) * (2 if m_fg else 1), v * (2 if m_fg else 1)
  else:
    anchor = contrast = np.concatenate(cols)
    anchor_count = contrast_count = v
  logits = anchor @ contrast.T / _TAU
  logits = logits - logits.max(axis=1, keepdims=True)
  mask = np.tile(mask, (anchor_count, contrast_count))
  logits_mask = np.ones_like(mask)
  logits_mask[np.arange(len(anchor)), np.arange(len(anchor))] = 0
  mask = mask * logits_mask
  if supcon_s:
    keep = mask.sum(1) != 0
    mask, logits_mask, logits = mask[keep], logits_mask[keep], logits[keep]
  log_prob = logits - np.log((np.exp(logits) * logits_mask).sum(1, keepdims=True))
  with np.errstate(invalid='ignore', divide='ignore'):  # an anchor without positive gives NaN, as in torch
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
  return float(-(_TAU / base) * mean_log_prob_pos.mean())


def _official(z, labels, variant, alpha, base, mu_other_view_positive=False):
  """`main_represent._train` on z (B, V, E, P): views concatenated view-major, exits (sub..., backbone)."""
  z = z / np.linalg.norm(z, axis=-1, keepdims=True)
  b, views, e, _ = z.shape
  v = selfcon.VARIANTS[variant]
  lab = labels if v.labels else None
  per_exit = [np.concatenate([z[:, i, k] for i in range(views)]) for k in range(e)]  # (V·B, P) each
  conloss = functools.partial(_conloss, base=base)
  if not v.sub_network:
    backbone = per_exit[-1]
    if views == 2:
      return conloss(np.stack([backbone[:b], backbone[b:]], 1), lab)
    return conloss(backbone[:, None], lab, supcon_s=True)
  feats = np.stack(per_exit, axis=1)  # (V·B, E, P)
  if views == 1:
    if not alpha:
      return conloss(feats, lab)
    base_term = conloss(per_exit[-1][:, None], lab, supcon_s=True) if lab is not None else 0.0
    return base_term + alpha * conloss(feats, lab, fg=True)
  if not alpha:
    if lab is None and mu_other_view_positive:  # not in the official code: the two views as more columns
      return conloss(np.concatenate([feats[:b], feats[b:]], axis=1), None)
    return conloss(feats, None if lab is None else np.concatenate([lab, lab]))
  backbone = per_exit[-1]
  return conloss(np.stack([backbone[:b], backbone[b:]], 1), lab) + alpha * conloss(feats, lab, m_fg=True)


def _projections(variant, seed=0, p=5):
  v = selfcon.VARIANTS[variant]
  shape = (len(_LABELS), v.views, 2 if v.sub_network else 1, p)
  return np.random.default_rng(seed).normal(size=shape)


# Jitted once per shape: faster than op-by-op dispatch.
_selfcon_loss = jax.jit(losses.selfcon_loss,
                        static_argnames=('temperature', 'anchor_views', 'base_temperature'))
_objective = jax.jit(selfcon.objective, static_argnames=('name', 'alpha', 'temperature', 'base_temperature',
                                                           'mu_other_view_positive'))


@pytest.mark.parametrize('variant, alpha, scaled, mu_switch', [
    ('selfcon', 0.0, True, False), ('selfcon', 0.5, True, False), ('selfcon_m', 0.0, True, False),
    ('selfcon_m', 1.0, False, False), ('selfcon_su', 0.0, True, False), ('selfcon_su', 0.5, True, False),
    ('selfcon_mu', 0.0, True, False), ('selfcon_mu', 0.0, True, True), ('selfcon_mu', 0.7, True, False),
    ('supcon', 0.0, True, False), ('supcon_s', 0.0, False, False)])
def test_objective_matches_the_official_code(variant, alpha, scaled, mu_switch):
  z = _projections(variant)
  got = _objective(jnp.asarray(z, jnp.float32), jnp.asarray(_LABELS), name=variant, alpha=alpha,
                   temperature=_TAU, base_temperature=0.07 if scaled else None,
                   mu_other_view_positive=mu_switch)
  # Scaling off is the official formula with base_temperature = τ (a factor of 1).
  expected = _official(z, _LABELS, variant, alpha, base=0.07 if scaled else _TAU,
                       mu_other_view_positive=mu_switch)
  np.testing.assert_allclose(float(got), expected, rtol=2e-5)


def test_no_selfcon_anchor_is_without_positive():
  # Every label distinct: SupCon-S has no positive at all (the unfiltered official loss is NaN and ours drops
  # every anchor), while every SelfCon anchor still has the image's other exit, so the unfiltered official
  # loss, a mean over ALL anchors, is finite and ours equals it.
  labels = np.arange(len(_LABELS))
  for variant in ('selfcon', 'selfcon_su', 'selfcon_m', 'selfcon_mu'):
    z = _projections(variant, seed=1)
    zn = z / np.linalg.norm(z, axis=-1, keepdims=True)
    every_anchor = _conloss(zn.reshape(len(labels), -1, z.shape[-1]), labels, base=_TAU)
    got = _selfcon_loss(jnp.asarray(z.reshape(len(labels), -1, z.shape[-1]), jnp.float32),
                        jnp.asarray(labels), temperature=_TAU)
    assert np.isfinite(every_anchor)
    np.testing.assert_allclose(float(got), every_anchor, rtol=2e-5)
  zs = _projections('supcon_s', seed=1)[:, :, 0]
  assert np.isnan(_conloss(zs / np.linalg.norm(zs, axis=-1, keepdims=True), labels, base=_TAU))
  assert float(_selfcon_loss(jnp.asarray(zs, jnp.float32), jnp.asarray(labels), temperature=_TAU)) == 0.0


def test_selfcon_loss_with_all_anchors_is_contrastive_loss_and_checks_anchor_views():
  z = jnp.asarray(_projections('selfcon_m', seed=2).reshape(len(_LABELS), 4, -1), jnp.float32)
  contrastive = jax.jit(losses.contrastive_loss, static_argnames='temperature')
  np.testing.assert_allclose(_selfcon_loss(z, jnp.asarray(_LABELS), temperature=0.3),
                             contrastive(z, jnp.asarray(_LABELS), temperature=0.3), rtol=1e-6)
  for bad in ((), (0, 0), (4,)):
    with pytest.raises(ValueError, match='anchor_views'):
      losses.selfcon_loss(z, temperature=0.3, anchor_views=bad)


# ----------------------------------------------------------------------------------------------- model
def test_exits_share_exactly_the_stages_before_the_branch_point():
  c = selfcon_cifar100.get_config('runlocal')  # the `fc` sub-network after stage 2
  model = selfcon.build_model(c, in_channels=3, rngs=nnx.Rngs(0))
  k = c.selfcon.exit_stage
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  images = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))

  @jax.jit
  def sub_only_grads(params):
    feats = lambda p: nnx.merge(graphdef, p, stats).exit_features(images, train=False)
    return jax.grad(lambda p: jnp.sum(jnp.sin(feats(p)[1])))(params)

  grads = sub_only_grads(params)
  nonzero = lambda tree: any(np.any(np.asarray(g)) for g in jax.tree.leaves(tree))
  enc = grads['encoder']
  assert nonzero(enc['stem_conv']) and all(nonzero(enc['stages'][i]) for i in range(k))
  assert nonzero(grads['sub_network'])
  for i in range(k, len(model.encoder.stage_dims)):  # the backbone's later stages: exactly zero
    assert len(jax.tree.leaves(enc['stages'][i])) > 0 and not nonzero(enc['stages'][i])
  assert not nonzero(grads['head'])


def test_exit_ensemble_is_the_mean_of_the_exit_probes():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 20)
  centres = rng.normal(size=(2, 3, 4))
  feats = {name: centres[i][labels] + 1.5 * rng.normal(size=(60, 4))
           for i, name in enumerate(('backbone', 'sub'))}
  train = {n: f[:40] for n, f in feats.items()}
  test = {n: f[40:] for n, f in feats.items()}
  kw = dict(epochs=3, batch_size=8, lr=0.05, seed=0)
  scores = exits.probe_exits(train, labels[:40], test, labels[40:], num_classes=3, **kw)
  assert set(scores) == {'backbone', 'sub', 'ensemble'} and len(scores['ensemble']['top1_per_epoch']) == 3
  probes = {n: train_linear_probe(train[n], labels[:40], num_classes=3, **kw) for n in train}
  mean = np.mean([np.asarray(linear_predict(probes[n], test[n])) for n in probes], axis=0)
  assert scores['ensemble']['top1'] == topk_accuracy(mean, labels[40:])['top1']
  for n in probes:
    assert scores[n]['top1'] == topk_accuracy(linear_predict(probes[n], test[n]), labels[40:])['top1']
  final_only = exits.probe_exits(train, labels[:40], test, labels[40:], num_classes=3, per_epoch=False, **kw)
  assert final_only['ensemble']['top1'] == scores['ensemble']['top1']


def _check_and_build(c):
  """The trainer's order: the schema, the method's checks, then the model (shapes only)."""
  runs.check(c)
  method = methods.get_method(c)
  nnx.eval_shape(lambda: method.build_model(c, in_channels=3, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize('field, value, match', [
    ('variant', 'simclr', 'selfcon.variant'), ('sub_net', 'large', 'selfcon.sub_net'),
    ('exit_stage', 4, 'selfcon.exit_stage'), ('exit_stage', 0, 'selfcon.exit_stage'),
    ('alpha', -1.0, 'selfcon.alpha')])
def test_bad_config_values_are_user_errors(field, value, match):
  c = selfcon_cifar100.get_config('runlocal')
  c.selfcon[field] = value
  with pytest.raises(UserError, match=match):
    _check_and_build(c)


def test_bad_combinations_and_missing_block_are_user_errors():
  c = selfcon_cifar100.get_config('runlocal,variant=supcon')
  c.selfcon.alpha = 0.5
  with pytest.raises(UserError, match='alpha'):
    _check_and_build(c)
  del c['selfcon']
  with pytest.raises(UserError, match='`selfcon`'):
    runs.check(c)


def test_recipes_build_every_variant():
  for variant, v in selfcon.VARIANTS.items():
    c = selfcon_cifar100.get_config(f'runlocal,variant={variant}')
    model = selfcon.build_model(c, in_channels=3, rngs=nnx.Rngs(0))
    assert len(selfcon.host_crops(c)) == v.views == c.num_views
    assert model.exit_names == (('backbone', 'sub') if v.sub_network else ('backbone',))
  for sub_net, blocks in (('small', [3, 1]), ('same', [6, 3])):  # ResNet-34's stages 3-4: 6 and 3 blocks
    c = selfcon_imagenet.get_config('runlocal')
    c.selfcon.sub_net = sub_net
    model = selfcon.build_model(c, in_channels=3, rngs=nnx.Rngs(0))
    assert [len(stage) for stage in model.sub_network.stages] == blocks
  full = selfcon_imagenet.get_config()
  assert (full.model.name, full.selfcon.sub_net, full.batch_size) == ('resnet34', 'same', 2048)


def test_view_major_bn_groups_hold_one_view_on_any_number_of_devices():
  # The official nn.DataParallel splits the view-major batch: each GPU's BatchNorm sees one view only.
  c = selfcon_cifar100.get_config('runlocal,variant=selfcon_m')
  assert c.selfcon.view_major_bn and c.model.bn_group_size == c.batch_size == 16
  c.model.num_stages, c.selfcon.exit_stage = 2, 1
  graphdef, state = nnx.split(selfcon.build_model(c, in_channels=3, rngs=nnx.Rngs(0)))
  views = jax.random.uniform(jax.random.key(0), (16, 2, 16, 16, 3))  # 16 examples: one group per view

  @jax.jit
  def projections(views):
    model = lambda: nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
    one_view_at_a_time = jnp.stack([model()(views[:, v], train=True)[0] for v in (0, 1)], axis=1)
    return (selfcon.project(model(), views, view_major=True)[0],
            selfcon.project(model(), views, view_major=False)[0], one_view_at_a_time)

  view_major, example_major, separate = projections(views)
  np.testing.assert_allclose(view_major, separate, rtol=1e-5, atol=1e-5)
  assert not np.allclose(example_major, separate, atol=1e-3)  # groups of 8 examples x 2 views
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.device_put(views, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')))
  np.testing.assert_allclose(projections(sharded)[0], view_major, rtol=1e-5, atol=1e-5)


def test_digits_recipes_of_the_supervised_methods_end_their_heads_with_batchnorm():
  # Without it their projections collapse on the digits (configs/selfcon_digits.py); the CIFAR/ImageNet
  # recipes keep the official heads.
  from configs import supcon_digits
  digits = [selfcon_digits.get_config(f'variant={v}') for v in selfcon.VARIANTS] + [supcon_digits.get_config()]
  assert all(c.model.head.last_bn for c in digits)
  assert not selfcon_cifar100.get_config().model.head.last_bn


def test_collapse_warning_is_logged_once_after_three_collapsed_logs(caplog):
  # z_std 0.02 with 64-dim projections (0.16 x 1/sqrt(64)): SelfCon's collapsed digits run before last_bn.
  collapsed = {'loss': 8.91, 'lr': 0.3, 'z_std': 0.02, 'pos_cosine': 0.98}
  healthy = {'loss': 5.0, 'lr': 0.3, 'z_std': 0.11, 'pos_cosine': 0.98}  # pos_cosine near 1 alone is fine
  logged = []
  writer = type('Writer', (), {'write': lambda self, step, metrics: logged.append(step)})()
  monitor = common.CollapseMonitor(64)
  sequence = [collapsed, collapsed, healthy] + [collapsed] * 6  # the healthy log restarts the count
  for step, metrics in enumerate(sequence, 1):
    train._log([(step, metrics)], writer, image_size=24, data_metrics={}, collapse=monitor)
  warnings = [r.getMessage() for r in caplog.records if 'collapsed' in r.getMessage()]
  assert logged == list(range(1, 10)) and len(warnings) == 1, warnings
  assert warnings[0].startswith('Step 6:') and 'pos_cosine 0.980' in warnings[0]
  assert 'last_bn=True' in warnings[0]
  quiet = common.CollapseMonitor(64)
  assert all(quiet.update(m) is None for m in [healthy] * 5 + [{'loss': 1.0}] * 5)


def test_benchmark_rejects_bad_input_before_compiling(capsys):
  good = 'configs/selfcon_cifar100.py:runlocal,synthetic'
  assert benchmark.main(['--config', good, '--baseline', 'configs/missing.py']) == 2
  assert benchmark.main(['--config', good, '--baseline', good, '--baseline.selfcon.nope=1']) == 2
  assert benchmark.main(['--config', good, '--baseline', good, '--steps', '-1']) == 2
  errors = capsys.readouterr().err.splitlines()
  assert len(errors) == 3 and all(e.startswith('error: ') for e in errors)


# ----------------------------------------------------------------------------------------------- trainer
def test_runlocal_config_trains_end_to_end(tmp_path):
  # One device vs eight: tests/test_methods.py.
  c = selfcon_cifar100.get_config('runlocal')
  c.total_steps = 2
  c.log_every_steps = 1
  c.eval.compare_random_init = False
  with tfds.testing.mock_data(num_examples=64, data_dir=str(tmp_path / 'tfds')):
    results = train.train_and_evaluate(c, tmp_path / 'run')
    cfg = linear.default_config()
    cfg.epochs = 2
    probe = linear.evaluate_linear(tmp_path / 'run', cfg)
  # The trainer's final evaluation and the linear CLI score every exit and the ensemble.
  for key in ('linear_top1', 'linear_top1_sub', 'linear_top1_ensemble'):
    assert 0.0 <= results[key] <= 1.0
  assert probe['top1'] == probe['exits']['backbone']['top1']
  assert probe['sub_top1'] == probe['exits']['sub']['top1']
  assert len(probe['exits']['ensemble']['top1_per_epoch']) == 2
  assert np.isfinite(runs.logged(tmp_path / 'run')).all()
  params = runs.final_state(tmp_path / 'run')['params']
  assert 'sub_network' in params and 'sub_head' in params
