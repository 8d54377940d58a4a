"""Parity of segjax's ResNet backbone and DeepLabV3 with torchvision and Keras.

Peers (random weights, random BN statistics, inference mode):
  * torchvision.models.resnet50/101/152 (features at strides 2..32), and
    resnet50(replace_stride_with_dilation=...) at output strides 16 and 8;
  * keras.applications.ResNet50(include_top=False): conv3_block4_out and the
    final conv5_block3_out;
  * torchvision.models.segmentation.deeplabv3_resnet50/101(aux_loss=True):
    'out' and 'aux'.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from segjax.models.backbones import resnet
from segjax.models.convert import common
from segjax.models.convert import resnet as convert_resnet
from segjax.models.convert.common import ConversionError, SourceWeights
from tests.parity import util

torch = pytest.importorskip('torch', reason='parity tests need the torch peer')
torchvision = pytest.importorskip('torchvision', reason='parity tests need torchvision')

# torchvision ResNet child -> our feature key (IntermediateLayerGetter names).
TORCH_TAPS = {'relu': 'stride2', 'layer1': 'stride4', 'layer2': 'stride8',
              'layer3': 'stride16', 'layer4': 'stride32'}
# torchvision's replace_stride_with_dilation for each output stride.
TORCH_DILATION = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


def setup_module():
  torch.set_num_threads(2)  # The test machine has 2 cores.


def inputs(shape, seed=0):
  """Random NCHW float32 input."""
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


def torch_features(model, x):
  from torchvision.models._utils import IntermediateLayerGetter
  getter = IntermediateLayerGetter(model, TORCH_TAPS).eval()
  with torch.no_grad():
    return {k: nhwc(v.numpy()) for k, v in getter(torch.from_numpy(x)).items()}


@functools.lru_cache(maxsize=None)
def torchvision_resnet(depth, output_stride=32):
  torch.manual_seed(depth + output_stride)
  model = getattr(torchvision.models, f'resnet{depth}')(
      weights=None, replace_stride_with_dilation=TORCH_DILATION[output_stride])
  util.randomize_torch_bn(model, seed=depth)
  return model.eval()


def convert(arch, weights, source='torchvision'):
  return convert_resnet.CONVERTERS[(source, arch)].fn(SourceWeights(weights))


def check_variables_fit(module, variables, shape, **kwargs):
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), np.zeros(shape, np.float32),
                                                train=False, **kwargs))
  common.check_matches(variables, abstract)


@pytest.mark.parametrize('depth,sizes', [
    (50, [(1, 3, 65, 97), (2, 3, 64, 96)]),
    (101, [(1, 3, 65, 97)]),
    (152, [(1, 3, 33, 47)]),
])
def test_torchvision_resnet(depth, sizes):
  """torchvision.models.resnet{depth} vs segjax ResNet: all five features."""
  peer = torchvision_resnet(depth)
  variables = convert(f'resnet{depth}', util.torch_weights(peer))
  module = convert_resnet.CONVERTERS[('torchvision', f'resnet{depth}')].build()
  assert module.depth == depth
  check_variables_fit(module, variables, (1, 64, 64, 3))
  for shape in sizes:
    x = inputs(shape, seed=depth)
    want = torch_features(peer, x)
    got = jax.jit(lambda v, y: module.apply(v, y, train=False))(variables, nhwc(x))
    for key in TORCH_TAPS.values():
      size = 'x'.join(map(str, shape[2:]))
      util.check(f'torchvision resnet{depth} vs segjax ResNet {key} {size}', got[key],
                 want[key])


@pytest.mark.parametrize('output_stride', [16, 8])
def test_torchvision_resnet50_dilated(output_stride):
  """torchvision resnet50(replace_stride_with_dilation) vs ResNet(output_stride)."""
  peer = torchvision_resnet(50, output_stride)
  variables = convert('resnet50', util.torch_weights(peer))
  module = resnet.ResNet(depth=50, output_stride=output_stride)
  x = inputs((1, 3, 65, 97), seed=output_stride)
  want = torch_features(peer, x)
  got = jax.jit(lambda v, y: module.apply(v, y, train=False))(variables, nhwc(x))
  for key in TORCH_TAPS.values():
    util.check(f'torchvision resnet50 OS{output_stride} vs segjax ResNet {key} 65x97',
               got[key], want[key])
  expected_hw = -(-65 // output_stride), -(-97 // output_stride)
  assert got['stride32'].shape[1:3] == expected_hw


def test_torchvision_resnet_wrong_arch():
  """resnet50 weights do not fit the resnet101 arch (missing layer3.6) and vice versa."""
  weights50 = util.torch_weights(torchvision_resnet(50))
  with pytest.raises(ConversionError, match='layer3.6'):
    convert('resnet101', weights50)
  weights101 = util.torch_weights(torchvision_resnet(101))
  with pytest.raises(ConversionError, match='not mapped'):
    convert('resnet50', weights101)
  with pytest.raises(ConversionError, match='missing'):
    convert('deeplabv3_resnet50', weights50)


# ----------------------------------------------------------------------------- Keras


@functools.lru_cache(maxsize=None)
def keras_resnet50():
  keras = pytest.importorskip('keras', reason='Keras parity needs keras')
  keras.utils.set_random_seed(0)
  model = keras.applications.ResNet50(weights=None, include_top=False,
                                      input_shape=(None, None, 3))
  util.randomize_keras_bn(model, seed=1)
  return model


def test_keras_resnet50():
  """keras.applications.ResNet50(include_top=False) vs segjax ResNet(stride_in_1x1,
  conv_bias): conv3_block4_out (stride 8) and conv5_block3_out (stride 32)."""
  keras = pytest.importorskip('keras', reason=util.PEERS)
  peer = keras_resnet50()
  conv = convert_resnet.CONVERTERS[('keras', 'resnet50')]
  assert conv.keras_layers() == [(l.name, type(l).__name__) for l in peer.layers
                                 if l.weights]
  variables = conv.fn(SourceWeights(util.keras_weights(peer)))
  module = conv.build()
  check_variables_fit(module, variables, (1, 64, 64, 3))
  taps = keras.Model(peer.input, [peer.get_layer('conv1_relu').output,
                                  peer.get_layer('conv3_block4_out').output, peer.output])
  for shape in [(1, 65, 97, 3), (1, 64, 96, 3)]:
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    want = [np.asarray(t) for t in taps(x, training=False)]
    got = jax.jit(lambda v, y: module.apply(v, y, train=False))(variables, x)
    size = f'{shape[1]}x{shape[2]}'
    for key, peer_out in zip(('stride2', 'stride8', 'stride32'), want):
      util.check(f'keras ResNet50 vs segjax ResNet(keras) {key} {size}', got[key], peer_out)


def test_keras_resnet50_wrong_arch():
  """Keras ResNet50 weights are not torchvision resnet50 weights, and vice versa."""
  keras_w = util.keras_weights(keras_resnet50())
  with pytest.raises(ConversionError, match='missing'):
    convert('resnet50', keras_w)
  with pytest.raises(ConversionError, match='missing'):
    convert('resnet50', util.torch_weights(torchvision_resnet(50)), source='keras')


# ----------------------------------------------------------------------------- DeepLabV3


@pytest.mark.parametrize('depth', [50, 101])
def test_torchvision_deeplabv3(depth):
  """torchvision deeplabv3_resnet{depth}(num_classes=21, aux_loss=True) vs segjax
  DeepLabV3(output_stride=8, multi_grid=None, aux_head=True): 'out' and 'aux'."""
  from torchvision.models import segmentation
  torch.manual_seed(depth)
  peer = getattr(segmentation, f'deeplabv3_resnet{depth}')(
      weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
  util.randomize_torch_bn(peer, seed=depth)
  peer.eval()
  conv = convert_resnet.CONVERTERS[('torchvision', f'deeplabv3_resnet{depth}')]
  variables = conv.fn(SourceWeights(util.torch_weights(peer)))
  module = conv.build(21)
  assert variables['params']['classifier']['bias'].shape == (21,)
  check_variables_fit(module, variables, (1, 64, 64, 3))
  x = inputs((1, 3, 97, 129), seed=depth)
  with torch.no_grad():
    want = {k: nhwc(v.numpy()) for k, v in peer(torch.from_numpy(x)).items()}
  got = jax.jit(lambda v, y: module.apply(v, y, train=False))(variables, nhwc(x))
  util.check(f'torchvision deeplabv3_resnet{depth} vs segjax DeepLabV3 out 97x129',
             got['logits'], want['out'])
  util.check(f'torchvision deeplabv3_resnet{depth} vs segjax DeepLabV3 aux 97x129',
             got['aux'], want['aux'])
  with pytest.raises(ConversionError, match='not mapped'):
    # A whole model is not a backbone: the heads are left over.
    convert(f'resnet{depth}', {k.removeprefix('backbone.'): v
                               for k, v in util.torch_weights(peer).items()})
