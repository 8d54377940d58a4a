"""Tests for segjax.models: shapes, dtypes, BN freezing, output stride, dilation,
padding, the registry, and parameter counts checked against published numbers.

XLA:CPU compiles slowly (a jitted random init of a whole model takes ~15 s on 2
cores), so shape and count checks use jax.eval_shape (no compilation) and forward
passes use numpy-filled variables with model.init's structure.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from segjax import models
from segjax.models import layers
from segjax.models.backbones import mobilenet_v2
from segjax.models.backbones import xception


def rng_key(seed):
  # RngBitGenerator keys compile faster on XLA:CPU than threefry ones.
  return jax.random.key(seed, impl='rbg')


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_init(model, shape, **kwargs):
  """Shapes/dtypes of (output, variables) of model.init, without computing."""
  return jax.eval_shape(
      lambda: model.init_with_output({'params': rng_key(0), 'dropout': rng_key(1)},
                                     jnp.zeros(shape, jnp.float32), train=False, **kwargs))


def fake_variables(model, shape, seed=0):
  """He-scaled numpy-random variables with the structure model.init gives."""
  _, abstract = abstract_init(model, shape)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape), jnp.float32)
    if name in ('scale', 'var'):
      return jnp.ones(leaf.shape, jnp.float32)
    return jnp.zeros(leaf.shape, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def apply_eval(model, variables, x):
  return model.apply(variables, x, train=False)


@functools.partial(jax.jit, static_argnums=0)
def apply_train(model, variables, x, key):
  return model.apply(variables, x, train=True, mutable=['batch_stats'],
                     rngs={'dropout': key})


def tree_equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


# ----------------------------------------------------------------------------- registry


def test_registry_and_get_model():
  assert models.MODELS == {
      'deeplabv3': models.DeepLabV3, 'deeplabv3plus': models.DeepLabV3Plus, 'unet': models.UNet,
      'fcn32s': models.FCN32s, 'fcn16s': models.FCN16s, 'fcn8s': models.FCN8s,
      'segnet': models.SegNet, 'bayesian_segnet': models.BayesianSegNet,
      'dsrfcn': models.DSRFCN, 'sepres_fcn': models.SepResFCN,
      'deeplabv1': models.DeepLabV1, 'deeplabv2': models.DeepLabV2,
      'fcn32s_sat': models.FCN32sSat, 'fcn16s_sat': models.FCN16sSat,
      'fcn8s_sat': models.FCN8sSat}
  m = models.get_model('deeplabv3plus', num_classes=5, dtype='bfloat16', aspp_rates=[1, 2, 3],
                       aspp_channels=32)
  assert isinstance(m, models.DeepLabV3Plus)
  assert m.dtype == jnp.bfloat16 and m.aspp_rates == (1, 2, 3) and m.aspp_channels == 32
  m = models.get_model('unet', num_classes=3, output_stride=32, dtype=jnp.float32,
                       decoder_filters=(64, 32, 16, 8))
  assert isinstance(m, models.UNet) and m.decoder_filters == (64, 32, 16, 8)
  for name in models.MODELS:
    accepted = models.model_kwargs(name)
    for key in ('num_classes', 'backbone', 'output_stride', 'width_multiplier',
                'freeze_encoder', 'dtype', 'bn_momentum', 'bn_epsilon', 'padding'):
      assert key in accepted, (name, key)


@pytest.mark.parametrize('name, kwargs, needles', [
    ('segformer', {}, ['segformer', 'deeplabv3plus', 'unet']),
    ('deeplabv3plus', {'aspp_chanels': 8}, ['aspp_chanels', 'aspp_channels']),
    ('unet', {'aspp_channels': 8, 'output_stride': 32}, ['aspp_channels', 'decoder_filters']),
    ('unet', {'output_stride': 16}, ['output_stride', '16']),
    ('unet', {'output_stride': 32, 'backbone': 'xception65'}, ['xception65']),
    ('deeplabv3plus', {'backbone': 'efficientnet_b0'}, ['efficientnet_b0']),
    ('deeplabv3plus', {'backbone': 'resnet50', 'width_multiplier': 0.5}, ['resnet50', '0.5']),
    ('deeplabv3plus', {'output_stride': 4}, ['output_stride', '4']),
    ('deeplabv3plus', {'backbone': 'xception65', 'width_multiplier': 0.5}, ['0.5']),
    ('deeplabv3plus', {'dtype': 'float64'}, ['float64']),
    ('deeplabv3plus', {'padding': 'REFLECT'}, ['REFLECT']),
    ('deeplabv3plus', {'depthwise_impl': 'fft'}, ['fft']),
    ('deeplabv3plus', {'aspp_rates': (6, 0, 18)}, ['aspp_rates']),
    ('unet', {'output_stride': 32, 'decoder_filters': (64, 32)}, ['decoder_filters']),
])
def test_get_model_errors_name_the_culprit(name, kwargs, needles):
  with pytest.raises(ValueError) as e:
    models.get_model(name, num_classes=3, **kwargs)
  for needle in needles:
    assert needle in str(e.value)


# ----------------------------------------------------------------------------- layers


def test_resize_bilinear_half_pixel_centres():
  x = jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1)
  y = layers.resize_bilinear(x, (1, 4))
  # align_corners=False: output pixel centres at (i + 0.5) / 2 - 0.5 in input units.
  np.testing.assert_allclose(y[0, 0, :, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
  # Downsampling is plain bilinear (no antialias), like tf.image.resize.
  x = jnp.arange(4.0).reshape(1, 1, 4, 1)
  np.testing.assert_allclose(layers.resize_bilinear(x, (1, 2))[0, 0, :, 0], [0.5, 2.5])


def test_padding_conventions():
  # TF 'SAME', stride 2 on an even size: the extra pad goes bottom/right.
  assert layers.conv_padding('SAME', 3, 2, 1, in_hw=(4, 6)) == [(0, 1), (0, 1)]
  assert layers.conv_padding('SAME', 3, 2, 1, in_hw=(5, 7)) == [(1, 1), (1, 1)]
  assert layers.conv_padding('SAME', 3, 1, 2, in_hw=(5, 8)) == [(2, 2), (2, 2)]
  # timm/torch-style symmetric padding.
  assert layers.conv_padding('SYMMETRIC', 3, 2, 1) == [(1, 1), (1, 1)]
  assert layers.conv_padding('SYMMETRIC', 3, 1, 4) == [(4, 4), (4, 4)]
  assert layers.conv_padding('SYMMETRIC', 1, 2, 1) == [(0, 0), (0, 0)]
  with pytest.raises(ValueError, match='VALID'):
    layers.conv_padding('VALID', 3)

  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  kernel = {'params': {'kernel': jnp.ones((3, 3, 1, 1))}}
  same = layers.DepthwiseConv(3, strides=2, padding='SAME').apply(kernel, x)
  sym = layers.DepthwiseConv(3, strides=2, padding='SYMMETRIC').apply(kernel, x)
  assert same[0, 0, 0, 0] == x[0, :3, :3].sum()  # Window rows/cols 0..2.
  assert sym[0, 0, 0, 0] == x[0, :2, :2].sum()   # Window rows/cols -1..1.


def _dilated_depthwise_reference(x, kernel, stride, dilation, pads):
  return lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                  rhs_dilation=(dilation, dilation),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  feature_group_count=x.shape[-1],
                                  precision=lax.Precision.HIGHEST)


def test_depthwise_impls_agree_with_dilated_lax_conv():
  cases = [(size, stride, dilation, padding)
           for size in ((9, 11), (8, 12))
           for stride, dilation in ((1, 1), (2, 1), (1, 2), (1, 3), (2, 2))
           for padding in ('SAME', 'SYMMETRIC')]
  rng = np.random.default_rng(0)
  xs = [jnp.asarray(rng.normal(size=(2, *size, 5)), jnp.float32) for size, *_ in cases]
  kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 5)), jnp.float32)

  @jax.jit
  def run(xs, kernel):
    out = []
    for x, (size, stride, dilation, padding) in zip(xs, cases):
      pads = layers.conv_padding(padding, 3, stride, dilation, in_hw=size)
      ref = _dilated_depthwise_reference(x, kernel, stride, dilation, pads)
      got = [layers.depthwise_conv(x, kernel, strides=stride, dilation=dilation, pads=pads,
                                   impl=impl) for impl in ('xla', 'shift')]
      out.append((ref, *got))
    # Gradients of both formulations agree too (stride 2, dilation 2 case).
    x, (size, stride, dilation, padding) = xs[-1], cases[-1]
    pads = layers.conv_padding(padding, 3, stride, dilation, in_hw=size)
    grads = [jax.grad(lambda x, k, impl=impl: jnp.sum(jnp.sin(layers.depthwise_conv(
        x, k, strides=stride, dilation=dilation, pads=pads, impl=impl))), argnums=(0, 1))(
            x, kernel) for impl in ('xla', 'shift')]
    return out, grads

  out, grads = run(xs, kernel)
  for case, (ref, xla_out, shift_out) in zip(cases, out):
    np.testing.assert_allclose(xla_out, ref, atol=1e-4, err_msg=str(case))
    np.testing.assert_allclose(shift_out, ref, atol=1e-4, err_msg=str(case))
  for g_xla, g_shift in zip(*grads):
    np.testing.assert_allclose(g_shift, g_xla, atol=1e-4)


def test_conv_and_separable_apply_dilation():
  x = images((1, 10, 12, 4))
  eps = 1e-5
  conv = layers.ConvBNAct(3, 3, dilation=2, act=None, bn_epsilon=eps)
  variables = fake_variables(conv, x.shape)
  y = conv.apply(variables, x, train=False)
  ref = lax.conv_general_dilated(x, variables['params']['conv']['kernel'], (1, 1),
                                 [(2, 2), (2, 2)], rhs_dilation=(2, 2),
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                 precision=lax.Precision.HIGHEST)
  # Inference BN with mean 0, var 1, scale 1, bias 0 is x / sqrt(1 + eps).
  np.testing.assert_allclose(y, ref / np.sqrt(1 + eps), atol=1e-4)

  sep = layers.SeparableConv(6, 3, dilation=3, act=None, bn_epsilon=eps)
  variables = fake_variables(sep, x.shape)
  p = variables['params']
  y = sep.apply(variables, x, train=False)
  ref = _dilated_depthwise_reference(x, p['conv_dw']['kernel'], 1, 3, [(3, 3), (3, 3)])
  ref = jnp.einsum('bhwc,cd->bhwd', ref / np.sqrt(1 + eps), p['conv_pw']['kernel'][0, 0],
                   precision=lax.Precision.HIGHEST) / np.sqrt(1 + eps)
  np.testing.assert_allclose(y, ref, atol=1e-4)


# ----------------------------------------------------------------------------- backbones


_NOMINAL_STRIDES = dict(stride2=2, stride4=4, stride8=8, stride16=16, stride32=32,
                       block_1_expand_relu=2, block_3_expand_relu=4, block_6_expand_relu=8,
                       block_13_expand_relu=16, block_16_project=32)


@pytest.mark.parametrize('backbone, sizes', [
    ('mobilenetv2', [(32, 32), (33, 47), (36, 52)]),
    ('xception65', [(33, 47)]),
])
def test_backbone_stride_shapes(backbone, sizes):
  if backbone == 'mobilenetv2':
    make = lambda os: mobilenet_v2.MobileNetV2(0.35, output_stride=os)
    channels = dict(stride2=48, stride4=48, stride8=96, stride16=192, stride32=112,
                    block_1_expand_relu=48, block_3_expand_relu=48, block_6_expand_relu=96,
                    block_13_expand_relu=192, block_16_project=112)
  else:
    make = lambda os: xception.Xception65(output_stride=os)
    channels = dict(stride2=128, stride4=256, stride8=728, stride16=1024, stride32=2048)
  ceil = lambda n, s: -(-n // s)
  for size in sizes:
    for output_stride in (8, 16, 32):
      feats, _ = abstract_init(make(output_stride), (1, *size, 3))
      assert set(feats) == set(channels)
      for k, c in channels.items():
        s = min(_NOMINAL_STRIDES[k], output_stride)  # Dilated beyond output_stride.
        assert feats[k].shape == (1, ceil(size[0], s), ceil(size[1], s), c), (k, size)


def test_output_stride_schedules():
  # TF-slim/timm convention: the block that would pass output_stride runs at
  # stride 1 with the old rate; the blocks after it use the doubled rate.
  specs = {s.name: s for s in mobilenet_v2.block_specs(1.0, 8)}
  assert (specs['block_6'].stride, specs['block_6'].dilation) == (1, 1)
  assert all(specs[f'block_{i}'].dilation == 2 for i in range(7, 14))
  assert specs['block_13'].stride == 1
  assert all(specs[f'block_{i}'].dilation == 4 for i in (14, 15, 16))
  specs16 = {s.name: s for s in mobilenet_v2.block_specs(1.0, 16)}
  assert (specs16['block_13'].stride, specs16['block_13'].dilation) == (1, 1)
  assert specs16['block_14'].dilation == 2 and specs16['block_6'].stride == 2
  assert all(s.dilation == 1 for s in mobilenet_v2.block_specs(1.0, 32))

  blocks = xception.xception65_blocks(16)
  assert [b.stride for b in blocks[:3]] == [2, 2, 2]
  assert (blocks[19].stride, blocks[19].dilation, blocks[20].dilation) == (1, 1, 2)
  blocks = xception.xception65_blocks(8)
  assert (blocks[2].stride, blocks[2].dilation) == (1, 1)
  assert all(b.dilation == 2 for b in blocks[3:20]) and blocks[20].dilation == 4


def test_mobilenet_dilation_is_applied_in_the_backbone():
  # At output_stride 8 block_14's depthwise conv must be a rate-4 conv of
  # relu6(block_14_expand_BN output).
  module = mobilenet_v2.MobileNetV2(0.35, output_stride=8)
  x = images((1, 64, 64, 3))
  variables = fake_variables(module, x.shape)

  @jax.jit
  def run(variables, x):
    _, state = module.apply(variables, x, train=False, capture_intermediates=True,
                            mutable=['intermediates'])
    return state['intermediates']

  inter = run(variables, x)
  inp = layers.relu6(inter['block_14_expand_BN']['__call__'][0])
  out = inter['block_14_depthwise']['__call__'][0]
  kernel = variables['params']['block_14_depthwise']['kernel']
  assert out.shape[1:3] == (8, 8)
  ref = _dilated_depthwise_reference(inp, kernel, 1, 4, [(4, 4), (4, 4)])
  np.testing.assert_allclose(out, ref, atol=1e-3, rtol=1e-4)
  undilated = _dilated_depthwise_reference(inp, kernel, 1, 1, [(1, 1), (1, 1)])
  assert not np.allclose(out, undilated, atol=1e-2)


# ----------------------------------------------------------------------------- counts

# Keras MobileNetV2(include_top=False) count, written out: every conv is
# bias-free; each BN has 2 trainable (gamma, beta) and 2 non-trainable (moving
# mean, variance) values per channel.
def keras_mobilenet_v2_counts(alpha, last_conv=True, last_project_bn=True):
  md = mobilenet_v2.make_divisible
  trainable = non_trainable = 0

  def bn(c):
    nonlocal trainable, non_trainable
    trainable += 2 * c
    non_trainable += 2 * c

  c_in = md(32 * alpha, 8)
  trainable += 3 * 3 * 3 * c_in  # Conv1
  bn(c_in)
  for t, c, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                     (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
    for i in range(n):
      c_out = md(int(c * alpha), 8)
      if t != 1:
        trainable += c_in * c_in * t  # expand 1x1
        bn(c_in * t)
      trainable += 3 * 3 * c_in * t  # depthwise 3x3
      bn(c_in * t)
      trainable += c_in * t * c_out  # project 1x1
      if last_project_bn or (c, i) != (320, 0):
        bn(c_out)
      c_in = c_out
  if last_conv:
    last = md(1280 * alpha, 8) if alpha > 1.0 else 1280
    trainable += c_in * last  # Conv_1
    bn(last)
  return trainable, non_trainable


def xception65_count():
  """timm xception65 without its head: bias-free convs, BN weight + bias."""
  def sep(c_in, c_out):  # conv_dw + bn_dw + conv_pw + bn_pw
    return 9 * c_in + 2 * c_in + c_in * c_out + 2 * c_out

  def module(c_in, outs, stride=1, no_skip=False):
    n, c = 0, c_in
    for o in outs:
      n, c = n + sep(c, o), o
    if not no_skip and (outs[-1] != c_in or stride != 1):
      n += c_in * outs[-1] + 2 * outs[-1]  # 1x1 conv + BN shortcut
    return n

  n = 3 * 3 * 3 * 32 + 2 * 32 + 3 * 3 * 32 * 64 + 2 * 64  # stem
  n += module(64, (128,) * 3, 2) + module(128, (256,) * 3, 2) + module(256, (728,) * 3, 2)
  n += 16 * module(728, (728,) * 3)
  n += module(728, (728, 1024, 1024), 2) + module(1024, (1536, 1536, 2048), no_skip=True)
  return n


def deeplab_head_count(c_deep, c_low, num_classes, aspp=256, low=48, dec=256):
  """ASPP + decoder params: convs bias-free except the classifier; BN 2/channel."""
  sep = lambda c_in, c_out: 9 * c_in + 2 * c_in + c_in * c_out + 2 * c_out
  n = c_deep * aspp + 2 * aspp                 # aspp0: 1x1
  n += 3 * sep(c_deep, aspp)                   # three separable atrous branches
  n += c_deep * aspp + 2 * aspp                # image pooling 1x1
  n += 5 * aspp * aspp + 2 * aspp              # projection
  n += c_low * low + 2 * low                   # low-level 1x1
  n += sep(aspp + low, dec) + sep(dec, dec)    # decoder
  n += dec * num_classes + num_classes         # classifier with bias
  return n


def test_mobilenet_v2_counts_match_keras():
  # keras.applications.MobileNetV2(include_top=False, alpha=1.0).summary():
  # "Total params: 2,257,984 / Trainable params: 2,223,872 / Non-trainable
  # params: 34,112" (printed in the TF "Transfer learning and fine-tuning"
  # tutorial); alpha=0.35: "Total params: 410,208 / Trainable params: 396,128 /
  # Non-trainable params: 14,080". Keras' include_top=False keeps Conv_1 (1280).
  published = {1.0: (2_223_872, 34_112), 0.35: (396_128, 14_080)}
  for alpha, (trainable, non_trainable) in published.items():
    assert keras_mobilenet_v2_counts(alpha) == (trainable, non_trainable)
  for alpha in (0.35, 1.0, 1.4):
    _, v = abstract_init(mobilenet_v2.MobileNetV2(alpha, include_last_conv=True),
                         (1, 32, 32, 3))
    assert (count(v['params']), count(v['batch_stats'])) == keras_mobilenet_v2_counts(alpha)
  for alpha in (0.35, 1.0):
    _, v = abstract_init(mobilenet_v2.MobileNetV2(alpha), (1, 32, 32, 3))
    assert (count(v['params']), count(v['batch_stats'])) == keras_mobilenet_v2_counts(
        alpha, last_conv=False)


def test_unet_counts_match_tf_tutorial():
  # TF "Image segmentation" tutorial, unet_model(output_channels=3) on
  # 128x128x3, model.summary(): "Total params: 6,504,227 / Trainable params:
  # 4,660,323 / Non-trainable params: 1,843,904"; its frozen down_stack alone:
  # "Total params: 1,841,984" (MobileNetV2 up to block_16_project, the conv
  # before block_16_project_BN). Non-trainable = 1,841,984 + 1,920 decoder BN
  # moving statistics (2 * (512 + 256 + 128 + 64)).
  model = models.get_model('unet', num_classes=3, output_stride=32)
  out, v = abstract_init(model, (1, 128, 128, 3))
  assert out.shape == (1, 128, 128, 3)
  assert count(v) == 6_504_227
  backbone = count(v['params']['backbone']) + count(v['batch_stats']['backbone'])
  assert backbone == 1_841_984
  assert backbone == sum(keras_mobilenet_v2_counts(1.0, last_conv=False,
                                                   last_project_bn=False))
  decoder_params = count(v['params']) - count(v['params']['backbone'])
  assert decoder_params == 4_660_323
  assert count(v['batch_stats']) - count(v['batch_stats']['backbone']) == 1_920


def test_xception65_and_deeplab_counts():
  # timm xception65: 39.92M params with its 2048 -> 1000 classifier
  # (timm results tables; model card "Params (M): 39.9").
  with_head = xception65_count() + 2048 * 1000 + 1000
  assert with_head == 39_916_312 and round(with_head / 1e6, 2) == 39.92

  model = models.get_model('deeplabv3plus', num_classes=21, backbone='xception65')
  out, v = abstract_init(model, (1, 33, 33, 3))
  assert out.shape == (1, 33, 33, 21) and out.dtype == jnp.float32
  assert count(v['params']['backbone']) == xception65_count()
  assert count(v['params']) == xception65_count() + deeplab_head_count(2048, 256, 21)

  for alpha in (1.0, 0.35):
    model = models.get_model('deeplabv3plus', num_classes=21, width_multiplier=alpha)
    _, v = abstract_init(model, (1, 32, 32, 3))
    backbone, _ = keras_mobilenet_v2_counts(alpha, last_conv=False)
    # Deep feature: block_16 project (320 * alpha rounded); low-level:
    # block_3_expand_relu (6 * 24 * alpha rounded).
    c_deep = mobilenet_v2.make_divisible(int(320 * alpha))
    c_low = 6 * mobilenet_v2.make_divisible(int(24 * alpha))
    assert count(v['params']['backbone']) == backbone
    assert count(v['params']) == backbone + deeplab_head_count(c_deep, c_low, 21)


# ----------------------------------------------------------------------------- models


@pytest.fixture(scope='module')
def deeplab_mnv2():
  """A tiny DeepLabV3+-MobileNetV2 and variables shaped like its model.init."""
  model = models.get_model('deeplabv3plus', num_classes=5, width_multiplier=0.35,
                           aspp_channels=32, decoder_channels=32, low_level_channels=16)
  return model, fake_variables(model, (2, 36, 52, 3))


def test_deeplab_mobilenet_forward_and_train_state(deeplab_mnv2):
  model, variables = deeplab_mnv2
  # The documented init call (traced; a real init compiles for ~15 s on CPU and
  # runs in tests/test_train.py).
  abstract = jax.eval_shape(lambda: model.init({'params': jax.random.key(0),
                                                'dropout': jax.random.key(1)},
                                               jnp.zeros((2, 36, 52, 3)), train=False))
  assert set(abstract) == {'params', 'batch_stats'}
  assert 'backbone' in abstract['params'] and 'aspp' in abstract['params']
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract))
  x = images((2, 36, 52, 3), seed=1)
  logits, state = apply_train(model, variables, x, rng_key(2))
  assert logits.shape == (2, 36, 52, 5) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()
  assert not tree_equal(state['batch_stats']['backbone'], variables['batch_stats']['backbone'])
  # Odd size, inference, same variables.
  logits = apply_eval(model, variables, images((1, 33, 47, 3)))
  assert logits.shape == (1, 33, 47, 5) and logits.dtype == jnp.float32


def test_deeplab_freeze_encoder_keeps_backbone_bn_in_inference(deeplab_mnv2):
  model, variables = deeplab_mnv2
  frozen = model.clone(freeze_encoder=True)
  _, state = apply_train(frozen, variables, images((2, 36, 52, 3), seed=1), rng_key(2))
  assert tree_equal(state['batch_stats']['backbone'], variables['batch_stats']['backbone'])
  for head in ('aspp', 'low_level_proj', 'decoder_conv0'):
    assert not tree_equal(state['batch_stats'][head], variables['batch_stats'][head])


def test_deeplab_bfloat16_compute_float32_logits(deeplab_mnv2):
  model, variables = deeplab_mnv2
  bf16 = model.clone(dtype=jnp.bfloat16)
  _, abstract = abstract_init(bf16, (1, 33, 47, 3))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract))
  x = images((1, 33, 47, 3))
  logits = apply_eval(bf16, variables, x)
  assert logits.shape == (1, 33, 47, 5) and logits.dtype == jnp.float32
  ref = apply_eval(model, variables, x)
  # Same network, lower precision: close to the float32 logits.
  assert float(jnp.mean(jnp.abs(logits - ref))) < 0.1 * float(jnp.mean(jnp.abs(ref))) + 1e-3


def test_deeplab_output_stride_8(deeplab_mnv2):
  model, variables = deeplab_mnv2
  os8 = model.clone(output_stride=8)
  out, abstract = abstract_init(os8, (1, 33, 47, 3))
  assert out.shape == (1, 33, 47, 5) and out.dtype == jnp.float32
  # Same parameters whatever the output stride (ASPP rates have no weights).
  assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(jnp.shape, variables)
  for output_stride, deepest in ((8, (5, 6)), (16, (3, 3)), (32, (2, 2))):
    feats, _ = abstract_init(mobilenet_v2.MobileNetV2(0.35, output_stride=output_stride),
                             (1, 33, 47, 3))
    assert feats['stride32'].shape[1:3] == deepest


def test_deeplab_xception_forward():
  model = models.get_model('deeplabv3plus', num_classes=4, backbone='xception65',
                           aspp_channels=32, decoder_channels=32)
  x = images((1, 33, 33, 3))
  variables = fake_variables(model, x.shape)
  logits = apply_eval(model, variables, x)
  assert logits.shape == (1, 33, 33, 4) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()
  out, abstract = abstract_init(model.clone(dtype=jnp.bfloat16), (1, 33, 47, 3))
  assert out.shape == (1, 33, 47, 4) and out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract))


def test_unet_forward_freeze_and_bf16():
  model = models.get_model('unet', num_classes=3, output_stride=32, width_multiplier=0.35,
                           decoder_filters=(32, 16, 16, 8))
  x = images((2, 33, 47, 3))  # Padded to 64x64 inside, logits cropped back.
  variables = fake_variables(model, x.shape)
  assert set(variables) == {'params', 'batch_stats'} and 'backbone' in variables['params']
  # (That unfrozen training updates backbone stats is checked on DeepLabV3+.)
  logits, state = apply_train(model.clone(freeze_encoder=True), variables, x, rng_key(0))
  assert logits.shape == (2, 33, 47, 3) and logits.dtype == jnp.float32
  assert tree_equal(state['batch_stats']['backbone'], variables['batch_stats']['backbone'])
  assert not tree_equal(state['batch_stats']['up_0'], variables['batch_stats']['up_0'])

  logits = apply_eval(model.clone(dtype=jnp.bfloat16), variables, x[:1])
  assert logits.shape == (1, 33, 47, 3) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()
