"""`losses.contrastive_loss` (NT-Xent / SupCon) against an independent float64 numpy reference, optax, and
its numerical contracts (masking, dtypes, gradients, jit, sharding)."""
import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import losses

# Shared jitted versions: one compile per shape instead of one per primitive op keeps the file fast.
_loss = jax.jit(losses.contrastive_loss, static_argnames='temperature')
_value_and_grad = jax.jit(jax.value_and_grad(losses.contrastive_loss), static_argnames='temperature')


def _logsumexp(x: np.ndarray) -> float:
  m = x.max()
  return float(m + np.log(np.exp(x - m).sum()))


def _reference(features, labels, temperature, form='out', no_positive='exclude') -> float:
  """The spec, written out anchor by anchor in float64 (`form`, `no_positive`: see contrastive_loss)."""
  b, v, d = features.shape
  z = np.asarray(features, np.float64).reshape(b * v, d)  # row n·V + i is view i of example n
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  example_ids = np.arange(b) if labels is None else np.asarray(labels)
  ids = np.repeat(example_ids, v)
  sim = z @ z.T / temperature
  anchor_losses = []
  for a in range(b * v):
    others = [j for j in range(b * v) if j != a]
    positives = [j for j in others if ids[j] == ids[a]]
    if not positives:
      if no_positive == 'zero':
        anchor_losses.append(0.0)
      continue
    log_denominator = _logsumexp(sim[a, others])
    if form == 'in':  # -log Σ_p softmax_p
      anchor_losses.append(log_denominator - _logsumexp(sim[a, positives]))
    else:             # mean_p -log softmax_p
      anchor_losses.append(np.mean([log_denominator - sim[a, p] for p in positives]))
  return float(np.mean(anchor_losses)) if anchor_losses else 0.0


def _features(seed, b, v, d, dtype=np.float32):
  return np.random.default_rng(seed).normal(size=(b, v, d)).astype(dtype)


@pytest.mark.parametrize('b,v,d,temperature', [
    (2, 2, 3, 0.5), (8, 2, 16, 0.1), (5, 3, 8, 0.2), (16, 2, 32, 1.0), (6, 3, 4, 0.07),
])
def test_no_labels_matches_numpy(b, v, d, temperature):
  x = _features(b * 100 + v, b, v, d)
  got = _loss(jnp.asarray(x), temperature=temperature)
  np.testing.assert_allclose(float(got), _reference(x, None, temperature), rtol=1e-5)


def test_golden_value_identical_views():
  # Two examples on orthogonal axes, both views identical: each anchor sees its positive at similarity 1 and
  # the two vectors of the other example at 0, so the loss is log(1 + 2·exp(-1/τ)).
  x = np.zeros((2, 2, 4), np.float32)
  x[0, :, 0] = 3.0
  x[1, :, 1] = 0.5
  got = _loss(jnp.asarray(x), temperature=0.5)
  np.testing.assert_allclose(float(got), np.log1p(2 * np.exp(-2.0)), rtol=1e-6)


@pytest.mark.parametrize('b,temperature', [(4, 0.5), (12, 0.1)])
def test_two_views_matches_optax_ntxent(b, temperature):
  # optax.ntxent treats every pair of rows with equal labels as positives; for each (anchor, positive) pair
  # its denominator holds the negatives plus that one positive, and it averages over pairs. With V = 2 and
  # labels = example index, every anchor has exactly one positive, so this is the same quantity as ours.
  # With more views or repeated labels optax leaves the other positives out of each denominator and weights
  # anchors by their positive count, which is not SupCon's L_out, so those cases are not compared.
  x = _features(b, b, 2, 16)
  ids = np.repeat(np.arange(b), 2)
  expected = optax.losses.ntxent(jnp.asarray(x.reshape(2 * b, 16)), jnp.asarray(ids), temperature=temperature)
  got = _loss(jnp.asarray(x), temperature=temperature)
  np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)


def test_labels_equal_to_example_index_is_simclr():
  x = jnp.asarray(_features(3, 6, 2, 8))
  np.testing.assert_allclose(float(_loss(x, jnp.arange(6), temperature=0.3)),
                             float(_loss(x, temperature=0.3)), rtol=1e-6)


@pytest.mark.parametrize('v,labels', [
    (2, [0, 1, 0, 2, 1, 0, 3, 3]),
    (3, [1, 1, 1, 1, 0, 2]),
    (2, [5, 5, 5, 5]),  # a single class: every other vector is a positive
])
def test_supcon_matches_numpy(v, labels):
  labels = np.array(labels)
  x = _features(len(labels), len(labels), v, 8)
  got = _loss(jnp.asarray(x), jnp.asarray(labels), temperature=0.2)
  np.testing.assert_allclose(float(got), _reference(x, labels, 0.2), rtol=1e-5)


def test_single_view_drops_anchors_without_positives():
  labels = np.array([0, 0, 1, 2, 2, 2, 3])  # labels 1 and 3 appear once: those anchors have no positive
  x = _features(7, 7, 1, 8)
  got = _loss(jnp.asarray(x), jnp.asarray(labels), temperature=0.5)
  assert np.isfinite(float(got))
  expected = _reference(x, labels, 0.5)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  # Left out, not averaged in as zeros: a mean over all 7 anchors would be 5/7 of the mean over the 5 kept.
  assert not np.isclose(float(got), expected * 5 / 7, rtol=1e-2)
  _, grad = _value_and_grad(jnp.asarray(x), jnp.asarray(labels), temperature=0.5)
  assert np.all(np.isfinite(grad))


_loss_switched = jax.jit(jax.value_and_grad(losses.contrastive_loss),
                         static_argnames=('temperature', 'form', 'no_positive', 'chunk_size'))


@pytest.mark.parametrize('form', losses.SUPCON_FORMS)
@pytest.mark.parametrize('no_positive', losses.NO_POSITIVE_RULES)
@pytest.mark.parametrize('v,labels', [
    (1, [0, 0, 1, 2, 2, 2, 3, 4]),   # 8 anchors, 3 without a positive
    (2, [0, 1, 0, 2, 1, 0, 3, 3]),
    (3, [1, 1, 1, 1, 0, 2]),
])
def test_forms_and_no_positive_rules_match_numpy(form, no_positive, v, labels):
  labels = np.array(labels)
  x = _features(17 + v, len(labels), v, 8)
  got, grad = _loss_switched(jnp.asarray(x), jnp.asarray(labels), temperature=0.1, form=form,
                             no_positive=no_positive)
  np.testing.assert_allclose(float(got), _reference(x, labels, 0.1, form, no_positive), rtol=1e-5)
  assert np.all(np.isfinite(grad))


def test_l_in_is_never_above_l_out_and_rules_differ_by_the_share_of_anchors_with_positives():
  labels = jnp.asarray([0, 0, 1, 2, 2, 2, 3, 4])
  x = jnp.asarray(_features(23, 8, 1, 8))
  value = lambda **kw: float(_loss_switched(x, labels, temperature=0.1, **kw)[0])
  # Jensen: log of the mean positive probability >= mean of the logs; the sum adds log(#positives) > 0.
  assert value(form='in') < value(form='out')
  # SupContrast's rule averages 3 zeros in with the 5 kept anchors: 5/8 of the SelfCon-style mean.
  np.testing.assert_allclose(value(no_positive='zero'), value(no_positive='exclude') * 5 / 8, rtol=1e-6)
  # Chunked anchors give the same L_in.
  np.testing.assert_allclose(float(_loss_switched(x, labels, temperature=0.1, form='in', chunk_size=3)[0]),
                             value(form='in'), rtol=1e-6)


def test_supcon_recipe_is_solo_learns_and_its_loss_block_reaches_the_loss():
  from configs import supcon_cifar10
  from ssl_jax.methods import common
  c = supcon_cifar10.get_config()
  assert (c.loss.supcon_form, c.loss.temperature, c.optimizer.weight_decay, c.optimizer.base_lr) == (
      'in', 0.2, 1e-5, 0.4)
  assert not c.model.head.use_bn and c.model.head.out_dim == 256
  labels = np.array([0, 0, 1, 2, 2, 2, 3, 4])
  x = _features(29, 8, 1, 8)
  for form, rule in (('in', 'exclude'), ('out', 'zero')):
    c.loss.supcon_form, c.loss.no_positive = form, rule
    got = common.contrastive_objective(jnp.asarray(x), jnp.asarray(labels), c.loss)
    np.testing.assert_allclose(float(got), _reference(x, labels, 0.2, form, rule), rtol=1e-5)


def test_unknown_form_or_rule_is_a_value_error():
  x = jnp.asarray(_features(0, 4, 2, 8))
  with pytest.raises(ValueError, match='form'):
    losses.contrastive_loss(x, temperature=0.1, form='both')
  with pytest.raises(ValueError, match='no_positive'):
    losses.contrastive_loss(x, temperature=0.1, no_positive='nan')


def test_single_view_without_labels_is_zero_with_finite_gradient():
  x = jnp.asarray(_features(0, 5, 1, 8))
  loss, grad = _value_and_grad(x, temperature=0.1)
  assert float(loss) == 0.0
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad, 0.0)


def test_bfloat16_input_gives_float32_loss_close_to_float32():
  x = _features(11, 8, 2, 16)
  x_bf16 = jnp.asarray(x, jnp.bfloat16)
  got = _loss(x_bf16, temperature=0.1)
  assert got.dtype == jnp.float32
  assert np.isfinite(float(got))
  # The arithmetic after the input is float32: same value as float32 on the bf16-rounded features ...
  rounded = np.asarray(x_bf16.astype(jnp.float32))
  np.testing.assert_allclose(float(got), _reference(rounded, None, 0.1), rtol=1e-5)
  # ... and only the input rounding (8 mantissa bits) separates it from the float32 loss.
  np.testing.assert_allclose(float(got), _reference(x, None, 0.1), rtol=2e-2)


@pytest.mark.parametrize('labels', [None, np.array([0, 1, 0])])
def test_gradient_matches_finite_differences(labels):
  x = jnp.asarray(_features(5, 3, 2, 4))
  fn = lambda f: _loss(f, None if labels is None else jnp.asarray(labels), temperature=0.5)
  jax.test_util.check_grads(fn, (x,), order=1, modes=['rev'], eps=1e-3)
  assert np.all(np.isfinite(_value_and_grad(x, None if labels is None else jnp.asarray(labels),
                                             temperature=0.5)[1]))


@pytest.mark.parametrize('scale', [1e-3, 0.5, 40.0])
def test_scale_invariant(scale):
  x = _features(2, 8, 2, 16)
  base = _loss(jnp.asarray(x), temperature=0.2)
  scaled = _loss(jnp.asarray(x * scale), temperature=0.2)
  np.testing.assert_allclose(float(scaled), float(base), rtol=1e-5)


def test_loss_decreases_under_gradient_descent():
  labels = jnp.asarray(np.arange(16) % 4)
  x = jnp.asarray(_features(9, 16, 2, 8))
  history = []
  for _ in range(10):
    loss, grad = _value_and_grad(x, labels, temperature=0.2)
    history.append(float(loss))
    x = x - 5.0 * grad  # features have norm ~3, so the gradient on the sphere is small
  assert all(b < a for a, b in zip(history, history[1:])), history
  assert history[-1] < 0.7 * history[0], history


@pytest.mark.parametrize('with_labels', [False, True])
def test_jit_matches_eager(with_labels):
  x = jnp.asarray(_features(4, 8, 3, 8))
  labels = jnp.asarray(np.arange(8) % 3) if with_labels else None
  eager = losses.contrastive_loss(x, labels, temperature=0.3)
  np.testing.assert_allclose(float(_loss(x, labels, temperature=0.3)), float(eager), rtol=1e-6)


@pytest.mark.parametrize('with_labels', [False, True])
def test_sharded_batch_matches_unsharded(with_labels):
  # Auto axes, as in `ssl_jax.sharding.make_mesh`: the loss is global-array code and relies on GSPMD to
  # place the reshape and the (B·V)² similarity matrix. (With jax.make_mesh's default Explicit axes those
  # ops would need explicit out_sharding annotations.)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  x = _features(8, 16, 2, 8)
  labels = np.arange(16) % 5 if with_labels else None
  batch_sharding = NamedSharding(mesh, P('data'))
  x_sharded = jax.device_put(x, batch_sharding)
  labels_sharded = None if labels is None else jax.device_put(labels, batch_sharding)
  labels_whole = None if labels is None else jnp.asarray(labels)
  assert len(x_sharded.sharding.device_set) == 8

  loss, grad = _value_and_grad(x_sharded, labels_sharded, temperature=0.2)
  loss_1, grad_1 = _value_and_grad(jnp.asarray(x), labels_whole, temperature=0.2)
  np.testing.assert_allclose(float(loss), float(loss_1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_1), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(loss), _reference(x, labels, 0.2), rtol=1e-5)
