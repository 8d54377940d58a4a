"""Parity of the reference write-ups' networks with a peer construction of
the same network: the separable residual FCN against Keras (the write-up's
own code, rebuilt with keras 3 layers), DeepLab v1 / v2 and the satellite
FCN variant against PyTorch modules built here from torchvision's vgg16 /
resnet101 plus the head the write-up (or paper) describes.

Every peer gets random weights and random BatchNorm statistics; weights are
copied into our layout with segjax.models.convert's helpers and the outputs
compared at max |ours - peer| / max |peer| <= 1e-4 (tests/parity/util.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import sepres_fcn
from segjax.models.convert import common
from segjax.models.convert.common import check_matches
from tests.parity import util


def _input(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _init_shapes(module, shape):
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  out = jax.eval_shape(lambda: module.init(rngs, jnp.zeros(shape, jnp.float32), train=False))
  return {k: v for k, v in out.items() if k in ('params', 'batch_stats')}


def _nhwc(x):
  return np.transpose(np.asarray(x), (0, 2, 3, 1))


# ------------------------------------------------------------ separable residual FCN


def _keras_sepres_fcn(keras, input_shape, num_classes):
  """The write-up's `model_build` (with `residual_block(use_shortcut_=True)`),
  written with keras 3 layers; layer names are ours so weights map by name."""
  L = keras.layers

  def block(x, f_in, f_out, name):
    shortcut = x
    for i, width in enumerate((f_in, f_in, f_out), start=1):
      x = L.SeparableConv2D(width, (3, 3), padding='same', name=f'{name}_sepconv{i}')(x)
      x = L.BatchNormalization(name=f'{name}_bn{i}')(x)
      x = L.ELU()(x)
    shortcut = L.SeparableConv2D(f_out, (3, 3), padding='same', name=f'{name}_shortcut')(
        shortcut)
    shortcut = L.BatchNormalization(name=f'{name}_shortcut_bn')(shortcut)
    return L.ReLU()(L.Add()([shortcut, x]))

  inp = keras.Input(input_shape)
  x = L.Conv2D(16, (3, 3), padding='same', name='stem_conv')(inp)
  x = L.ReLU()(L.BatchNormalization(name='stem_bn')(x))
  x = L.MaxPooling2D()(x)
  x = L.MaxPooling2D()(block(x, 16, 32, 'block1'))
  pool3 = x = L.MaxPooling2D()(block(x, 32, 64, 'block2'))
  pool4 = x = L.MaxPooling2D()(block(x, 64, 96, 'block3'))
  pool5 = L.MaxPooling2D()(block(x, 96, 128, 'block4'))
  o = L.Conv2D(2048, (7, 7), activation='relu', padding='same', name='conv6')(pool5)
  conv7 = L.Conv2D(2048, (1, 1), activation='relu', padding='same', name='conv7')(o)
  conv7_4 = L.Conv2DTranspose(num_classes, (4, 4), strides=(4, 4), use_bias=False,
                              name='upscore_conv7')(conv7)
  pool411 = L.Conv2D(num_classes, (1, 1), activation='relu', padding='same',
                     name='pool4_11')(pool4)
  pool411_2 = L.Conv2DTranspose(num_classes, (2, 2), strides=(2, 2), use_bias=False,
                                name='upscore_pool4')(pool411)
  pool311 = L.Conv2D(num_classes, (1, 1), activation='relu', padding='same',
                     name='pool3_11')(pool3)
  o = L.Add()([pool411_2, pool311, conv7_4])
  o = L.Conv2DTranspose(num_classes, (8, 8), strides=(8, 8), use_bias=False,
                        name='upscore_final')(o)
  return keras.Model(inp, o)  # Logits: the write-up's softmax comes after.


def _sepres_variables_from_keras(weights):
  """{'layer/i': array} of the model above -> SepResFCN variables."""
  w = common.SourceWeights(weights, source='keras sepres_fcn')
  variables: dict = {}

  def bn(name, path):
    common.put_module(variables, path, {'scale': w.take(f'{name}/0'),
                                        'bias': w.take(f'{name}/1')},
                      {'mean': w.take(f'{name}/2'), 'var': w.take(f'{name}/3')})

  def sep(name, path):
    common.put_module(variables, f'{path}/depthwise',
                      {'kernel': common.keras_depthwise(w.take(f'{name}/0'))})
    common.put_module(variables, f'{path}/pointwise',
                      {'kernel': w.take(f'{name}/1'), 'bias': w.take(f'{name}/2')})

  def conv(name, path):
    common.put_module(variables, path, {'kernel': w.take(f'{name}/0'),
                                        'bias': w.take(f'{name}/1')})

  conv('stem_conv', 'backbone/stem_conv')
  bn('stem_bn', 'backbone/stem_bn')
  for b in range(1, 5):
    for part in ('sepconv1', 'sepconv2', 'sepconv3', 'shortcut'):
      sep(f'block{b}_{part}', f'backbone/block{b}/{part}')
    for part in ('bn1', 'bn2', 'bn3', 'shortcut_bn'):
      bn(f'block{b}_{part}', f'backbone/block{b}/{part}')
  for name in ('conv6', 'conv7', 'pool4_11', 'pool3_11'):
    conv(name, name)
  for name in ('upscore_conv7', 'upscore_pool4', 'upscore_final'):
    common.put_module(variables, name,
                      {'kernel': common.keras_conv_transpose(w.take(f'{name}/0'))})
  w.check_all_used()
  return variables


def test_sepres_fcn_matches_keras_construction():
  """The write-up's Keras network (224x224, 12 classes) vs SepResFCN: the
  same number of weights (Keras counts BN statistics too) and the same
  logits, BN in inference mode with random statistics."""
  keras = pytest.importorskip('keras', reason=util.PEERS)
  keras.utils.set_random_seed(0)
  peer = _keras_sepres_fcn(keras, (224, 224, 3), 12)
  util.randomize_keras_bn(peer, seed=0)
  # Keras zero-initialises biases: random ones, so a dropped bias cannot pass.
  rng = np.random.default_rng(1)
  for layer in peer.layers:
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.SeparableConv2D)) and layer.use_bias:
      values = layer.get_weights()
      values[-1] = (0.1 * rng.standard_normal(values[-1].shape)).astype(np.float32)
      layer.set_weights(values)
  variables = _sepres_variables_from_keras(util.keras_weights(peer))
  model = sepres_fcn.SepResFCN(num_classes=12)
  check_matches(variables, _init_shapes(model, (1, 224, 224, 3)))
  ours_count = sum(int(np.size(v)) for v in jax.tree.leaves(variables))
  assert ours_count == peer.count_params() == 17_530_712 + 2_144

  x = _input((1, 224, 224, 3), seed=2)
  want = np.asarray(peer(x, training=False))
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  util.check('keras write-up network vs segjax sepres_fcn logits (224)', got, want)


# ------------------------------------------------------------------ DeepLab v1 / v2


def _randomize_torch_biases(module, seed):
  """torchvision zero-initialises some biases: random ones everywhere, so a
  dropped bias cannot pass."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.bias is not None:
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


def _torch_deeplabv1(torch, torchvision, num_classes):
  """DeepLab-LargeFOV from torchvision's vgg16 features: pool1-3 become 3x3
  stride-2 pad-1 pools, pool4/pool5 3x3 stride-1 pad-1, conv5_* dilation 2;
  head fc6 (3x3, dilation 12, 1024) -> ReLU -> Dropout -> fc7 (1x1) -> ReLU
  -> Dropout -> fc8, bilinear upsampling (align_corners=False)."""
  nn = torch.nn
  features = torchvision.models.vgg16(weights=None).features
  for i in (4, 9, 16):
    features[i] = nn.MaxPool2d(3, stride=2, padding=1)
  for i in (23, 30):
    features[i] = nn.MaxPool2d(3, stride=1, padding=1)
  for i in (24, 26, 28):
    features[i].dilation, features[i].padding = (2, 2), (2, 2)

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.features = features
      self.head = nn.Sequential(
          nn.Conv2d(512, 1024, 3, padding=12, dilation=12), nn.ReLU(), nn.Dropout(0.5),
          nn.Conv2d(1024, 1024, 1), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(1024, num_classes, 1))

    def forward(self, x):
      y = self.head(self.features(x))
      return nn.functional.interpolate(y, size=x.shape[2:], mode='bilinear',
                                       align_corners=False)

  return Net().eval()


def test_deeplabv1_matches_torch_construction():
  torch = pytest.importorskip('torch', reason=util.PEERS)
  torchvision = pytest.importorskip('torchvision', reason=util.PEERS)
  from segjax.models import deeplabv1
  from segjax.models.convert import vgg as vgg_convert
  torch.manual_seed(0)
  peer = _torch_deeplabv1(torch, torchvision, 5)
  _randomize_torch_biases(peer, seed=1)
  state = util.torch_weights(peer)
  # The encoder is torchvision's vgg16 `features`: its converter maps them
  # (and checks that it used every one); the head by hand.
  encoder = common.SourceWeights({k: v for k, v in state.items() if k.startswith('features.')})
  variables = {'params': {
      'backbone': vgg_convert.convert_torchvision_vgg(
          encoder, depth=16, include_fc=False)['params']}}
  head = common.SourceWeights({k: v for k, v in state.items() if k.startswith('head.')})
  for name, key in (('fc6', 'head.0'), ('fc7', 'head.3'), ('fc8', 'head.6')):
    variables['params'][name] = common.torch_conv_params(head, key, bias=True)
  head.check_all_used()
  assert len(state) == len(encoder.keys()) + len(head.keys())
  model = deeplabv1.DeepLabV1(num_classes=5)
  x = _input((1, 3, 67, 83), seed=3)  # Odd sides: the 3x3 pools' rounding shows.
  check_matches(variables, _init_shapes(model, (1, 67, 83, 3)))
  with torch.no_grad():
    want = _nhwc(peer(torch.from_numpy(x)).numpy())
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, _nhwc(x))
  util.check('torch DeepLab-LargeFOV vs segjax deeplabv1 logits (67x83)', got, want)


def _torch_deeplabv2(torch, torchvision, num_classes, rates=(6, 12, 18, 24)):
  """torchvision resnet101 at output stride 8 (replace_stride_with_dilation
  [False, True, True]) + ASPP-L: the sum of one 3x3 atrous classifier per
  rate, bilinear upsampling (align_corners=False)."""
  nn = torch.nn
  from torchvision.models._utils import IntermediateLayerGetter
  resnet = torchvision.models.resnet101(weights=None,
                                        replace_stride_with_dilation=[False, True, True])

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.backbone = IntermediateLayerGetter(resnet, {'layer4': 'out'})
      self.aspp = nn.ModuleList(nn.Conv2d(2048, num_classes, 3, padding=r, dilation=r)
                                for r in rates)

    def forward(self, x):
      f = self.backbone(x)['out']
      y = sum(conv(f) for conv in self.aspp)
      return nn.functional.interpolate(y, size=x.shape[2:], mode='bilinear',
                                       align_corners=False)

  return Net().eval()


def test_deeplabv2_matches_torch_construction():
  torch = pytest.importorskip('torch', reason=util.PEERS)
  torchvision = pytest.importorskip('torchvision', reason=util.PEERS)
  from segjax.models import deeplabv2
  from segjax.models.convert import resnet as resnet_convert
  torch.manual_seed(0)
  peer = _torch_deeplabv2(torch, torchvision, 4)
  util.randomize_torch_bn(peer, seed=2)
  _randomize_torch_biases(peer, seed=3)
  weights = common.SourceWeights(util.torch_weights(peer), source='torch deeplabv2')
  variables: dict = {}
  resnet_convert.put_torchvision_resnet(weights, variables, prefix='backbone.',
                                        path='backbone', depth=101)
  for i in range(4):
    common.put_module(variables, f'aspp{i}',
                      common.torch_conv_params(weights, f'aspp.{i}', bias=True))
  weights.check_all_used(ignore=common.TORCH_IGNORE)
  model = deeplabv2.DeepLabV2(num_classes=4)
  x = _input((1, 3, 57, 70), seed=4)
  check_matches(variables, _init_shapes(model, (1, 57, 70, 3)))
  with torch.no_grad():
    want = _nhwc(peer(torch.from_numpy(x)).numpy())
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, _nhwc(x))
  util.check('torch ResNet-101 + ASPP-L vs segjax deeplabv2 logits (57x70)', got, want)


# ------------------------------------------------------------- satellite VGG16-FCN


def _torch_fcn_sat(torch, torchvision, variant, num_classes):
  """The satellite write-up's FCN{variant} forward pass, on torchvision's
  vgg16 features (pool3/pool4/pool5 = features[16]/[23]/[30] outputs)."""
  nn = torch.nn

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.features = torchvision.models.vgg16(weights=None).features
      self.conv6 = nn.Conv2d(512, 512, 1)
      self.conv7 = nn.Conv2d(512, 512, 1)
      widths = (512, 512, 256, 128, 64, 32)
      for i in range(1, 6):
        setattr(self, f'deconv{i}', nn.ConvTranspose2d(widths[i - 1], widths[i], 3, stride=2,
                                                       padding=1, output_padding=1))
        setattr(self, f'bn{i}', nn.BatchNorm2d(widths[i]))
      self.classifier = nn.Conv2d(32, num_classes, 1)

    def forward(self, x):
      pools = {}
      for i, layer in enumerate(self.features):
        x = layer(x)
        pools[i] = x
      x3, x4, x5 = pools[16], pools[23], pools[30]
      relu = torch.relu
      s = relu(self.deconv1(relu(self.conv7(relu(self.conv6(x5))))))
      if variant == '8s':
        s = self.bn2(relu(self.deconv2(s)) + relu(self.deconv2(x4)) + x3)
      else:
        if variant == '16s':
          s = self.bn1(s + x4)
        s = self.bn2(relu(self.deconv2(s)))
      for i in (3, 4, 5):
        s = getattr(self, f'bn{i}')(relu(getattr(self, f'deconv{i}')(s)))
      return self.classifier(s)

  return Net().eval()


@pytest.mark.parametrize('variant', ['32s', '16s', '8s'])
def test_fcn_sat_matches_torch_construction(variant):
  torch = pytest.importorskip('torch', reason=util.PEERS)
  torchvision = pytest.importorskip('torchvision', reason=util.PEERS)
  from segjax.models import fcn_sat
  from segjax.models.convert import vgg as vgg_convert
  torch.manual_seed(0)
  peer = _torch_fcn_sat(torch, torchvision, variant, 7)
  util.randomize_torch_bn(peer, seed=5)
  _randomize_torch_biases(peer, seed=6)
  state = util.torch_weights(peer)
  encoder = common.SourceWeights({k: v for k, v in state.items() if k.startswith('features.')})
  variables = {'params': {'backbone': vgg_convert.convert_torchvision_vgg(
      encoder, depth=16, include_fc=False)['params']}}
  head = common.SourceWeights({k: v for k, v in state.items() if not k.startswith('features.')})
  for name in ('conv6', 'conv7', 'classifier'):
    common.put_module(variables, name, common.torch_conv_params(head, name, bias=True))
  for i in range(1, 6):
    common.put_module(variables, f'deconv{i}', {
        'kernel': common.torch_conv_transpose(head.take(f'deconv{i}.weight')),
        'bias': head.take(f'deconv{i}.bias')})
    if i > 1 or variant == '16s':
      common.put_module(variables, f'bn{i}', *common.torch_bn(head, f'bn{i}'))
  # The write-up's modules define bn1 everywhere but use it in 16s only.
  head.check_all_used(ignore=(*common.TORCH_IGNORE, *(() if variant == '16s' else ('bn1.*',))))
  model = fcn_sat.FCNSat(num_classes=7, variant=variant)
  check_matches(variables, _init_shapes(model, (1, 64, 96, 3)))
  x = _input((1, 3, 64, 96), seed=7)
  with torch.no_grad():
    want = _nhwc(peer(torch.from_numpy(x)).numpy())
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, _nhwc(x))
  util.check(f'torch satellite FCN{variant} vs segjax fcn{variant}_sat logits (64x96)', got,
             want)
