"""ViT encoders: parameter counts (timm's), shapes, the sin-cos position embedding, the frozen patch
projection, the learned position embedding at another size, the stem hook, bfloat16 compute."""
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mocov3_cifar10
from ssl_jax import models
from ssl_jax.errors import UserError
from ssl_jax.models import vit

import runs

# timm's vit_{tiny,small,base}_patch16_224 without the classifier head (total minus 1000 x (width + 1)).
# From the architecture: patch 16·16·3·D + D, class token D, learned positions 197·D, per block
# 12·D² + 13·D (2 LayerNorms, qkv, projection, 4x MLP), final LayerNorm 2·D; 12 blocks:
# D=192: 5,524,416; D=384: 21,665,664; D=768: 85,798,656. The fixed sin-cos positions are no parameter.
TIMM_COUNTS = {'vit_tiny': (192, 5_524_416), 'vit_small': (384, 21_665_664), 'vit_base': (768, 85_798_656)}


@pytest.mark.parametrize('name', sorted(TIMM_COUNTS))
def test_parameter_counts_equal_timms(name):
  dim, expected = TIMM_COUNTS[name]
  assert 969 * dim + 12 * (12 * dim * dim + 13 * dim) == expected
  for pos_embed, count in (('learned', expected), ('sincos', expected - 197 * dim)):
    model = nnx.eval_shape(lambda: models.create_encoder(name, pos_embed=pos_embed, rngs=nnx.Rngs(0)))
    assert sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == count
    assert model.out_dim == dim and model.min_input_size == 16
  assert models.family(name) == 'vit' and models.family('resnet18') == 'resnet'


def _tiny(**kw):
  # ViT-S at width 1/12: 12 heads of 2 = 24 channels; 2 blocks; 4-px patches.
  options = dict(width=1 / 16, num_stages=2, patch_size=4, image_size=16, rngs=nnx.Rngs(0))
  return models.create_encoder('vit_small', **{**options, **kw})


def test_shapes_pooling_and_bad_sizes():
  x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
  model = _tiny()
  assert model.out_dim == 24 and len(model.blocks) == 2
  token = model(x, train=True)
  assert token.shape == (3, 24) and token.dtype == jnp.float32
  # The class token after the final LayerNorm: zero mean, unit variance over the channels (scale 1, bias 0).
  np.testing.assert_allclose(token.mean(axis=1), 0.0, atol=1e-5)
  np.testing.assert_allclose(token.var(axis=1), 1.0, rtol=1e-3)
  avg = _tiny(pool='avg')(x, train=True)
  assert avg.shape == (3, 24) and not np.allclose(avg, token)
  assert _tiny()(jnp.zeros((2, 24, 24, 3)), train=False).shape == (2, 24)  # any multiple of the patch
  with pytest.raises(ValueError, match='more than the 12 blocks'):   # would silently build 13
    _tiny(num_stages=13)


@pytest.mark.parametrize('model, match', [
    ({'pool': 'max'}, "model.pool 'max' is unknown; use one of: token, avg"),     # the schema's rules
    ({'pos_embed': 'rope'}, "model.pos_embed 'rope' is unknown; use one of: sincos, learned"),
    ({'patch_size': 0}, r'model.patch_size=0 is out of range'),
    ({'patch_size': 3}, r'image size 16 is not a multiple of model.patch_size=3'),   # check_run's
    ({'num_stages': 13}, r'model.num_stages=13 \(blocks kept\) is out of range for vit_small; use 1..12'),
    ({'num_heads': 5}, 'model.num_heads=5 does not divide the vit_small width 384'),
    ({'num_heads': 3, 'width': 1 / 64}, 'divisible by 4, got 6'),   # 3 heads x 2 channels
])
def test_bad_vit_configs_are_user_errors(model, match):
  c = runs.tiny_synthetic(mocov3_cifar10.get_config)
  c.model.update(model)
  with pytest.raises(UserError, match=match):
    runs.check(c)
  c.model.pos_embed = 'learned'   # needs no width divisible by 4
  if 'width' in model:
    runs.check(c)


def test_sincos_embedding_is_moco_v3s():
  # vits.py: grid_w, grid_h = torch.meshgrid(arange(w), arange(h)) ('ij'), then sin/cos of the flattened
  # grid_w and grid_h times omega; tokens are patches in row-major order.
  h = w = 3
  dim, quarter = 16, 4
  grid_w, grid_h = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64), indexing='ij')
  omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
  out_w, out_h = np.outer(grid_w.ravel(), omega), np.outer(grid_h.ravel(), omega)
  expected = np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], axis=1)
  np.testing.assert_allclose(vit.sincos_position_embedding(h, w, dim), expected, atol=1e-6)
  table = _tiny().position_embedding(4, 4)
  assert table.shape == (1, 17, 24) and not np.any(table[0, 0])  # the class token's position is zero


def _patch_grads(model, x):
  """Gradients of a loss with respect to every variable of `model` (params and the rest)."""
  graphdef, state = nnx.split(model)

  def loss(state):
    return jnp.sum(nnx.merge(graphdef, state)(x, train=True) ** 2)

  return jax.grad(loss)(state)


def test_frozen_patch_projection_gets_no_gradient_and_no_optimizer():
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  frozen, trained = _tiny(freeze_patch_embed=True), _tiny()
  # Same random projection either way; frozen, it is not a parameter, so no optimizer updates or decays it.
  np.testing.assert_array_equal(frozen.patch_kernel[...], trained.patch_kernel[...])
  assert isinstance(frozen.patch_kernel, vit.Frozen) and isinstance(trained.patch_kernel, nnx.Param)
  params = nnx.state(frozen, nnx.Param)
  assert 'patch_kernel' not in params and 'patch_bias' not in params
  assert 'patch_kernel' in nnx.state(frozen, nnx.BatchStat)
  grads = _patch_grads(frozen, x)
  assert not np.any(grads['patch_kernel'][...]) and not np.any(grads['patch_bias'][...])
  assert np.any(grads['blocks'][0]['fc1']['kernel'][...])
  assert np.any(_patch_grads(trained, x)['patch_kernel'][...])
  np.testing.assert_allclose(frozen(x, train=True), trained(x, train=True), rtol=1e-6)


def test_learned_positions_resize_and_stem_hook():
  model = _tiny(pos_embed='learned')
  table = model.pos_embed[...]
  assert table.shape == (1, 17, 24)
  np.testing.assert_array_equal(model.position_embedding(4, 4), table)
  assert model.position_embedding(6, 6).shape == (1, 37, 24)
  x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 3))
  assert model(jnp.zeros((2, 24, 24, 3)), train=True).shape == (2, 24)
  # The stem hook sees the patch embeddings (B, H/p, W/p, D) before the positions are added.
  seen = []
  same = model(x, train=True, after_stem=lambda t: seen.append(t.shape) or t)
  np.testing.assert_array_equal(same, model(x, train=True))
  assert seen == [(2, 4, 4, 24)]
  assert not np.allclose(model(x, train=True, after_stem=lambda t: 0 * t), same)


def test_bfloat16_compute_stays_close_to_float32():
  x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 3))
  f32 = _tiny()(x, train=True)
  bf16 = _tiny(dtype=jnp.bfloat16)(x, train=True)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, f32, atol=0.1)
  assert not np.array_equal(bf16, f32)
