"""Tests for segjax.models.dsrfcn: shapes at odd sizes, the residual block,
FCN-8s fusion recomputed by hand, parameter count by formula, freezing,
dtypes and argument errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import dsrfcn
from segjax.models import layers

SMALL = (8, 8, 16, 16, 24)  # Small stage widths keep XLA:CPU compiles short.


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _randomize_bn(variables, seed=0):
  """Random BN scale/bias/statistics so BN is not the identity."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ('scale', 'var'):
      return jnp.asarray(0.5 + rng.random(leaf.shape), jnp.float32)
    if name in ('mean',) or (name == 'bias' and leaf.ndim == 1):
      return jnp.asarray(0.2 * rng.standard_normal(leaf.shape), jnp.float32)
    return leaf

  return jax.tree_util.tree_map_with_path(fill, variables)


@pytest.fixture(scope='module')
def small_model():
  model = dsrfcn.DSRFCN(num_classes=3, stage_channels=SMALL)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  return model, _randomize_bn(variables)


def test_shapes_at_odd_sizes(small_model):
  model, variables = small_model
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, _images((2, 37, 53, 3)))
  assert logits.shape == (2, 37, 53, 3) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))
  # Default widths, abstractly: logits and encoder features at a 65x97 input
  # (padded to 96x128).
  big = dsrfcn.DSRFCN(num_classes=21)
  out, abstract = jax.eval_shape(lambda: big.init_with_output(
      jax.random.key(0), jnp.zeros((1, 65, 97, 3)), train=False))
  assert out.shape == (1, 65, 97, 21)
  enc = dsrfcn.DSRFCNEncoder()
  feats = jax.eval_shape(lambda: enc.init_with_output(
      jax.random.key(0), jnp.zeros((1, 96, 128, 3)), train=False))[0]
  for i, (key, c) in enumerate(zip(dsrfcn._STRIDE_KEYS, dsrfcn.DEFAULT_STAGE_CHANNELS)):
    s = 2 ** (i + 1)
    assert feats[key].shape == (1, 96 // s, 128 // s, c), key
  assert set(abstract['params']) == {'backbone', 'score8', 'score16', 'score32'}


def test_residual_block_is_elu_of_main_plus_shortcut():
  """Zeroing the main path's last BN (scale and bias) leaves ELU(shortcut(x)),
  the shortcut computed by a separate SeparableConv with the same weights."""
  block = dsrfcn.ResidualSeparableBlock(8)
  x = _images((1, 12, 10, 4), seed=1)
  variables = _randomize_bn(block.init(jax.random.key(1), x, train=False), seed=1)
  full = block.apply(variables, x, train=False)

  shortcut = layers.SeparableConv(8, 3, act=None).apply(
      {'params': variables['params']['shortcut'],
       'batch_stats': variables['batch_stats']['shortcut']}, x, train=False)
  zeroed = jax.tree.map(lambda a: a, variables)
  bn = zeroed['params']['conv3']['bn_pw']
  zeroed['params']['conv3']['bn_pw'] = {'scale': jnp.zeros_like(bn['scale']),
                                        'bias': jnp.zeros_like(bn['bias'])}
  only_shortcut = block.apply(zeroed, x, train=False)
  np.testing.assert_allclose(only_shortcut, jax.nn.elu(shortcut), rtol=1e-5, atol=1e-6)
  # The main path does contribute with the real weights.
  assert np.max(np.abs(np.asarray(full) - np.asarray(only_shortcut))) > 1e-2
  assert full.shape == (1, 12, 10, 8)


@pytest.mark.parametrize('hw', ((64, 96), (50, 70)))
def test_fcn8_fusion_recomputed_by_hand(small_model, hw):
  """Logits == crop(up(up(up(s32) + s16) + s8)) of 1x1 score convs on the
  encoder's stride-8/16/32 features, the encoder run on its own."""
  model, variables = small_model
  x = _images((1, *hw, 3), seed=2)
  logits = model.apply(variables, x, train=False)
  ph, pw = -hw[0] % 32, -hw[1] % 32
  xp = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
  feats = dsrfcn.DSRFCNEncoder(SMALL).apply(
      {'params': variables['params']['backbone'],
       'batch_stats': variables['batch_stats']['backbone']}, xp, train=False)

  def score(name, f):
    p = variables['params'][name]
    return np.einsum('bhwc,ck->bhwk', np.asarray(f), np.asarray(p['kernel'][0, 0])) + p['bias']

  def up(y, like):
    return jax.image.resize(y, (*y.shape[:1], *like.shape[1:3], y.shape[3]), 'bilinear')

  s8, s16, s32 = (score(f'score{s}', feats[f'stride{s}']) for s in (8, 16, 32))
  want = up(up(up(s32, s16) + s16, s8) + s8, xp)[:, :hw[0], :hw[1]]
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)


def test_fusion_gradients_reach_all_three_score_convs(small_model):
  model, variables = small_model
  x = _images((1, 64, 64, 3), seed=3)
  target = _images((1, 64, 64, 3), seed=4)

  def loss(params):
    out = model.apply({**variables, 'params': params}, x, train=False)
    return jnp.sum(out * target)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  for name in ('score8', 'score16', 'score32'):
    assert float(jnp.max(jnp.abs(grads[name]['kernel']))) > 0, name
  assert float(jnp.max(jnp.abs(grads['backbone']['stage0']['conv1']['conv_pw']['kernel']))) > 0


def test_freeze_encoder_stops_gradients_and_bn_updates(small_model):
  _, variables = small_model
  model = dsrfcn.DSRFCN(num_classes=3, stage_channels=SMALL, freeze_encoder=True,
                        dropout_rate=0.0)
  x = _images((2, 32, 32, 3), seed=5)

  def loss(params):
    out, state = model.apply({**variables, 'params': params}, x, train=True,
                             mutable=['batch_stats'])
    return jnp.sum(out ** 2), state

  grads, state = jax.jit(jax.grad(loss, has_aux=True))(variables['params'])
  assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(grads['backbone']))
  assert float(jnp.max(jnp.abs(grads['score32']['kernel']))) > 0
  jax.tree.map(np.testing.assert_array_equal, state['batch_stats']['backbone'],
               variables['batch_stats']['backbone'])


def _expected_params(widths, num_classes):
  """Parameter count from the architecture description."""
  def sep(cin, cout):  # depthwise 3x3 + BN, pointwise 1x1 + BN (no biases).
    return 9 * cin + 2 * cin + cin * cout + 2 * cout

  total = 3 * 3 * 3 * widths[0] + 2 * widths[0]  # Stem conv + BN.
  cin = widths[0]
  for c in widths:
    total += sep(cin, c) + sep(c, c) + sep(c, c) + sep(cin, c)  # 3 convs + shortcut.
    cin = c
  total += sum((c + 1) * num_classes for c in widths[2:])  # score8/16/32 with bias.
  return total


@pytest.mark.parametrize('width', (1.0, 0.5))
def test_param_count_matches_formula(width):
  model = dsrfcn.DSRFCN(num_classes=21, width_multiplier=width)
  _, abstract = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  widths = (32, 64, 128, 256, 512) if width == 1.0 else (16, 32, 64, 128, 256)
  assert _count(abstract['params']) == _expected_params(widths, 21)
  assert _expected_params(widths, 21) == (1_109_407 if width == 1.0 else 292_591)
  stage4 = abstract['params']['backbone']['stage4']['conv3']['conv_pw']['kernel']
  assert stage4.shape == (1, 1, widths[4], widths[4])


def test_bfloat16_compute_gives_float32_logits(small_model):
  model, variables = small_model
  x = _images((1, 40, 36, 3), seed=6)
  ref = model.apply(variables, x, train=False)
  bf16 = dsrfcn.DSRFCN(num_classes=3, stage_channels=SMALL, dtype='bfloat16')
  out = bf16.apply(variables, x, train=False)
  assert out.dtype == jnp.float32 and out.shape == ref.shape
  err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
  assert err < 5e-2, err


@pytest.mark.parametrize('kwargs, needle', [
    ({'backbone': 'resnet50'}, "'resnet50'"),
    ({'output_stride': 16}, 'output_stride 16'),
    ({'num_classes': 0}, 'num_classes 0'),
    ({'width_multiplier': 0.0}, 'width_multiplier 0.0'),
    ({'stage_channels': (32, 64)}, 'stage_channels (32, 64)'),
    ({'stage_channels': (32, 64, 128, 256, 0)}, 'stage_channels'),
    ({'dropout_rate': 1.0}, 'dropout_rate 1.0'),
    ({'padding': 'VALID'}, "'VALID'"),
    ({'depthwise_impl': 'cudnn'}, "'cudnn'"),
    ({'dtype': 'int8'}, "'int8'"),
])
def test_bad_fields_raise_naming_the_value(kwargs, needle):
  args = {'num_classes': 3, **kwargs}
  with pytest.raises(ValueError) as info:
    dsrfcn.DSRFCN(**args)
  assert needle in str(info.value)


def test_encoder_rejects_unpadded_input():
  enc = dsrfcn.DSRFCNEncoder(SMALL)
  with pytest.raises(ValueError, match=r'\(40, 64\)'):
    enc.init(jax.random.key(0), jnp.zeros((1, 40, 64, 3)), train=False)
