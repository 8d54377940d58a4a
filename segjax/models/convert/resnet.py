"""Converters for the ResNet family: torchvision resnet50/101/152 and
keras.applications.ResNet50 backbones, torchvision deeplabv3_resnet50/101.

Name mapping (see segjax/models/backbones/resnet.py):
  torchvision {prefix}conv1 / bn1              -> {path}/conv1 / bn1
  torchvision {prefix}layer{s}.{i}.conv{j}     -> {path}/layer{s}_{i}/conv{j} (bn{j})
  torchvision {prefix}layer{s}.0.downsample.0  -> {path}/layer{s}_0/downsample_conv
  torchvision {prefix}layer{s}.0.downsample.1  -> {path}/layer{s}_0/downsample_bn
  Keras conv1_conv / conv1_bn                  -> conv1 / bn1
  Keras conv{s+1}_block{i+1}_{j}_conv / _bn    -> layer{s}_{i}/conv{j} / bn{j}, j = 1..3
  Keras conv{s+1}_block1_0_conv / _bn          -> layer{s}_0/downsample_conv / _bn

torchvision's DeepLabV3 (segmentation/deeplabv3.py):
  classifier.0 (ASPP) convs.0.{0,1}            -> aspp/aspp0/{conv,bn}
  classifier.0.convs.{1,2,3}.{0,1}             -> aspp/aspp{1,2,3}/{conv,bn}
  classifier.0.convs.4.{1,2} (ASPPPooling)     -> aspp/image_pooling/{conv,bn}
  classifier.0.project.{0,1}                   -> aspp/projection/{conv,bn}
  classifier.{1,2} (3x3 conv, BN)              -> head/{conv,bn}
  classifier.4 (1x1 conv with bias)            -> classifier
  aux_classifier.{0,1,4} (FCNHead)             -> aux_head/{conv,bn,classifier}
"""

from __future__ import annotations

import functools

from segjax.models.backbones import resnet
from segjax.models.convert import common
from segjax.models.convert.common import Converter, SourceWeights

DEEPLABV3_NUM_ASPP_RATES = 3  # torchvision's ASPP has three atrous branches.


def _put_torch_conv_bn(weights: SourceWeights, variables: dict, conv_key: str, bn_key: str,
                       conv_path: str, bn_path: str) -> None:
  common.put_module(variables, conv_path, common.torch_conv_params(weights, conv_key))
  common.put_module(variables, bn_path, *common.torch_bn(weights, bn_key))


def put_torchvision_resnet(weights: SourceWeights, variables: dict, *, prefix: str,
                           path: str, depth: int) -> None:
  """Maps a torchvision ResNet's tensors (`{prefix}conv1.weight`,
  `{prefix}layer1.0.conv1.weight`, ...) into `variables` under the flax path
  `path` (e.g. prefix 'backbone.', path 'backbone'; prefix '', path '' for a
  bare backbone). Takes every backbone tensor except the ImageNet `fc`.

  Args:
    weights: the source tensors.
    variables: {'params': ..., 'batch_stats': ...} being filled (created if empty).
    prefix: key prefix of the ResNet inside the state dict.
    path: '/'-separated flax path of our ResNet module ('' = the root).
    depth: 50, 101 or 152.
  """
  if depth not in resnet.STAGE_BLOCKS:
    raise ValueError(f'depth {depth!r} is not one of {tuple(resnet.STAGE_BLOCKS)}')
  root = f'{path}/' if path else ''
  _put_torch_conv_bn(weights, variables, f'{prefix}conv1', f'{prefix}bn1', f'{root}conv1',
                     f'{root}bn1')
  for s, n in enumerate(resnet.STAGE_BLOCKS[depth], start=1):
    for i in range(n):
      src, dst = f'{prefix}layer{s}.{i}.', f'{root}layer{s}_{i}/'
      for j in (1, 2, 3):
        _put_torch_conv_bn(weights, variables, f'{src}conv{j}', f'{src}bn{j}',
                           f'{dst}conv{j}', f'{dst}bn{j}')
      if i == 0:
        _put_torch_conv_bn(weights, variables, f'{src}downsample.0', f'{src}downsample.1',
                           f'{dst}downsample_conv', f'{dst}downsample_bn')


def torchvision_resnet(weights: SourceWeights, depth: int) -> dict:
  variables: dict = {}
  put_torchvision_resnet(weights, variables, prefix='', path='', depth=depth)
  # fc.* is the ImageNet classifier: a backbone has no counterpart by design.
  weights.check_all_used(ignore=(*common.TORCH_IGNORE, 'fc.*'))
  return variables


def torchvision_deeplabv3(weights: SourceWeights, depth: int) -> dict:
  """Whole torchvision deeplabv3_resnet{depth} (aux_loss=True) -> our DeepLabV3."""
  variables: dict = {}
  put_torchvision_resnet(weights, variables, prefix='backbone.', path='backbone',
                         depth=depth)
  aspp = 'classifier.0.'
  branches = [(f'{aspp}convs.0.0', f'{aspp}convs.0.1', 'aspp/aspp0')]
  branches += [(f'{aspp}convs.{i}.0', f'{aspp}convs.{i}.1', f'aspp/aspp{i}')
               for i in range(1, DEEPLABV3_NUM_ASPP_RATES + 1)]
  pool = DEEPLABV3_NUM_ASPP_RATES + 1
  # ASPPPooling = Sequential(AdaptiveAvgPool2d, Conv2d, BatchNorm2d, ReLU).
  branches.append((f'{aspp}convs.{pool}.1', f'{aspp}convs.{pool}.2', 'aspp/image_pooling'))
  branches.append((f'{aspp}project.0', f'{aspp}project.1', 'aspp/projection'))
  for conv_key, bn_key, dst in branches:
    _put_torch_conv_bn(weights, variables, conv_key, bn_key, f'{dst}/conv', f'{dst}/bn')
  _put_torch_conv_bn(weights, variables, 'classifier.1', 'classifier.2', 'head/conv',
                     'head/bn')
  common.put_module(variables, 'classifier',
                    common.torch_conv_params(weights, 'classifier.4', bias=True))
  # FCNHead = Sequential(Conv2d, BatchNorm2d, ReLU, Dropout, Conv2d).
  _put_torch_conv_bn(weights, variables, 'aux_classifier.0', 'aux_classifier.1',
                     'aux_head/conv', 'aux_head/bn')
  common.put_module(variables, 'aux_head/classifier',
                    common.torch_conv_params(weights, 'aux_classifier.4', bias=True))
  weights.check_all_used(ignore=common.TORCH_IGNORE)
  return variables


# --- Keras ResNet50 -------------------------------------------------------------

KERAS_RESNET50_KWARGS = {'stride_in_1x1': True, 'conv_bias': True,
                         # keras.applications.resnet: BatchNormalization(epsilon=1.001e-5).
                         'bn_epsilon': 1.001e-5}


def _keras_block_layers(stage: int, block: int) -> list[tuple[str, str, str]]:
  """[(keras layer, keras class, our path)] of one Keras ResNet50 block, in
  `model.layers` order: Keras 3 lists a functional model's layers by graph
  depth, so a first block's shortcut conv/BN ('_0_') interleave with the
  third conv/BN (verified against keras 3.15 in the parity test)."""
  name = f'conv{stage + 1}_block{block + 1}_'
  ours = f'layer{stage}_{block}/'

  def conv(j, path):
    return (f'{name}{j}_conv', 'Conv2D', ours + path)

  def bn(j, path):
    return (f'{name}{j}_bn', 'BatchNormalization', ours + path)

  out = [conv(1, 'conv1'), bn(1, 'bn1'), conv(2, 'conv2'), bn(2, 'bn2')]
  if block == 0:
    return out + [conv(0, 'downsample_conv'), conv(3, 'conv3'), bn(0, 'downsample_bn'),
                  bn(3, 'bn3')]
  return out + [conv(3, 'conv3'), bn(3, 'bn3')]


def _keras_resnet50_layers() -> list[tuple[str, str, str]]:
  out = [('conv1_conv', 'Conv2D', 'conv1'), ('conv1_bn', 'BatchNormalization', 'bn1')]
  for s, n in enumerate(resnet.STAGE_BLOCKS[50], start=1):
    for i in range(n):
      out += _keras_block_layers(s, i)
  return out


def keras_resnet50_layers() -> list[tuple[str, str]]:
  """Weight-bearing layers of keras.applications.ResNet50(include_top=False)."""
  return [(name, cls) for name, cls, _ in _keras_resnet50_layers()]


def keras_resnet50(weights: SourceWeights) -> dict:
  variables: dict = {}
  for name, cls, path in _keras_resnet50_layers():
    if cls == 'Conv2D':
      # Keras Conv2D kernels are (kh, kw, in, out) like flax's.
      common.put_module(variables, path, {'kernel': weights.take(f'{name}/0'),
                                          'bias': weights.take(f'{name}/1')})
    else:
      params = {'scale': weights.take(f'{name}/0'), 'bias': weights.take(f'{name}/1')}
      stats = {'mean': weights.take(f'{name}/2'), 'var': weights.take(f'{name}/3')}
      common.put_module(variables, path, params, stats)
  # include_top=True files also hold the ImageNet classifier 'predictions'
  # (Dense): a backbone has no counterpart by design.
  weights.check_all_used(ignore=('predictions/*',))
  return variables


# --- Registry -------------------------------------------------------------------

def _build_resnet(depth: int, **kwargs):
  return resnet.ResNet(depth=depth, **kwargs)


def _build_deeplabv3(num_classes: int, depth: int):
  from segjax.models.deeplabv3 import DeepLabV3
  return DeepLabV3(num_classes=num_classes, backbone=f'resnet{depth}', output_stride=8,
                   multi_grid=None, aux_head=True)


def _torchvision_backbone(depth: int) -> Converter:
  return Converter(
      fn=functools.partial(torchvision_resnet, depth=depth), kind='backbone',
      build=functools.partial(_build_resnet, depth),
      model={'backbone': f'resnet{depth}', 'padding': 'SYMMETRIC'},
      peer=f'torchvision.models.resnet{depth}')


def _torchvision_deeplabv3(depth: int) -> Converter:
  return Converter(
      fn=functools.partial(torchvision_deeplabv3, depth=depth), kind='model',
      build=functools.partial(_build_deeplabv3, depth=depth),
      model={'name': 'deeplabv3', 'backbone': f'resnet{depth}', 'output_stride': 8,
             'kwargs': {'multi_grid': None, 'aux_head': True, 'padding': 'SYMMETRIC'}},
      peer=f'torchvision.models.segmentation.deeplabv3_resnet{depth}(aux_loss=True)',
      classifier='classifier/bias')


CONVERTERS: dict[tuple[str, str], Converter] = {
    **{('torchvision', f'resnet{d}'): _torchvision_backbone(d) for d in (50, 101, 152)},
    ('keras', 'resnet50'): Converter(
        fn=keras_resnet50, kind='backbone',
        build=functools.partial(_build_resnet, 50, **KERAS_RESNET50_KWARGS),
        model={'backbone': 'resnet50', 'padding': 'SYMMETRIC',
               'backbone_kwargs': dict(KERAS_RESNET50_KWARGS)},
        peer='keras.applications.ResNet50(include_top=False)',
        keras_layers=keras_resnet50_layers),
    **{('torchvision', f'deeplabv3_resnet{d}'): _torchvision_deeplabv3(d) for d in (50, 101)},
}
