"""Converters for the VGG family: torchvision vgg16 / vgg16_bn, Keras VGG16
and torchvision fcn_resnet50.

VGG layouts:
  * torchvision `features.{i}`: for each stage, per conv `Conv2d` (+
    `BatchNorm2d` for *_bn) + `ReLU`, then a `MaxPool2d`; the indices below are
    counted mechanically from that. `classifier.0` / `classifier.3` are the
    Linear layers fc6 / fc7 on the NCHW-flattened (C, H, W) = (512, 7, 7)
    pool5; `classifier.6` is the ImageNet head (fc8).
  * Keras `block{b}_conv{c}` (kernel (3, 3, in, out), like flax); 'fc1' / 'fc2'
    are Dense layers on the NHWC-flattened (H, W, C) = (7, 7, 512) pool5 and
    'predictions' the ImageNet head. include_top=False files have no Dense layers.
"""

from __future__ import annotations

import numpy as np

from segjax.models.backbones import vgg
from segjax.models.convert import common
from segjax.models.convert.common import ConversionError, Converter, SourceWeights

# The feature map fc6 reads in the ImageNet classifiers: 7x7x512 at 224x224.
_FC6_IN = (vgg.FC6_KERNEL, vgg.FC6_KERNEL, vgg.WIDTHS[-1])


def _conv_names(depth: int):
  """(stage, conv) of every 3x3 conv in order: (1, 1), (1, 2), (2, 1), ..."""
  return [(b, c) for b, n in enumerate(vgg.DEPTHS[depth], start=1)
          for c in range(1, n + 1)]


def torchvision_feature_indices(depth: int, batch_norm: bool) -> list[int]:
  """The `features.{i}` index of each conv of torchvision's vgg{depth}[_bn]."""
  out, i = [], 0
  for n in vgg.DEPTHS[depth]:
    for _ in range(n):
      out.append(i)
      i += 3 if batch_norm else 2  # Conv [+ BN] + ReLU.
    i += 1  # MaxPool2d.
  return out


def _fc_to_conv_torch(w: np.ndarray, in_shape: tuple[int, int, int]) -> np.ndarray:
  """Linear (out, C*H*W), NCHW-flattened input -> conv kernel (H, W, C, out)."""
  h, wd, c = in_shape
  if w.ndim != 2 or w.shape[1] != h * wd * c:
    raise ConversionError(f'Linear weight of shape {w.shape} does not read a '
                          f'{h}x{wd}x{c} map')
  return np.transpose(w.reshape(w.shape[0], c, h, wd), (2, 3, 1, 0))


def _fc_to_conv_keras(w: np.ndarray, in_shape: tuple[int, int, int]) -> np.ndarray:
  """Dense kernel (H*W*C, out), NHWC-flattened input -> conv kernel (H, W, C, out)."""
  h, wd, c = in_shape
  if w.ndim != 2 or w.shape[0] != h * wd * c:
    raise ConversionError(f'Dense kernel of shape {w.shape} does not read a '
                          f'{h}x{wd}x{c} map')
  return w.reshape(h, wd, c, w.shape[1])


def convert_torchvision_vgg(weights: SourceWeights, *, depth: int = 16,
                            batch_norm: bool = False, include_fc: bool = True,
                            include_fc8: bool = False) -> dict:
  """torchvision vgg{depth}[_bn] state_dict -> VGG(depth, batch_norm,
  include_fc[, num_classes]) variables. The classifier tensors that are not
  mapped (all of them without include_fc, `classifier.6` without include_fc8)
  are ignored: they have no counterpart in that VGG."""
  variables: dict = {}
  for (b, c), i in zip(_conv_names(depth), torchvision_feature_indices(depth, batch_norm)):
    common.put_module(variables, f'conv{b}_{c}',
                      common.torch_conv_params(weights, f'features.{i}', bias=True))
    if batch_norm:
      common.put_module(variables, f'bn{b}_{c}', *common.torch_bn(weights, f'features.{i + 1}'))
  ignore = list(common.TORCH_IGNORE)
  if include_fc:
    fc6 = weights.take('classifier.0.weight')
    common.put_module(variables, 'fc6', {'kernel': _fc_to_conv_torch(fc6, _FC6_IN),
                                         'bias': weights.take('classifier.0.bias')})
    for name, key in (('fc7', 'classifier.3'),) + ((('fc8', 'classifier.6'),)
                                                   if include_fc8 else ()):
      w = weights.take(key + '.weight')
      common.put_module(variables, name, {'kernel': common.torch_linear(w)[None, None],
                                          'bias': weights.take(key + '.bias')})
    if not include_fc8:
      ignore.append('classifier.6.*')  # The ImageNet head (fc8): no counterpart.
  else:
    ignore.append('classifier.*')  # The ImageNet classifier: no counterpart.
  weights.check_all_used(ignore=ignore)
  return variables


def convert_keras_vgg(weights: SourceWeights, *, depth: int = 16,
                      include_fc8: bool = False) -> dict:
  """keras.applications.VGG16/19 weights -> VGG variables; fc6/fc7 when the file
  has the top ('fc1/0' present), else the conv part only."""
  variables: dict = {}
  for b, c in _conv_names(depth):
    key = f'block{b}_conv{c}'
    common.put_module(variables, f'conv{b}_{c}', {'kernel': weights.take(key + '/0'),
                                                  'bias': weights.take(key + '/1')})
  ignore = []
  if 'fc1/0' in weights:
    common.put_module(variables, 'fc6', {
        'kernel': _fc_to_conv_keras(weights.take('fc1/0'), _FC6_IN),
        'bias': weights.take('fc1/1')})
    for name, key in (('fc7', 'fc2'),) + ((('fc8', 'predictions'),) if include_fc8 else ()):
      common.put_module(variables, name, {'kernel': weights.take(key + '/0')[None, None],
                                          'bias': weights.take(key + '/1')})
    if not include_fc8:
      ignore.append('predictions/*')  # The ImageNet head (fc8): no counterpart.
  weights.check_all_used(ignore=ignore)
  return variables


def _keras_vgg_checked(weights: SourceWeights, *, top: bool) -> dict:
  """convert_keras_vgg for VGG16, with the file's top matching the --arch."""
  if top and 'fc1/0' not in weights:
    raise common.ConversionError(f'{weights.source}: no fc1/fc2 layers (an include_top=False '
                                 'file); use --arch=vgg16_notop')
  if not top and 'fc1/0' in weights:
    raise common.ConversionError(f'{weights.source}: has fc1/fc2 (an include_top=True file); '
                                 'use --arch=vgg16')
  return convert_keras_vgg(weights, depth=16)


def keras_vgg_layers(depth: int = 16, include_top: bool = True) -> list[tuple[str, str]]:
  """Weight-bearing layers of keras.applications.VGG{depth} in model.layers order.

  Files saved with include_top=False hold only the Conv2D layers (the list
  with include_top=False; the default list's prefix).
  """
  out = [(f'block{b}_conv{c}', 'Conv2D') for b, c in _conv_names(depth)]
  if include_top:
    out += [('fc1', 'Dense'), ('fc2', 'Dense'), ('predictions', 'Dense')]
  return out


# --- fcn_resnet50 ---------------------------------------------------------------

def _put_fcn_head(weights: SourceWeights, variables: dict, prefix: str, path: str) -> None:
  """torchvision FCNHead (0 conv, 1 BN, 4 classifier conv) -> our FCNHead."""
  common.put_module(variables, f'{path}/conv', common.torch_conv_params(weights, prefix + '.0'))
  common.put_module(variables, f'{path}/bn', *common.torch_bn(weights, prefix + '.1'))
  common.put_module(variables, f'{path}/classifier',
                    common.torch_conv_params(weights, prefix + '.4', bias=True))


def convert_torchvision_fcn_resnet(weights: SourceWeights, *, depth: int = 50) -> dict:
  """torchvision segmentation.fcn_resnet{depth}(aux_loss=True) -> FCN32s
  (resnet{depth}, output_stride 8, aux_head) variables."""
  from segjax.models.convert import resnet as resnet_convert  # Written alongside.
  variables: dict = {}
  resnet_convert.put_torchvision_resnet(weights, variables, prefix='backbone.',
                                        path='backbone', depth=depth)
  _put_fcn_head(weights, variables, 'classifier', 'head')
  _put_fcn_head(weights, variables, 'aux_classifier', 'aux_head')
  weights.check_all_used(ignore=common.TORCH_IGNORE)
  return variables


def _build_vgg16():
  return vgg.VGG(depth=16, include_fc=True)


def _build_vgg16_bn():
  return vgg.VGG(depth=16, batch_norm=True)


def _build_fcn_resnet50(num_classes: int):
  from segjax.models import fcn
  return fcn.FCN32s(num_classes=num_classes, backbone='resnet50', output_stride=8,
                    aux_head=True, padding='SYMMETRIC')


CONVERTERS: dict[tuple[str, str], Converter] = {
    ('torchvision', 'vgg16'): Converter(
        fn=lambda w: convert_torchvision_vgg(w, depth=16, include_fc=True),
        kind='backbone', build=_build_vgg16,
        model={'backbone': 'vgg16'},
        peer='torchvision.models.vgg16 (features + classifier.0/3 as fc6/fc7)'),
    ('torchvision', 'vgg16_bn'): Converter(
        fn=lambda w: convert_torchvision_vgg(w, depth=16, batch_norm=True, include_fc=False),
        kind='backbone', build=_build_vgg16_bn,
        model={'backbone': 'vgg16_bn'},
        peer='torchvision.models.vgg16_bn (features)'),
    ('keras', 'vgg16'): Converter(
        fn=lambda w: _keras_vgg_checked(w, top=True),
        kind='backbone', build=_build_vgg16,
        model={'backbone': 'vgg16'},
        peer='keras.applications.VGG16 (fc1/fc2 as fc6/fc7 when include_top)',
        keras_layers=lambda: keras_vgg_layers(16, include_top=True)),
    # keras.applications' *_notop.h5 files (include_top=False): convolutions only.
    ('keras', 'vgg16_notop'): Converter(
        fn=lambda w: _keras_vgg_checked(w, top=False),
        kind='backbone', build=lambda: vgg.VGG(depth=16),
        model={'backbone': 'vgg16'},
        peer='keras.applications.VGG16(include_top=False)',
        keras_layers=lambda: keras_vgg_layers(16, include_top=False)),
    ('torchvision', 'fcn_resnet50'): Converter(
        fn=lambda w: convert_torchvision_fcn_resnet(w, depth=50),
        kind='model', build=_build_fcn_resnet50,
        model={'name': 'fcn32s', 'backbone': 'resnet50', 'output_stride': 8,
               'kwargs': {'aux_head': True, 'padding': 'SYMMETRIC'}},
        peer='torchvision.models.segmentation.fcn_resnet50(aux_loss=True)',
        classifier='head/classifier/bias'),
}
