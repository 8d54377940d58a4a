"""DSRFCN: a depthwise-separable residual fully convolutional network.

A small encoder of residual separable-conv stages separated by 2x2 max
pooling, and FCN-8s-style fusion (Long et al., 2015, "Fully Convolutional
Networks for Semantic Segmentation") of its stride-8, -16 and -32 stages.

Encoder ('backbone', `DSRFCNEncoder`):
  stem: 3x3 conv, stride 2 -> BN -> ELU                      (stride 2)
  stage 0: residual block                                    'stride2'
  2x2 max pool -> stage 1: residual block                    'stride4'
  2x2 max pool -> stage 2 ... stage 4                        'stride8' ... 'stride32'

Residual block (stride 1, cin -> cout):
  main:     SepConv(cout, ELU) -> SepConv(cout, ELU) -> SepConv(cout, linear)
  shortcut: SepConv(cout, linear)                  (a projection, always)
  out = ELU(main + shortcut)
where SepConv is `layers.SeparableConv`: depthwise 3x3 -> BN -> act ->
pointwise 1x1 -> BN -> act. The linear ones have no activation between the
depthwise and pointwise convs either, as in Xception (Chollet, 2017, found
that better); the ELU comes after the addition, as in ResNet.

Head: 1x1 score convs (with bias) on the stride-8/16/32 stages; score32 is
bilinearly upsampled x2 and added to score16, the sum upsampled x2 and added
to score8, and that upsampled x8 to the input. Inputs are zero-padded at the
bottom/right to a multiple of 32 and the logits cropped back, so any H, W
works and every upsampling is an exact x2 (zero = the mean of normalised
images).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers
from segjax.models.backbones.mobilenet_v2 import make_divisible

# Stage widths at width_multiplier 1: doubling per stage from 32, the
# VGG/U-Net progression (capped at 512 like VGG), for strides 2 ... 32.
DEFAULT_STAGE_CHANNELS = (32, 64, 128, 256, 512)
_STRIDE_KEYS = ('stride2', 'stride4', 'stride8', 'stride16', 'stride32')


def stage_widths(stage_channels: Sequence[int], width_multiplier: float) -> tuple[int, ...]:
  """Stage widths scaled by `width_multiplier`, rounded to multiples of 8
  (MobileNet's rule: nearest multiple, at least 8 and >= 90% of the target)."""
  if width_multiplier <= 0:
    raise ValueError(f'width_multiplier {width_multiplier!r} must be > 0')
  if len(stage_channels) != len(_STRIDE_KEYS) or any(
      int(c) != c or c < 1 for c in stage_channels):
    raise ValueError(f'stage_channels {stage_channels!r} must be {len(_STRIDE_KEYS)} '
                     'positive integers (strides 2, 4, 8, 16, 32)')
  if width_multiplier == 1.0:
    return tuple(int(c) for c in stage_channels)
  return tuple(make_divisible(c * width_multiplier, 8) for c in stage_channels)


class ResidualSeparableBlock(nn.Module):
  """Three separable convs plus a separable projection shortcut; see module doc."""
  features: int
  padding: str = 'SAME'
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  depthwise_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    sep = functools.partial(layers.SeparableConv, self.features, 3, padding=self.padding,
                            bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                            depthwise_impl=self.depthwise_impl, dtype=self.dtype,
                            kernel_init=layers.he_normal)
    shortcut = sep(act=None, name='shortcut')(x, train=train)
    y = sep(act=nn.elu, name='conv1')(x, train=train)
    y = sep(act=nn.elu, name='conv2')(y, train=train)
    y = sep(act=None, name='conv3')(y, train=train)
    return nn.elu(y + shortcut)


class DSRFCNEncoder(nn.Module):
  """The DSRFCN encoder: returns {'stride2', ..., 'stride32'} stage outputs.

  Only output_stride 32 exists (the stages are separated by pooling, not by
  strided convs that could become dilations). Input sides must be multiples
  of 32 (DSRFCN pads them).
  """
  stage_channels: Sequence[int] = DEFAULT_STAGE_CHANNELS
  width_multiplier: float = 1.0
  output_stride: int = 32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str = 'SAME'
  depthwise_impl: str = 'auto'
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.output_stride != 32:
      raise ValueError(f'output_stride {self.output_stride!r} is not supported by the '
                       'dsrfcn encoder (only 32)')
    stage_widths(self.stage_channels, self.width_multiplier)
    layers.check_module_args(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    h, w = x.shape[1:3]
    if h % 32 or w % 32:
      raise ValueError(f'input size {(h, w)!r} must be a multiple of 32 (DSRFCN pads it)')
    dtype = layers.canonical_dtype(self.dtype)
    common = dict(padding=self.padding, bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon, dtype=dtype)
    widths = stage_widths(self.stage_channels, self.width_multiplier)
    x = layers.ConvBNAct(widths[0], 3, strides=2, act=nn.elu, **common,
                         name='stem')(x.astype(dtype), train=train)
    feats = {}
    for i, (key, width) in enumerate(zip(_STRIDE_KEYS, widths)):
      if i:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = ResidualSeparableBlock(width, depthwise_impl=self.depthwise_impl, **common,
                                 name=f'stage{i}')(x, train=train)
      feats[key] = x
    return feats


class DSRFCN(nn.Module):
  """Depthwise-separable residual FCN with FCN-8s fusion (registry 'dsrfcn').

  Attributes:
    num_classes: output channels.
    backbone: only 'dsrfcn' (the encoder is this model's own).
    output_stride: only 32.
    width_multiplier: scales `stage_channels` (rounded to multiples of 8).
    freeze_encoder: encoder BN on running statistics, no gradient into it.
    dtype: compute dtype; logits are float32.
    stage_channels: widths of the five stages (strides 2 ... 32) at width 1.
    dropout_rate: dropout on the stride-32 features before their score conv
      (FCN drops out before its classifier; 0.1 like this codebase's ASPP).
    bn_momentum, bn_epsilon: BatchNorm (flax momentum; PyTorch's epsilon).
    padding: 'SAME' | 'SYMMETRIC' for the stride-2 stem conv (3x3 stride-1
      convs pad 1 on each side either way).
    depthwise_impl: 'auto' | 'xla' | 'shift' (layers.resolve_depthwise_impl).
  """
  num_classes: int
  backbone: str = 'dsrfcn'
  output_stride: int = 32
  width_multiplier: float = 1.0
  freeze_encoder: bool = False
  dtype: Any = jnp.float32
  stage_channels: Sequence[int] = DEFAULT_STAGE_CHANNELS
  dropout_rate: float = 0.1
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str = 'SAME'
  depthwise_impl: str = 'auto'

  def __post_init__(self):
    layers.check_fixed_encoder(self, 'dsrfcn', ('dsrfcn',), 32,
                               'its stages are separated by pooling')
    stage_widths(self.stage_channels, self.width_multiplier)
    layers.check_module_args(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    dtype = layers.canonical_dtype(self.dtype)
    h, w = images.shape[1:3]
    x = layers.pad_to_multiple(images, 32)

    encoder = DSRFCNEncoder(tuple(self.stage_channels), self.width_multiplier,
                            bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                            padding=self.padding, depthwise_impl=self.depthwise_impl,
                            dtype=dtype, name='backbone')
    feats = encoder(x, train=train and not self.freeze_encoder)
    if self.freeze_encoder:
      feats = jax.lax.stop_gradient(feats)

    score = functools.partial(layers.Conv, self.num_classes, (1, 1), dtype=dtype,
                              param_dtype=jnp.float32)
    top = nn.Dropout(self.dropout_rate)(feats['stride32'], deterministic=not train)
    y = score(name='score32')(top)
    for key in ('stride16', 'stride8'):
      skip = score(name=f'score{key[len("stride"):]}')(feats[key])
      y = layers.resize_bilinear(y, skip.shape[1:3]) + skip
    y = layers.resize_bilinear(y, x.shape[1:3])
    return y[:, :h, :w].astype(jnp.float32)
