"""Tests for the reference write-ups' networks (segjax.models.sepres_fcn, ...):
parameter counts computed by hand from each write-up's layer list, feature
map shapes per stage at 224x224 (abstractly, with jax.eval_shape: nothing is
computed), and small functional checks. Peer-framework parity is in
tests/parity/test_reference_parity.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import models
from segjax.models import sepres_fcn


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _abstract(model, shape, capture=False):
  """(output, variables[, intermediates]) shapes of model.init at `shape`."""
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  kwargs = {'capture_intermediates': True} if capture else {}
  return jax.eval_shape(lambda: model.init_with_output(
      rngs, jnp.zeros(shape, jnp.float32), train=False, **kwargs))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------- separable residual FCN


def _sepres_counts_by_hand(in_channels=3, classes=12):
  """(trainable, BN statistics) of the write-up's network, layer by layer as
  Keras' model.summary() would list them."""
  sep = lambda cin, cout: 3 * 3 * cin + cin * cout + cout  # Depthwise, pointwise, bias.
  params = 3 * 3 * in_channels * 16 + 16 + 2 * 16  # Stem conv + BN gamma/beta.
  stats = 2 * 16
  for f_in, f_out in ((16, 32), (32, 64), (64, 96), (96, 128)):
    params += sep(f_in, f_in) + sep(f_in, f_in) + sep(f_in, f_out)  # Main path.
    params += sep(f_in, f_out)  # Shortcut.
    params += 2 * (f_in + f_in + f_out + f_out)  # Four BNs.
    stats += 2 * (f_in + f_in + f_out + f_out)
  params += 7 * 7 * 128 * 2048 + 2048  # conv6.
  params += 2048 * 2048 + 2048  # conv7.
  params += 4 * 4 * 2048 * classes  # conv7_4 (no bias).
  params += 96 * classes + classes + 2 * 2 * classes * classes  # pool4_11, pool411_2.
  params += 64 * classes + classes  # pool3_11.
  params += 8 * 8 * classes * classes  # The final x8 transposed conv.
  return params, stats


def test_sepres_fcn_parameter_count_by_hand():
  for in_channels in (3, 6):  # RGB, and the write-up's optional BGR+LAB input.
    _, variables = _abstract(sepres_fcn.SepResFCN(num_classes=12), (1, 224, 224, in_channels))
    want = _sepres_counts_by_hand(in_channels)
    assert (_count(variables['params']), _count(variables['batch_stats'])) == want
  assert _sepres_counts_by_hand() == (17_530_712, 2_144)


def test_sepres_fcn_structure_at_224():
  """Feature maps per stage of the write-up's comments at 224x224: pools at
  112/56/28/14/7 with 16/32/64/96/128 channels, conv6/conv7 7x7x2048, the
  three fused maps at 28x28, logits 224x224x12."""
  model = models.get_model('sepres_fcn', num_classes=12, backbone='sepres_fcn',
                           output_stride=32)
  (logits, state) = _abstract(model, (2, 224, 224, 3), capture=True)
  assert logits.shape == (2, 224, 224, 12) and logits.dtype == jnp.float32
  inter = state['intermediates']
  feats = inter['backbone']['__call__'][0]
  want = {'stride2': (112, 16), 'stride4': (56, 32), 'pool3': (28, 64), 'pool4': (14, 96),
          'pool5': (7, 128)}
  assert {k: (v.shape[1], v.shape[3]) for k, v in feats.items()} == want
  for name, (side, channels) in {'conv6': (7, 2048), 'conv7': (7, 2048),
                                 'upscore_conv7': (28, 12), 'pool4_11': (14, 12),
                                 'upscore_pool4': (28, 12), 'pool3_11': (28, 12),
                                 'upscore_final': (224, 12)}.items():
    assert inter[name]['__call__'][0].shape == (2, side, side, channels), name
  # Each residual block: three separable convs and a separable shortcut, each
  # followed by a BN; no other parameters.
  block = state['params']['backbone']['block3']
  assert sorted(block) == ['bn1', 'bn2', 'bn3', 'sepconv1', 'sepconv2', 'sepconv3',
                           'shortcut', 'shortcut_bn']
  assert block['sepconv1']['depthwise']['kernel'].shape == (3, 3, 1, 64)
  assert block['sepconv3']['pointwise']['kernel'].shape == (1, 1, 64, 96)
  assert block['shortcut']['pointwise']['kernel'].shape == (1, 1, 64, 96)
  for name in ('upscore_conv7', 'upscore_pool4', 'upscore_final'):
    assert set(state['params'][name]) == {'kernel'}  # use_bias=False.


def _small_sepres(**kwargs):
  return sepres_fcn.SepResFCN(num_classes=3, stage_channels=(4, 4, 8, 8, 8), head_channels=8,
                              **kwargs)


@pytest.fixture(scope='module')
def small_sepres():
  model = _small_sepres()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  return model, variables


def test_sepres_fcn_head_recomputed_with_numpy(small_sepres):
  """The head from the encoder's pool3/4/5 with NumPy: 'same' 7x7 conv6 as a
  sum of shifted 1x1 products, ReLU; transposed convs with kernel == stride
  as pixel -> k x k tiles (out[k*i + a, k*j + b] = x[i, j] @ W[a, b])."""
  model, variables = small_sepres
  x = _images((1, 64, 96, 3), seed=1)
  logits = np.asarray(model.apply(variables, x, train=False))
  p = jax.tree.map(np.asarray, variables['params'])
  feats = sepres_fcn.SepResEncoder((4, 4, 8, 8, 8)).apply(
      {'params': variables['params']['backbone'],
       'batch_stats': variables['batch_stats']['backbone']}, x, train=False)
  feats = {k: np.asarray(v, np.float64) for k, v in feats.items()}
  relu = lambda a: np.maximum(a, 0)

  def conv(a, q):
    k = q['kernel'].shape[0]
    pad = k // 2
    ap = np.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros(a.shape[:3] + (q['kernel'].shape[3],))
    for di in range(k):
      for dj in range(k):
        out += ap[:, di:di + a.shape[1], dj:dj + a.shape[2]] @ q['kernel'][di, dj]
    return out + q['bias']

  def tile(a, kernel):
    # Our kernels apply as a correlation over the dilated input: the tile
    # offset (a, b) uses the spatially flipped kernel entry.
    k = kernel.shape[0]
    flipped = kernel[::-1, ::-1]
    b, h, w, _ = a.shape
    out = np.zeros((b, h * k, w * k, kernel.shape[3]))
    for i in range(k):
      for j in range(k):
        out[:, i::k, j::k] = a @ flipped[i, j]
    return out

  y = relu(conv(relu(conv(feats['pool5'], p['conv6'])), p['conv7']))
  y = tile(y, p['upscore_conv7']['kernel'])
  p4 = tile(relu(conv(feats['pool4'], p['pool4_11'])), p['upscore_pool4']['kernel'])
  p3 = relu(conv(feats['pool3'], p['pool3_11']))
  want = tile(y + p4 + p3, p['upscore_final']['kernel'])
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)


def test_sepres_fcn_pads_odd_sizes_and_freezes(small_sepres):
  model, variables = small_sepres
  x = _images((1, 40, 70, 3), seed=2)
  out = model.apply(variables, x, train=False)
  assert out.shape == (1, 40, 70, 3)
  padded = jnp.pad(x, ((0, 0), (0, 24), (0, 26), (0, 0)))
  np.testing.assert_allclose(out, model.apply(variables, padded, train=False)[:, :40, :70],
                             rtol=1e-5, atol=1e-6)
  frozen = _small_sepres(freeze_encoder=True)
  grads = jax.grad(lambda p: jnp.sum(frozen.apply(
      {'params': p, 'batch_stats': variables['batch_stats']}, x, train=False) ** 2))(
          variables['params'])
  assert all(not np.any(g) for g in jax.tree.leaves(grads['backbone']))
  assert np.any(grads['conv6']['kernel'])


@pytest.mark.parametrize('kwargs, needle', [
    ({'backbone': 'vgg16'}, 'vgg16'),
    ({'output_stride': 16}, '16'),
    ({'width_multiplier': 0.5}, '0.5'),
    ({'stage_channels': (16, 32, 64)}, 'stage_channels'),
    ({'head_channels': 0}, 'head_channels'),
    ({'padding': 'REFLECT'}, 'REFLECT'),
])
def test_sepres_fcn_argument_errors(kwargs, needle):
  with pytest.raises(ValueError, match=needle):
    sepres_fcn.SepResFCN(num_classes=12, **kwargs)


# ------------------------------------------------------------------ DeepLab v1 / v2

_VGG16_CONVS = ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512))


def test_deeplabv1_parameter_count_by_hand():
  """VGG-16's 13 convs, fc6 3x3x512x1024, fc7 1x1x1024x1024, fc8 to 21
  classes: 20.5M, the paper's figure for DeepLab-LargeFOV."""
  want = sum(9 * cin * cout + cout for cin, cout in _VGG16_CONVS)
  want += 3 * 3 * 512 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 21 + 21
  _, variables = _abstract(models.get_model('deeplabv1', num_classes=21), (1, 64, 64, 3))
  assert _count(variables['params']) == want == 20_505_429
  assert 'batch_stats' not in variables


def test_deeplabv1_structure_at_321():
  """At the paper's 321x321 crops: pool1-3 halve (161, 81, 41, rounding up),
  pool4/pool5 keep 41x41 (stride 8), fc6 is 3x3 with dilation 12, conv5 has
  dilation 2 (only visible in the output, checked by the parity test)."""
  model = models.get_model('deeplabv1', num_classes=21, backbone='vgg16', output_stride=8)
  logits, state = _abstract(model, (1, 321, 321, 3), capture=True)
  assert logits.shape == (1, 321, 321, 21)
  feats = state['intermediates']['backbone']['__call__'][0]
  assert {k: v.shape[1:] for k, v in feats.items()} == {
      'stride2': (161, 161, 64), 'stride4': (81, 81, 128), 'stride8': (41, 41, 256),
      'stride16': (41, 41, 512), 'stride32': (41, 41, 512)}
  params = state['params']
  assert params['fc6']['kernel'].shape == (3, 3, 512, 1024)
  assert params['fc7']['kernel'].shape == (1, 1, 1024, 1024)
  assert state['intermediates']['fc8']['__call__'][0].shape == (1, 41, 41, 21)


def test_deeplabv2_parameter_count_by_hand():
  """ResNet-101 (torchvision, without fc) + four 3x3 classifiers with bias."""
  stem = 7 * 7 * 3 * 64 + 2 * 64
  resnet = stem
  cin = 64
  for width, blocks in zip((64, 128, 256, 512), (3, 4, 23, 3)):
    for i in range(blocks):
      resnet += cin * width + 9 * width * width + width * 4 * width  # 1x1, 3x3, 1x1.
      resnet += 2 * (width + width + 4 * width)  # Three BNs.
      if i == 0:
        resnet += cin * 4 * width + 2 * 4 * width  # Projection shortcut + BN.
      cin = 4 * width
  assert resnet == 42_500_160  # torchvision resnet101 (44,549,160) minus fc (2,049,000).
  want = resnet + 4 * (9 * 2048 * 21 + 21)
  _, variables = _abstract(models.get_model('deeplabv2', num_classes=21), (1, 64, 64, 3))
  assert _count(variables['params']) == want == 44_048_532
  assert sorted(k for k in variables['params'] if k != 'backbone') == [
      'aspp0', 'aspp1', 'aspp2', 'aspp3']


def test_deeplabv2_structure_at_224():
  model = models.get_model('deeplabv2', num_classes=21, backbone='resnet101', output_stride=8)
  logits, state = _abstract(model, (1, 224, 224, 3), capture=True)
  assert logits.shape == (1, 224, 224, 21)
  feats = state['intermediates']['backbone']['__call__'][0]
  assert {k: v.shape[1:] for k, v in feats.items()} == {
      'stride2': (112, 112, 64), 'stride4': (56, 56, 256), 'stride8': (28, 28, 512),
      'stride16': (28, 28, 1024), 'stride32': (28, 28, 2048)}
  for i in range(4):
    assert state['intermediates'][f'aspp{i}']['__call__'][0].shape == (1, 28, 28, 21)
    assert state['params'][f'aspp{i}']['kernel'].shape == (3, 3, 2048, 21)
  assert model.aspp_rates == (6, 12, 18, 24)


@pytest.mark.parametrize('name, kwargs, needle', [
    ('deeplabv1', {'backbone': 'resnet101'}, 'resnet101'),
    ('deeplabv1', {'output_stride': 16}, '16'),
    ('deeplabv1', {'fc6_dilation': 0}, 'fc6_dilation'),
    ('deeplabv1', {'dropout_rate': 1.0}, 'dropout_rate'),
    ('deeplabv2', {'backbone': 'vgg16'}, 'vgg16'),
    ('deeplabv2', {'output_stride': 32}, '32'),
    ('deeplabv2', {'aspp_rates': (6, 0)}, 'aspp_rates'),
    ('deeplabv2', {'backbone_kwargs': {'nope': 1}}, 'nope'),
])
def test_deeplab_argument_errors(name, kwargs, needle):
  with pytest.raises(ValueError, match=needle):
    models.get_model(name, num_classes=21, **kwargs)


# ------------------------------------------------------------- satellite VGG16-FCN


@pytest.mark.parametrize('variant', ['32s', '16s', '8s'])
def test_fcn_sat_parameter_count_by_hand(variant):
  """VGG-16 convs + 1x1 conv6/conv7 (512) + five 3x3 transposed convs with
  bias (512, 512, 256, 128, 64, 32) + BNs + 1x1 classifier to 7 classes;
  bn1 only where it is used (16s)."""
  params = sum(9 * cin * cout + cout for cin, cout in _VGG16_CONVS)
  params += 2 * (512 * 512 + 512)  # conv6, conv7.
  widths = (512, 512, 256, 128, 64, 32)
  params += sum(9 * cin * cout + cout for cin, cout in zip(widths[:-1], widths[1:]))
  bn_channels = [256, 128, 64, 32] + ([512] if variant == '16s' else [])
  params += 2 * sum(bn_channels)
  params += 32 * 7 + 7
  model = models.get_model(f'fcn{variant}_sat', num_classes=7)
  _, variables = _abstract(model, (1, 64, 64, 3))
  assert _count(variables['params']) == params
  assert _count(variables['batch_stats']) == 2 * sum(bn_channels)
  # The write-up's module defines bn1 in every variant: its state dict has
  # 2 * 512 more parameters (and statistics) in 32s / 8s.
  assert params == {'32s': 19_168_199, '16s': 19_169_223, '8s': 19_168_199}[variant]


@pytest.mark.parametrize('variant', ['32s', '16s', '8s'])
def test_fcn_sat_structure_at_256(variant):
  """The write-up's size comments at 256x256: pool5 8x8x512, deconv1..5 at
  16/32/64/128/256 with 512/256/128/64/32 channels, logits 256x256x7."""
  model = models.get_model(f'fcn{variant}_sat', num_classes=7, backbone='vgg16',
                           output_stride=32)
  logits, state = _abstract(model, (1, 256, 256, 3), capture=True)
  assert logits.shape == (1, 256, 256, 7)
  inter = state['intermediates']
  assert inter['conv7']['__call__'][0].shape == (1, 8, 8, 512)
  calls = {'8s': 2}.get(variant, 1)
  assert len(inter['deconv2']['__call__']) == calls  # 8s: pool4 goes through deconv2 too.
  for i, (side, c) in enumerate(((16, 512), (32, 256), (64, 128), (128, 64), (256, 32)),
                                start=1):
    assert inter[f'deconv{i}']['__call__'][0].shape == (1, side, side, c)
    assert state['params'][f'deconv{i}']['kernel'].shape[:2] == (3, 3)
  assert ('bn1' in state['params']) == (variant == '16s')


def test_fcn_sat_pads_odd_sizes_and_errors():
  model = models.get_model('fcn32s_sat', num_classes=3)
  out, _ = _abstract(model, (1, 50, 70, 3))
  assert out.shape == (1, 50, 70, 3)
  for kwargs, needle in (({'backbone': 'vgg16_bn'}, 'vgg16_bn'), ({'output_stride': 8}, '8'),
                         ({'width_multiplier': 0.5}, '0.5'), ({'variant': '4s'}, '4s')):
    with pytest.raises(ValueError, match=needle):
      models.get_model('fcn32s_sat', num_classes=3, **kwargs)
