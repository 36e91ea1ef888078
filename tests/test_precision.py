"""Mixed precision: the `model.dtype` switch; each method's bfloat16 step keeps float32 state and logits."""
from flax import nnx
import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import (byol_cifar10, common as config_common, fusion_cifar, moco_cifar10, repmix_cifar10,
                     rotation_cifar, selfcon_cifar100, simclr_cifar10, simsiam_cifar10, supcon_cifar10)
from ssl_jax import config_schema, methods, optim
from ssl_jax.errors import UserError
from ssl_jax.evaluate import online_probe
from ssl_jax.models import compute_dtype, precision

_SMALL = 'runlocal,synthetic'
# Rotation on SimSiam: its cheapest framework (BYOL, the recipe's default, is covered on its own).
_RECIPES = {'simclr': (simclr_cifar10, _SMALL), 'supcon': (supcon_cifar10, _SMALL),
            'byol': (byol_cifar10, _SMALL), 'simsiam': (simsiam_cifar10, _SMALL),
            'moco': (moco_cifar10, _SMALL), 'selfcon': (selfcon_cifar100, _SMALL),
            'repmix': (repmix_cifar10, _SMALL), 'fusion': (fusion_cifar, _SMALL),
            'rotation': (rotation_cifar, _SMALL + ',framework=simsiam')}
# Primitives that sum, exponentiate or take logs: none of them may see a bfloat16 operand anywhere in a step.
_FLOAT32_ONLY = ('reduce_sum', 'reduce_max', 'reduce_prod', 'cumsum', 'dot_general', 'exp', 'log', 'log1p',
                 'logistic', 'rsqrt', 'sqrt')
_BATCH = 8


def test_dtype_switch_and_auto():
  assert compute_dtype('float32') == jnp.float32 and compute_dtype('bfloat16') == jnp.bfloat16
  for backend, expected in (('cpu', jnp.float32), ('gpu', jnp.bfloat16), ('cuda', jnp.bfloat16),
                            ('tpu', jnp.bfloat16)):
    assert compute_dtype('auto', backend) == expected
  # The default is 'auto', which on the CPU (where the suite runs) is float32: CPU results are unchanged.
  assert config_common.base_config().model.dtype == 'auto'
  assert compute_dtype('auto') == jnp.float32
  with pytest.raises(ValueError, match='float16'):
    compute_dtype('float16')
  c = simclr_cifar10.get_config('runlocal,synthetic')
  c.model.dtype = 'half'
  with pytest.raises(UserError, match="model.dtype 'half' is unknown; use one of: float32, bfloat16, auto"):
    config_schema.validate(c)


def test_bias_gradient_is_summed_in_float32():
  x = jnp.ones((64, 8, 8, 2), jnp.bfloat16)

  def bias_grad(promote):
    conv = nnx.Conv(2, 3, (1, 1), dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0),
                    **({'promote_dtype': promote} if promote else {}))
    graphdef, params = nnx.split(conv)
    loss = lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x).astype(jnp.float32))
    return jax.jit(jax.grad(loss))(params, x)['bias'][...]  # x an argument: XLA would constant-fold it

  # d(sum y)/d(bias) = the number of output positions, 4096: bfloat16 accumulation gets it wrong.
  np.testing.assert_array_equal(bias_grad(precision.promote_keeping_bias_float32), 4096.0)
  assert not np.all(np.asarray(bias_grad(None)) == 4096.0)


# ----------------------------------------------------------------------------------------------- every method
def _config(name: str, dtype: str):
  """The recipe's `:runlocal,synthetic` config, shrunk further: one ResNet-18 stage (two for SelfCon)."""
  module, arg = _RECIPES[name]
  c = module.get_config(arg)
  c.model.dtype = dtype
  c.batch_size = _BATCH
  c.model.num_stages = 1
  if name == 'selfcon':  # a sub-network of convolutions (not 'fc'), so it runs in bfloat16 too
    c.model.num_stages, c.selfcon.exit_stage, c.selfcon.sub_net, c.model.bn_group_size = 2, 1, 'small', 0
  if name == 'moco':
    c.moco.queue_size = 2 * _BATCH
  if name == 'fusion':
    c.fusion.width = 8
  return c


def _batch():
  rng = np.random.default_rng(0)
  image = lambda: jnp.asarray(rng.integers(0, 256, (_BATCH, 16, 16, 3)), jnp.uint8)
  return {'image': image(), 'partner': image(), 'label': jnp.asarray(np.arange(_BATCH) % 3, jnp.int32)}


def _values(abstract, rng):
  """Concrete values for an abstract nnx.State: kernels ~ N(0, 1/fan_in), BatchNorm scales and variances 1,
  scalars (the fusion gate α) 0.5 so that every branch reaches the loss, the rest 0.

  Drawn with numpy because the models' own initialisers compile one small program per new shape, which
  costs seconds per method here; the initial values do not matter to what is tested.
  """
  def leaf(path, x):
    if len(x.shape) >= 2:
      return rng.normal(size=x.shape) / np.sqrt(np.prod(x.shape[:-1]))
    if not x.shape:
      return np.float32(0.5)
    return np.ones(x.shape) if path[-2].key in ('scale', 'var') else np.zeros(x.shape)
  return jax.tree_util.tree_map_with_path(lambda p, x: jnp.asarray(leaf(p, x), x.dtype), abstract)


def _setup(name: str):
  """(config, method, graphdef) for float32 and for bfloat16, and one (params, stats, extra) for both."""
  variants = []
  for dtype in ('float32', 'bfloat16'):
    config = _config(name, dtype)
    method = methods.get_method(config)
    abstract = nnx.eval_shape(lambda: method.build_model(config, in_channels=3, rngs=nnx.Rngs(0)))
    graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    variants.append((config, method, graphdef))
  rng = np.random.default_rng(0)
  params, stats = _values(params, rng), _values(stats, rng)
  extra = method.init_extra(nnx.merge(graphdef, params, stats), config)
  return variants, (params, stats, extra)


def _context(config, extra):
  return methods.StepContext(config=config, resolution=16, step=jnp.int32(0), total_steps=10, extra=extra)


def _loss(method, config, graphdef, params, stats, extra, views, batch):
  model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, stats))
  loss, (_, extra, features) = method.loss_fn(model, views, batch, jax.random.key(1), _context(config, extra))
  return loss, (extra, features, nnx.state(model, nnx.BatchStat))


def _one_step(method, config, graphdef, tx, probe_tx, state, views, batch):
  """The trainer's update (`ssl_jax.train.make_train_step`) without sharding: loss, optimizer, EMA, probe."""
  params, stats, opt_state, extra, probe = state
  loss_of = lambda p: _loss(method, config, graphdef, p, stats, extra, views, batch)
  (loss, (extra, features, stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
  probe, _ = online_probe.update(probe, probe_tx, features, batch['label'])
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  extra = method.after_update(extra, params, _context(config, extra))
  return loss, (params, stats, opt_state, extra, probe)


def _equations(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs nested in it (jit, custom_jvp, remat, scan, cond)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax_core.ClosedJaxpr):
          yield from _equations(sub.jaxpr)
        elif isinstance(sub, jax_core.Jaxpr):
          yield from _equations(sub)


def _operand_dtypes(eqn) -> set:
  return {v.aval.dtype for v in eqn.invars if hasattr(v.aval, 'dtype')}


def _forward_loss(config, method, graphdef, *args):
  """The loss, compiled without XLA's backend optimisations: a third of the compile time, same arithmetic."""
  fn = jax.jit(lambda *a: _loss(method, config, graphdef, *a)[0])
  return fn.lower(*args).compile(compiler_options={'xla_backend_optimization_level': 0})(*args)


@pytest.mark.parametrize('name', list(_RECIPES))
def test_method_steps_in_bfloat16_with_float32_state_and_logits(name):
  (f32, (config, method, graphdef)), (params, stats, extra) = _setup(name)
  batch = _batch()
  num_views = 4 if name == 'repmix' else len(method.host_crops(config))  # RepMix: 2 clean + 2 augmented images
  views = jnp.asarray(np.random.default_rng(1).uniform(size=(_BATCH, num_views, 16, 16, 3)), jnp.float32)
  tx, _ = optim.create_optimizer(config.optimizer, batch_size=_BATCH, total_steps=10, steps_per_epoch=5)
  encoder_dim = nnx.merge(graphdef, params, stats).encoder.out_dim
  probe_tx = online_probe.optimizer(config.probe, total_steps=10)
  probe = online_probe.init(encoder_dim, 3, probe_tx)
  state = (params, stats, tx.init(params), extra, probe)

  # One bfloat16 step, traced only: the state it returns and the precision of every operation in it.
  step = lambda s: _one_step(method, config, graphdef, tx, probe_tx, s, views, batch)
  jaxpr, (loss_shape, new_state) = jax.make_jaxpr(step, return_shape=True)(state)
  assert loss_shape.dtype == jnp.float32, loss_shape
  floats = [x.dtype for x in jax.tree.leaves(new_state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert set(floats) == {jnp.dtype(jnp.float32)}, set(floats)
  assert jax.tree.leaves(new_state[1])  # BatchNorm statistics exist (and are float32, above)
  eqns = list(_equations(jaxpr.jaxpr))
  bf16 = jnp.dtype(jnp.bfloat16)
  assert any(e.primitive.name == 'conv_general_dilated' and bf16 in _operand_dtypes(e) for e in eqns)
  wrong = {e.primitive.name for e in eqns if e.primitive.name in _FLOAT32_ONLY and bf16 in _operand_dtypes(e)}
  assert not wrong, f'bfloat16 operands of {wrong}'
  assert any(e.primitive.name == 'exp' and _operand_dtypes(e) == {jnp.dtype(jnp.float32)} for e in eqns)

  # The loss in bfloat16 is finite and close to the float32 one (same params, views and batch).
  want = _forward_loss(*f32, params, stats, extra, views, batch)
  got = _forward_loss(config, method, graphdef, params, stats, extra, views, batch)
  assert got.dtype == jnp.float32 and np.isfinite(got)
  np.testing.assert_allclose(got, want, rtol=0.01, atol=0.005)  # measured: < 0.3%, SimSiam 4e-4
