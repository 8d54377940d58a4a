"""MobileNetV2 weights from Keras (keras.applications) and torchvision.

Both convert to `segjax.models.backbones.mobilenet_v2.MobileNetV2` with
`include_last_conv=True` (kind 'backbone'):

  * ('keras', 'mobilenetv2') and ('keras', 'mobilenetv2_<alpha>') for the other
    widths Keras publishes weights for (0.35, 0.5, 0.75, 1.3, 1.4):
    keras.applications.MobileNetV2(include_top=False, alpha=alpha). The width
    comes from the arch name, not from tensor shapes: alpha 0.35 and 0.5 give
    the same first layer, and a wrong alpha is a ConversionError naming the
    first tensor whose shape differs. Keras layer names are ours; padding
    'SAME' (Keras' ZeroPadding2D(correct_pad) + 'valid' of the stride-2
    depthwise convs is TF 'SAME' for 3x3 kernels), BatchNorm epsilon 1e-3.
  * ('torchvision', 'mobilenet_v2'): torchvision.models.mobilenet_v2 (width
    1.0). torchvision pads symmetrically (padding='SYMMETRIC') and uses
    BatchNorm epsilon 1e-5.

The converted variables include Keras' final Conv_1 (1280) + Conv_1_bn
(torchvision's features.18) and block_16_project_BN. Segmentation encoders
omit some of them (DeepLabV3+: include_last_conv=False; the TF-tutorial U-Net
also final_project_bn=False): `drop_optional_layers(variables, target)`
removes those the target backbone's variables lack, and nothing else.
"""

from __future__ import annotations

import functools
from typing import Mapping

from segjax.models.backbones import mobilenet_v2
from segjax.models.convert import common
from segjax.models.convert.common import ConversionError, Converter, SourceWeights

# Keras' published MobileNetV2 widths (keras.applications.MobileNetV2 accepts
# these alphas with weights='imagenet'); 1.0 is the plain 'mobilenetv2' arch.
KERAS_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)

# Top-level layers of the converted backbone that a segmentation encoder may
# lack by design (see the module docstring).
OPTIONAL_LAYERS = ('Conv_1', 'Conv_1_bn', 'block_16_project_BN')

# ImageNet classifier of include_top=True files / torchvision's model: not
# part of a backbone.
_KERAS_IGNORE = ('predictions/*',)
_TORCH_IGNORE = (*common.TORCH_IGNORE, 'classifier.*')

_BN = ('scale', 'bias', 'mean', 'var')


def _last_channels(width_multiplier: float) -> int:
  # Keras and torchvision widen Conv_1 only for width > 1.
  if width_multiplier > 1.0:
    return mobilenet_v2.make_divisible(1280 * width_multiplier, 8)
  return 1280


def _layer_plan(width_multiplier: float) -> list[tuple[str, str, tuple[int, ...]]]:
  """[(our layer name, 'conv'|'depthwise'|'bn', our kernel shape or (C,))] in
  Keras' model.layers order."""
  first = mobilenet_v2.make_divisible(32 * width_multiplier, 8)
  plan = [('Conv1', 'conv', (3, 3, 3, first)), ('bn_Conv1', 'bn', (first,))]
  for spec in mobilenet_v2.block_specs(width_multiplier, 32):
    p = spec.name + '_'
    hidden = spec.in_channels * spec.expansion
    if spec.expansion != 1:
      plan += [(p + 'expand', 'conv', (1, 1, spec.in_channels, hidden)),
               (p + 'expand_BN', 'bn', (hidden,))]
    plan += [(p + 'depthwise', 'depthwise', (3, 3, 1, hidden)),
             (p + 'depthwise_BN', 'bn', (hidden,)),
             (p + 'project', 'conv', (1, 1, hidden, spec.out_channels)),
             (p + 'project_BN', 'bn', (spec.out_channels,))]
    last_in = spec.out_channels
  last = _last_channels(width_multiplier)
  plan += [('Conv_1', 'conv', (1, 1, last_in, last)), ('Conv_1_bn', 'bn', (last,))]
  return plan


def keras_layers(width_multiplier: float = 1.0) -> list[tuple[str, str]]:
  """Weight-bearing layers of keras.applications.MobileNetV2(include_top=False)."""
  classes = {'conv': 'Conv2D', 'depthwise': 'DepthwiseConv2D', 'bn': 'BatchNormalization'}
  return [(name, classes[kind]) for name, kind, _ in _layer_plan(width_multiplier)]


def convert_keras(weights: SourceWeights, width_multiplier: float = 1.0) -> dict:
  """Keras MobileNetV2(alpha=width_multiplier) -> our MobileNetV2 variables."""
  variables: dict = {}
  for name, kind, shape in _layer_plan(width_multiplier):
    if kind == 'bn':
      # gamma, beta, moving_mean, moving_variance.
      gamma, beta, mean, var = (weights.take(f'{name}/{i}', shape) for i in range(4))
      common.put_module(variables, name, {'scale': gamma, 'bias': beta},
                        {'mean': mean, 'var': var})
    elif kind == 'depthwise':
      keras_shape = (*shape[:2], shape[3], 1)
      common.put_module(variables, name, {
          'kernel': common.keras_depthwise(weights.take(f'{name}/0', keras_shape))})
    else:  # Keras Conv2D kernels are (kh, kw, in, out), like flax's.
      common.put_module(variables, name, {'kernel': weights.take(f'{name}/0', shape)})
  weights.check_all_used(ignore=_KERAS_IGNORE)
  return variables


def _torch_names() -> dict[str, str]:
  """Our layer name -> torchvision module path (width-independent)."""
  names = {'Conv1': 'features.0.0', 'bn_Conv1': 'features.0.1'}
  for i, spec in enumerate(mobilenet_v2.block_specs(1.0, 32)):
    p, f = spec.name + '_', f'features.{i + 1}.conv'
    if spec.expansion == 1:  # conv.0 depthwise ConvBNReLU, conv.1 project, conv.2 BN.
      names.update({p + 'depthwise': f + '.0.0', p + 'depthwise_BN': f + '.0.1',
                    p + 'project': f + '.1', p + 'project_BN': f + '.2'})
    else:  # conv.0 expand ConvBNReLU, conv.1 depthwise ConvBNReLU, conv.2/3 project.
      names.update({p + 'expand': f + '.0.0', p + 'expand_BN': f + '.0.1',
                    p + 'depthwise': f + '.1.0', p + 'depthwise_BN': f + '.1.1',
                    p + 'project': f + '.2', p + 'project_BN': f + '.3'})
  n = len(mobilenet_v2.block_specs(1.0, 32)) + 1
  names.update({'Conv_1': f'features.{n}.0', 'Conv_1_bn': f'features.{n}.1'})
  return names


def convert_torchvision(weights: SourceWeights) -> dict:
  """torchvision mobilenet_v2 (width 1.0) state_dict -> our MobileNetV2 variables."""
  names = _torch_names()
  variables: dict = {}
  for name, kind, shape in _layer_plan(1.0):
    src = names[name]
    if kind == 'bn':
      params, stats = common.torch_bn(weights, src)
      for key, value in (*params.items(), *stats.items()):
        if value.shape != shape:
          raise ConversionError(f'{weights.source}: tensor {src!r} ({key}) has shape '
                                f'{value.shape}, expected {shape}')
      common.put_module(variables, name, params, stats)
    else:
      torch_shape = ((shape[3], 1, *shape[:2]) if kind == 'depthwise' else
                     (shape[3], shape[2], *shape[:2]))
      w = weights.take(src + '.weight', torch_shape)
      fn = common.torch_depthwise if kind == 'depthwise' else common.torch_conv
      common.put_module(variables, name, {'kernel': fn(w)})
  weights.check_all_used(ignore=_TORCH_IGNORE)
  return variables


def drop_optional_layers(variables: Mapping, target: Mapping) -> dict:
  """`variables` without the OPTIONAL_LAYERS that `target` (variables, or their
  shapes, of the backbone to load into) lacks.

  E.g. DeepLabV3+'s encoder has no Conv_1/Conv_1_bn; the U-Net's also no
  block_16_project_BN. Everything else must still match (common.check_matches).
  """
  out = {}
  for collection, tree in variables.items():
    have = target.get(collection, {})
    out[collection] = {k: v for k, v in tree.items()
                       if k not in OPTIONAL_LAYERS or k in have}
  return out


def _keras_converter(alpha: float) -> Converter:
  return Converter(
      fn=functools.partial(convert_keras, width_multiplier=alpha),
      kind='backbone',
      build=functools.partial(mobilenet_v2.MobileNetV2, width_multiplier=alpha,
                              include_last_conv=True, padding='SAME', bn_epsilon=1e-3),
      model={'backbone': 'mobilenetv2', 'width_multiplier': alpha, 'padding': 'SAME'},
      peer=f'keras.applications.MobileNetV2(alpha={alpha}, include_top=False)',
      keras_layers=functools.partial(keras_layers, alpha))


def _arch(alpha: float) -> str:
  return 'mobilenetv2' if alpha == 1.0 else f'mobilenetv2_{alpha}'


CONVERTERS: dict[tuple[str, str], Converter] = {
    **{('keras', _arch(a)): _keras_converter(a) for a in KERAS_ALPHAS},
    ('torchvision', 'mobilenet_v2'): Converter(
        fn=convert_torchvision,
        kind='backbone',
        build=functools.partial(mobilenet_v2.MobileNetV2, include_last_conv=True,
                                padding='SYMMETRIC', bn_epsilon=1e-5),
        # torchvision pads symmetrically and uses BatchNorm epsilon 1e-5
        # (segmentation models default to Keras' 1e-3: backbone_kwargs).
        model={'backbone': 'mobilenetv2', 'padding': 'SYMMETRIC',
               'backbone_kwargs': {'bn_epsilon': 1e-5}},
        peer='torchvision.models.mobilenet_v2'),
}
