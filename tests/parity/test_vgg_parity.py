"""Parity of the VGG family with torchvision and Keras: VGG16 (whole ImageNet
classifier and features), VGG16-BN features through SegNet's encoder, and
torchvision fcn_resnet50 (out and aux)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import segnet
from segjax.models.backbones import vgg
from segjax.models.convert import common
from segjax.models.convert import vgg as vgg_convert
from segjax.models.convert.common import ConversionError, SourceWeights, check_matches
from tests.parity import util


def _init_shapes(module, shape):
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  return jax.eval_shape(lambda: module.init(rngs, jnp.zeros(shape, jnp.float32), train=False))


def _nhwc(x):
  return np.transpose(np.asarray(x), (0, 2, 3, 1))


def _input(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --------------------------------------------------------------------------- torchvision


@pytest.fixture(scope='module')
def torch_vgg16():
  torchvision = pytest.importorskip('torchvision', reason='parity with torchvision needs it')
  torch = pytest.importorskip('torch', reason=util.PEERS)
  torch.manual_seed(0)
  model = torchvision.models.vgg16(weights=None).eval()
  return model


def test_torchvision_vgg16_classifier_224(torch_vgg16):
  """torchvision.models.vgg16 logits vs segjax VGG(include_fc, fc_padding='VALID',
  num_classes=1000) at 224x224 (AdaptiveAvgPool2d(7) is the identity there)."""
  torch = pytest.importorskip('torch', reason=util.PEERS)
  weights = SourceWeights(util.torch_weights(torch_vgg16))
  variables = vgg_convert.convert_torchvision_vgg(weights, depth=16, include_fc=True,
                                                  include_fc8=True)
  module = vgg.VGG(depth=16, include_fc=True, fc_padding='VALID', num_classes=1000)
  check_matches(variables, _init_shapes(module, (1, 224, 224, 3)))
  x = _input((1, 3, 224, 224))
  with torch.no_grad():
    peer = torch_vgg16(torch.from_numpy(x)).numpy()
  ours = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, _nhwc(x))
  util.check('torchvision vgg16 vs segjax VGG16+fc logits (224)', ours['logits'][:, 0, 0],
             peer)


@pytest.mark.parametrize('hw', [(65, 97), (64, 96)])
def test_torchvision_vgg16_features(torch_vgg16, hw):
  """torchvision.models.vgg16 features pool3/pool4/pool5 vs segjax VGG16 stride8/16/32."""
  torch = pytest.importorskip('torch', reason=util.PEERS)
  converter = vgg_convert.CONVERTERS[('torchvision', 'vgg16')]
  variables = converter.fn(SourceWeights(util.torch_weights(torch_vgg16)))
  module = converter.build()
  check_matches(variables, _init_shapes(module, (1, *hw, 3)))
  x = _input((1, 3, *hw), seed=1)
  pools = {'stride8': 16, 'stride16': 23, 'stride32': 30}  # features.{i}: pool3/4/5.
  peer = {}
  with torch.no_grad():
    y = torch.from_numpy(x)
    for i, layer in enumerate(torch_vgg16.features):
      y = layer(y)
      for key, idx in pools.items():
        if i == idx:
          peer[key] = _nhwc(y.numpy())
  ours = module.apply(variables, _nhwc(x), train=False)
  for key in pools:
    util.check(f'torchvision vgg16 vs segjax VGG16 {key} ({hw[0]}x{hw[1]})', ours[key],
               peer[key])


def test_torchvision_vgg16_bn_segnet_encoder():
  """torchvision.models.vgg16_bn features (pool5 and every pool's argmax) vs
  segjax SegNet's encoder with the ('torchvision', 'vgg16_bn') converter."""
  torchvision = pytest.importorskip('torchvision', reason='parity with torchvision needs it')
  torch = pytest.importorskip('torch', reason=util.PEERS)
  torch.manual_seed(1)
  peer_model = torchvision.models.vgg16_bn(weights=None).eval()
  util.randomize_torch_bn(peer_model)
  converter = vgg_convert.CONVERTERS[('torchvision', 'vgg16_bn')]
  variables = converter.fn(SourceWeights(util.torch_weights(peer_model)))
  # Fits both the backbone the converter builds and SegNet's encoder.
  check_matches(variables, _init_shapes(converter.build(), (1, 64, 64, 3)))
  seg_vars = _init_shapes(segnet.SegNet(num_classes=3), (1, 64, 64, 3))
  check_matches(variables, {k: v['backbone'] for k, v in seg_vars.items()})

  x = _input((1, 3, 64, 96), seed=2)
  peer_indices = []
  with torch.no_grad():
    y = torch.from_numpy(x)
    for layer in peer_model.features:
      if isinstance(layer, torch.nn.MaxPool2d):
        y, idx = torch.nn.functional.max_pool2d(y, 2, 2, return_indices=True)
        peer_indices.append(idx.numpy())
      else:
        y = layer(y)
  pooled, indices = segnet.SegNetEncoder().apply(variables, _nhwc(x), train=False)
  util.check('torchvision vgg16_bn features vs segjax SegNet encoder pool5', pooled,
             _nhwc(y.numpy()))
  for ours, theirs in zip(indices, peer_indices):
    # torch: flat index r * W + c in the input plane; ours: 2 * dr + dc in the window.
    w = ours.shape[2] * 2
    rows = np.arange(ours.shape[1])[None, :, None, None] * 2 + np.asarray(ours) // 2
    cols = np.arange(ours.shape[2])[None, None, :, None] * 2 + np.asarray(ours) % 2
    np.testing.assert_array_equal(rows * w + cols, _nhwc(theirs))


def test_torchvision_fcn_resnet50():
  """torchvision segmentation.fcn_resnet50(aux_loss=True) 'out'/'aux' vs segjax
  FCN32s(resnet50, output_stride 8, aux_head) at 97x129."""
  torchvision = pytest.importorskip('torchvision', reason='parity with torchvision needs it')
  torch = pytest.importorskip('torch', reason=util.PEERS)
  torch.manual_seed(2)
  peer_model = torchvision.models.segmentation.fcn_resnet50(
      weights=None, weights_backbone=None, num_classes=21, aux_loss=True).eval()
  util.randomize_torch_bn(peer_model)
  converter = vgg_convert.CONVERTERS[('torchvision', 'fcn_resnet50')]
  variables = converter.fn(SourceWeights(util.torch_weights(peer_model)))
  module = converter.build(21)
  check_matches(variables, _init_shapes(module, (1, 97, 129, 3)))
  assert common.flatten(variables['params'])[converter.classifier].shape == (21,)
  x = _input((1, 3, 97, 129), seed=3)
  with torch.no_grad():
    peer = {k: _nhwc(v.numpy()) for k, v in peer_model(torch.from_numpy(x)).items()}
  ours = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, _nhwc(x))
  util.check('torchvision fcn_resnet50 vs segjax fcn32s out (97x129)', ours['logits'],
             peer['out'])
  util.check('torchvision fcn_resnet50 vs segjax fcn32s aux (97x129)', ours['aux'],
             peer['aux'])


def test_torchvision_wrong_arch_is_an_error(torch_vgg16):
  """vgg16 weights through the vgg16_bn / fcn_resnet50 converters, and a
  truncated vgg16, are ConversionErrors naming tensors."""
  state = util.torch_weights(torch_vgg16)
  for arch in ('vgg16_bn', 'fcn_resnet50'):
    with pytest.raises(ConversionError, match='missing|not mapped'):
      vgg_convert.CONVERTERS[('torchvision', arch)].fn(SourceWeights(state))
  extra = dict(state, **{'features.31.weight': np.zeros((1,), np.float32)})
  with pytest.raises(ConversionError, match='features.31.weight'):
    vgg_convert.CONVERTERS[('torchvision', 'vgg16')].fn(SourceWeights(extra))


# --------------------------------------------------------------------------- Keras


def _keras_vgg16(include_top, input_shape):
  keras = pytest.importorskip('keras', reason='parity with Keras needs it')
  keras.utils.set_random_seed(0)
  kwargs = {'classifier_activation': None} if include_top else {}
  return keras.applications.VGG16(weights=None, include_top=include_top,
                                  input_shape=input_shape, **kwargs)


def test_keras_vgg16_top_224():
  """keras.applications.VGG16(include_top=True, classifier_activation=None) logits
  vs segjax VGG(include_fc, fc_padding='VALID', num_classes=1000) at 224."""
  model = _keras_vgg16(True, (224, 224, 3))
  assert vgg_convert.CONVERTERS[('keras', 'vgg16')].keras_layers() == [
      (l.name, type(l).__name__) for l in model.layers if l.weights]
  weights = util.keras_weights(model)
  variables = vgg_convert.convert_keras_vgg(SourceWeights(weights), depth=16, include_fc8=True)
  module = vgg.VGG(depth=16, include_fc=True, fc_padding='VALID', num_classes=1000)
  check_matches(variables, _init_shapes(module, (1, 224, 224, 3)))
  # The registered converter: fc6/fc7 only (predictions is the ImageNet head).
  backbone = vgg_convert.CONVERTERS[('keras', 'vgg16')].fn(SourceWeights(weights))
  check_matches(backbone, _init_shapes(vgg_convert.CONVERTERS[('keras', 'vgg16')].build(),
                                       (1, 64, 64, 3)))
  x = _input((1, 224, 224, 3), seed=4)
  peer = np.asarray(model(x, training=False))
  ours = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
  util.check('keras VGG16 vs segjax VGG16+fc logits (224)', ours['logits'][:, 0, 0], peer)


def test_keras_vgg16_notop_features():
  """keras.applications.VGG16(include_top=False) block5_pool and block3/4_pool vs
  segjax VGG16 stride32/16/8 at 65x97."""
  keras = pytest.importorskip('keras', reason='parity with Keras needs it')
  model = _keras_vgg16(False, (65, 97, 3))
  assert vgg_convert.keras_vgg_layers(16, include_top=False) == [
      (l.name, type(l).__name__) for l in model.layers if l.weights]
  variables = vgg_convert.CONVERTERS[('keras', 'vgg16_notop')].fn(
      SourceWeights(util.keras_weights(model)))
  module = vgg.VGG(depth=16)
  with pytest.raises(ConversionError, match='vgg16_notop'):
    vgg_convert.CONVERTERS[('keras', 'vgg16')].fn(SourceWeights(util.keras_weights(model)))
  check_matches(variables, _init_shapes(module, (1, 65, 97, 3)))
  taps = keras.Model(model.input, [model.get_layer(f'block{b}_pool').output
                                   for b in (3, 4, 5)])
  x = _input((1, 65, 97, 3), seed=5)
  peer = [np.asarray(y) for y in taps(x, training=False)]
  ours = module.apply(variables, x, train=False)
  for key, theirs in zip(('stride8', 'stride16', 'stride32'), peer):
    util.check(f'keras VGG16 notop vs segjax VGG16 {key} (65x97)', ours[key], theirs)


def test_keras_wrong_arch_is_an_error():
  """Keras weights with a missing conv or an extra layer are ConversionErrors."""
  model = _keras_vgg16(False, (32, 32, 3))
  weights = util.keras_weights(model)
  missing = {k: v for k, v in weights.items() if not k.startswith('block5_conv3')}
  with pytest.raises(ConversionError, match='block5_conv3'):
    vgg_convert.CONVERTERS[('keras', 'vgg16_notop')].fn(SourceWeights(missing))
  extra = dict(weights, **{'block6_conv1/0': np.zeros((1,), np.float32)})
  with pytest.raises(ConversionError, match='block6_conv1'):
    vgg_convert.CONVERTERS[('keras', 'vgg16_notop')].fn(SourceWeights(extra))
