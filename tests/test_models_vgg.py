"""Tests of the VGG family: the VGG backbone, FCN-32s/16s/8s, SegNet and
Bayesian SegNet (shapes, output stride, skip fusion, bilinear transposed
convs, pooling indices, Monte Carlo dropout, parameter counts, errors).

Shapes and counts use jax.eval_shape (no compilation); forward passes use a
tiny width (width_multiplier 1/16, head_channels 16) on 2 cores.
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import fcn
from segjax.models import segnet
from segjax.models.backbones import make_backbone
from segjax.models.backbones import vgg
from tests.test_models import abstract_init, apply_eval, count, images, rng_key

TINY = 1 / 16  # Stage widths 4, 8, 16, 32, 32.


def fake_variables(model, shape, seed=0):
  """He-scaled numpy-random variables (every kernel nonzero, zero-init score
  layers included) with model.init's structure."""
  _, abstract = abstract_init(model, shape)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape), jnp.float32)
    if name in ('scale', 'var'):
      return jnp.asarray(0.5 + rng.random(leaf.shape), jnp.float32)
    return jnp.asarray(0.1 * rng.normal(size=leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def test_vgg16_param_counts_match_torchvision():
  # torchvision: vgg16 138,357,544 parameters, of which classifier.6 (fc8) has
  # 4096 * 1000 + 1000 = 4,097,000 and classifier.0/3 (fc6/fc7)
  # 25088 * 4096 + 4096 + 4096 * 4096 + 4096 = 119,545,856;
  # vgg16_bn 138,365,992 (+ 2 * 4224 BN affine parameters).
  x = (1, 64, 64, 3)
  params = lambda m: abstract_init(m, x)[1]['params']
  assert count(params(vgg.VGG())) == 14_714_688
  assert count(params(vgg.VGG(include_fc=True))) == 134_260_544
  assert count(params(vgg.VGG(include_fc=True, num_classes=1000))) == 138_357_544
  bn = abstract_init(vgg.VGG(batch_norm=True), x)[1]
  assert count(bn['params']) == 138_365_992 - 123_642_856  # Minus the classifier.
  assert count(bn['batch_stats']) == 2 * (64 * 2 + 128 * 2 + 256 * 3 + 512 * 6)
  # The registry builds the same modules.
  assert count(params(make_backbone('vgg16_bn', name_='backbone'))) == count(bn['params'])


@pytest.mark.parametrize('output_stride, expected', [
    (32, ((2, 1), (2, 1), (2, 1), (2, 1), (2, 1))),
    (16, ((2, 1), (2, 1), (2, 1), (2, 1), (1, 2))),
    (8, ((2, 1), (2, 1), (2, 1), (1, 2), (1, 4))),
])
def test_vgg_output_stride_shapes_and_dilations(monkeypatch, output_stride, expected):
  # The convolutions as written (on CPU, 1x1 convs are otherwise lowered to dots).
  monkeypatch.setenv('SEGJAX_CONV_IMPL', 'xla')
  assert vgg.stage_strides(output_stride) == expected
  model = vgg.VGG(width_multiplier=TINY, include_fc=True, fc_channels=8,
                  output_stride=output_stride)
  feats, _ = abstract_init(model, (2, 65, 97, 3))
  sizes, h, w = {}, 65, 97
  for b, (s, _) in enumerate(expected, start=1):
    if s == 2:
      h, w = h // 2, w // 2  # Floor, like torch/Keras.
    sizes[f'stride{2 ** b}'] = (h, w)
  for key, hw in sizes.items():
    assert feats[key].shape[1:3] == hw, key
  assert feats['stride32'].shape[-1] == 32 and feats['fc7'].shape == (2, h, w, 8)
  # Dilations of the convs actually run: conv5_* at 2 and fc6 at 4 for stride 8.
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(
      abstract_init(model, (1, 65, 97, 3))[1], jnp.zeros((1, 65, 97, 3)))
  convs = [(eqn.invars[1].aval.shape[0], eqn.params['rhs_dilation'])
           for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == 'conv_general_dilated']
  rate = expected[3][1]  # Of the convs after pool4: conv5_1 .. conv5_3.
  want = [(3, (1, 1))] * 10 + [(3, (rate, rate))] * 3
  want += [(7, (expected[4][1],) * 2), (1, (1, 1))]
  assert convs == want


def test_vgg_stride1_pool_is_3x3_max():
  x = images((1, 6, 7, 2))
  ref = np.full((1, 8, 9, 2), -np.inf)
  ref[:, 1:-1, 1:-1] = x
  want = np.max([ref[:, i:i + 6, j:j + 7] for i in range(3) for j in range(3)], axis=0)
  np.testing.assert_array_equal(vgg.max_pool(x, 1), want)
  np.testing.assert_array_equal(vgg.max_pool(x, 2)[0, :, :, 0],
                                np.asarray(x)[0, :6, :6, 0].reshape(3, 2, 3, 2).max((1, 3)))


def test_vgg_errors_name_the_value():
  for kwargs, needle in [({'depth': 17}, '17'), ({'fc_padding': 'FULL'}, 'FULL'),
                         ({'output_stride': 4}, '4'), ({'num_classes': 10}, '10'),
                         ({'padding': 'VALID'}, 'VALID'), ({'dropout_rate': 1.0}, '1.0'),
                         ({'width_multiplier': 0.0}, '0.0'), ({'dtype': 'int8'}, 'int8')]:
    with pytest.raises(ValueError, match=needle):
      vgg.VGG(**kwargs)


# ----------------------------------------------------------------------------- FCN


def tiny_fcn(variant, **kwargs):
  kwargs.setdefault('width_multiplier', TINY)
  kwargs.setdefault('head_channels', 16)
  return fcn.FCN(num_classes=3, variant=variant, **kwargs)


@pytest.mark.parametrize('variant', fcn.VARIANTS)
@pytest.mark.parametrize('upsample', fcn.UPSAMPLES)
def test_fcn_shapes_any_size(variant, upsample):
  for hw in [(65, 97), (33, 40)]:
    for os_ in (32, 8):
      out, variables = abstract_init(
          tiny_fcn(variant, upsample=upsample, output_stride=os_), (2, *hw, 3))
      assert out.shape == (2, *hw, 3) and out.dtype == jnp.float32
  names = set(variables['params'])
  skips = {'32s': set(), '16s': {'score_pool4'}, '8s': {'score_pool4', 'score_pool3'}}
  assert names - {'backbone', 'score_fr'} - {n for n in names if 'upscore' in n} == \
      skips[variant]


def test_fcn_resnet50_param_count_and_outputs():
  # torchvision fcn_resnet50(num_classes=21, aux_loss=True): 35,322,218 parameters
  # (FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta['num_params']).
  model = fcn.FCN32s(num_classes=21, backbone='resnet50', output_stride=8, aux_head=True)
  out, variables = abstract_init(model, (1, 33, 47, 3))
  assert count(variables['params']) == 35_322_218
  assert out['logits'].shape == out['aux'].shape == (1, 33, 47, 21)
  p = variables['params']
  assert p['head']['conv']['kernel'].shape == (3, 3, 2048, 512)
  assert p['aux_head']['conv']['kernel'].shape == (3, 3, 1024, 256)
  # 8s on ResNet adds 1x1 score convs on stride16 (1024) and stride8 (512).
  _, v8 = abstract_init(fcn.FCN8s(num_classes=21, backbone='resnet50'), (1, 64, 64, 3))
  assert v8['params']['score_pool4']['kernel'].shape == (1, 1, 1024, 21)
  assert v8['params']['score_pool3']['kernel'].shape == (1, 1, 512, 21)


def _feature_grad(model, variables, x, key):
  """d sum(logits * w) / d (a perturbation added to the backbone's `key` output)."""
  def logits(eps):
    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.module.name == 'backbone' and context.method_name == '__call__':
        out = dict(out, **{key: out[key] + eps})
      return out
    with nn.intercept_methods(interceptor):
      return model.apply(variables, x, train=False)

  captured = {}

  def shape_probe(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.module.name == 'backbone' and context.method_name == '__call__':
      captured['shape'] = out[key].shape
    return out
  with nn.intercept_methods(shape_probe):
    jax.eval_shape(lambda: model.apply(variables, x, train=False))
  w = images((*x.shape[:3], 3), seed=7)
  return jax.jit(jax.grad(lambda e: jnp.sum(logits(e) * w)))(jnp.zeros(captured['shape']))


def test_fcn_skips_use_pool3_and_pool4():
  x = images((1, 64, 64, 3))
  grads = {}
  for variant in fcn.VARIANTS:
    model = tiny_fcn(variant)
    variables = fake_variables(model, x.shape)
    grads[variant] = {k: float(jnp.abs(_feature_grad(model, variables, x, k)).max())
                      for k in ('stride8', 'stride16')}
  assert grads['32s'] == {'stride8': 0.0, 'stride16': 0.0}
  assert grads['16s']['stride8'] == 0.0 and grads['16s']['stride16'] > 0
  assert grads['8s']['stride8'] > 0 and grads['8s']['stride16'] > 0


def test_fcn_skip_scores_start_at_zero():
  model = tiny_fcn('8s', upsample='transposed')
  variables = jax.jit(lambda: model.init({'params': rng_key(0), 'dropout': rng_key(1)},
                                         jnp.zeros((1, 32, 32, 3)), train=False))()
  p = variables['params']
  for name in ('score_fr', 'score_pool4', 'score_pool3'):
    assert not np.any(p[name]['kernel']) and not np.any(p[name]['bias'])
  for name, f in (('upscore2', 2), ('upscore_pool4', 2), ('upscore8', 8)):
    np.testing.assert_array_equal(p[name]['ConvTranspose_0']['kernel'],
                                  fcn.bilinear_kernel(f, 3))


def _tent_upsample(x, f):
  """Independent reference: out[j] = sum_i max(0, 1 - |s_j - i|) x[i] with the
  half-pixel source coordinate s_j = (j + 0.5) / f - 0.5, zeros outside; per axis."""
  def axis_matrix(n):
    s = (np.arange(n * f) + 0.5) / f - 0.5
    return np.maximum(0.0, 1.0 - np.abs(s[:, None] - np.arange(n)[None, :]))
  x = np.asarray(x, np.float64)
  mh, mw = axis_matrix(x.shape[1]), axis_matrix(x.shape[2])
  return np.einsum('ph,qw,bhwc->bpqc', mh, mw, x)


@pytest.mark.parametrize('factor', [2, 8])
def test_transposed_upsampling_starts_as_bilinear(factor):
  x = images((1, 5, 7, 3))
  module = fcn.BilinearConvTranspose(factor)
  variables = module.init(rng_key(0), x)
  y = module.apply(variables, x)
  assert y.shape == (1, 5 * factor, 7 * factor, 3)
  np.testing.assert_allclose(y, _tent_upsample(x, factor), atol=1e-5)
  # Away from the border (where zeros replace edge clamping) it is the
  # align_corners=False resize.
  ref = jax.image.resize(x, y.shape, 'bilinear')
  b = factor // 2 + factor  # Beyond the first/last input pixel's half-cell.
  np.testing.assert_allclose(y[:, b:-b, b:-b], ref[:, b:-b, b:-b], atol=1e-5)


def test_fcn_freeze_encoder_blocks_backbone_gradients():
  x = images((1, 32, 32, 3))
  for freeze in (False, True):
    model = tiny_fcn('8s', freeze_encoder=freeze)
    variables = fake_variables(model, x.shape)

    def loss(params):
      return jnp.sum(model.apply({**variables, 'params': params}, x, train=False) ** 2)
    grads = jax.jit(jax.grad(loss))(variables['params'])
    backbone = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads['backbone']))
    assert (backbone == 0.0) == freeze
    assert float(jnp.abs(grads['score_pool3']['kernel']).max()) > 0


def test_fcn_errors_name_the_value():
  for kwargs, needle in [({'variant': '4s'}, '4s'), ({'upsample': 'nearest'}, 'nearest'),
                         ({'backbone': 'mobilenetv2'}, 'mobilenetv2'),
                         ({'aux_head': True}, 'vgg16'), ({'head_channels': 0}, '0'),
                         ({'dropout_rate': 1.5}, '1.5'), ({'padding': 'VALID'}, 'VALID'),
                         ({'output_stride': 4}, '4'),
                         ({'backbone': 'resnet50', 'width_multiplier': 0.5}, '0.5')]:
    with pytest.raises(ValueError, match=needle):
      fcn.FCN(num_classes=3, **kwargs)
  assert fcn.FCN32s(num_classes=2).variant == '32s'
  assert fcn.FCN16s(num_classes=2).variant == '16s'
  assert fcn.FCN8s(num_classes=2).variant == '8s'


# ----------------------------------------------------------------------------- SegNet


def test_pool_unpool_put_each_max_back():
  x = np.array(images((2, 6, 8, 3)))
  x[0, 0, 0, 0] = x[0, 0, 1, 0] = 10.0  # A tie: the first maximum wins.
  pooled, idx = jax.jit(segnet.max_pool_with_indices)(jnp.asarray(x))
  np.testing.assert_array_equal(pooled, x.reshape(2, 3, 2, 4, 2, 3).max((2, 4)))
  assert int(idx[0, 0, 0, 0]) == 0
  up = np.asarray(jax.jit(segnet.max_unpool)(pooled, idx))
  want = np.zeros_like(x)
  for b, i, j, c in np.ndindex(2, 3, 4, 3):
    win = x[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c]
    r, s = np.unravel_index(np.argmax(win), (2, 2))
    want[b, 2 * i + r, 2 * j + s, c] = win[r, s]
  np.testing.assert_array_equal(up, want)
  with pytest.raises(ValueError, match='5x8'):
    segnet.max_pool_with_indices(jnp.zeros((1, 5, 8, 1)))


def test_pool_unpool_gradients_flow_to_the_max():
  x = images((1, 4, 6, 2), seed=3)
  w = images((1, 4, 6, 2), seed=4)

  def f(x):
    pooled, idx = segnet.max_pool_with_indices(x)
    return jnp.sum(segnet.max_unpool(pooled * 2.0, idx) * w)
  g = np.asarray(jax.jit(jax.grad(f))(x))
  is_max = np.asarray(segnet.max_unpool(*segnet.max_pool_with_indices(x))) != 0
  np.testing.assert_allclose(g, np.where(is_max, 2.0 * np.asarray(w), 0.0), atol=1e-6)


def test_segnet_shapes_and_layout():
  model = segnet.SegNet(num_classes=5)
  out, variables = abstract_init(model, (1, 45, 70, 3))
  assert out.shape == (1, 45, 70, 5) and out.dtype == jnp.float32
  p = variables['params']
  decoder = {k: p[k]['conv']['kernel'].shape[2:] for k in p if k.endswith('_D')
             and k != 'conv1_1_D'}
  # (in, out) channels: the paper's Caffe model, mirroring the encoder.
  assert decoder == {
      'conv5_3_D': (512, 512), 'conv5_2_D': (512, 512), 'conv5_1_D': (512, 512),
      'conv4_3_D': (512, 512), 'conv4_2_D': (512, 512), 'conv4_1_D': (512, 256),
      'conv3_3_D': (256, 256), 'conv3_2_D': (256, 256), 'conv3_1_D': (256, 128),
      'conv2_2_D': (128, 128), 'conv2_1_D': (128, 64), 'conv1_2_D': (64, 64)}
  assert p['conv1_1_D']['kernel'].shape == (3, 3, 64, 5)
  # Encoder: torchvision vgg16_bn features (14,723,136); decoder: 3x3 convs
  # without bias + BN affine, then the classifier with bias.
  dec = sum(9 * i * o + 2 * o for i, o in decoder.values()) + 9 * 64 * 5 + 5
  assert count(p['backbone']) == 14_723_136
  assert count(p) == 14_723_136 + dec


def test_segnet_forward_pads_and_crops():
  model = segnet.SegNet(num_classes=2, width_multiplier=TINY)
  x = images((1, 33, 40, 3))
  variables = fake_variables(model, x.shape)
  y = apply_eval(model, variables, x)
  assert y.shape == (1, 33, 40, 2) and bool(jnp.all(jnp.isfinite(y)))
  # Zero padding to 64x64 then cropping: the same as running on the padded input.
  padded = jnp.pad(x, ((0, 0), (0, 31), (0, 24), (0, 0)))
  np.testing.assert_allclose(y, apply_eval(model, variables, padded)[:, :33, :40], atol=1e-5)


def _dropout_names(model, variables, x, **kwargs):
  names = []

  def interceptor(next_fun, args, kw, context):
    if isinstance(context.module, nn.Dropout):
      names.append(context.module.name)
    return next_fun(*args, **kw)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda: model.apply(variables, x, **kwargs))
  return names


def test_bayesian_segnet_mc_dropout():
  x = images((1, 32, 32, 3))
  bayes = segnet.BayesianSegNet(num_classes=2, width_multiplier=TINY)
  variables = fake_variables(bayes, x.shape)
  rngs = lambda seed: {'dropout': rng_key(seed)}
  assert _dropout_names(bayes, variables, x, train=False) == [
      'encdrop3', 'encdrop4', 'encdrop5', 'decdrop5', 'decdrop4', 'decdrop3']
  run = jax.jit(lambda m, v, x, r: m.apply(v, x, train=False, rngs=r), static_argnums=0)
  a, b = run(bayes, variables, x, rngs(1)), run(bayes, variables, x, rngs(2))
  np.testing.assert_array_equal(a, b)
  mc = bayes.clone(mc_dropout=True)
  a, b = run(mc, variables, x, rngs(1)), run(mc, variables, x, rngs(2))
  assert float(jnp.abs(a - b).max()) > 0
  np.testing.assert_array_equal(a, run(mc, variables, x, rngs(1)))

  plain = segnet.SegNet(num_classes=2, width_multiplier=TINY)
  assert _dropout_names(plain, variables, x, train=True, mutable=['batch_stats']) == []
  # Training without any 'dropout' rng works: nothing is random.
  jax.eval_shape(lambda: plain.apply(variables, x, train=True, mutable=['batch_stats']))


def test_segnet_errors_name_the_value():
  for kwargs, needle in [({'backbone': 'vgg16'}, 'vgg16'), ({'output_stride': 16}, '16'),
                         ({'dropout_rate': 1.0}, '1.0'), ({'padding': 'VALID'}, 'VALID'),
                         ({'num_classes': 0}, '0')]:
    with pytest.raises(ValueError, match=needle):
      segnet.SegNet(**{'num_classes': 3, **kwargs})


def test_bfloat16_compute_keeps_float32_params_and_logits():
  for model in (tiny_fcn('8s', upsample='transposed', dtype='bfloat16'),
                segnet.BayesianSegNet(num_classes=3, width_multiplier=TINY, dtype='bfloat16')):
    out, variables = abstract_init(model, (1, 33, 47, 3))
    assert out.shape == (1, 33, 47, 3) and out.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(variables['params'])} == {jnp.dtype('float32')}
