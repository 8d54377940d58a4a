"""The separable residual FCN of the CamVid write-up (registry 'sepres_fcn').

`../shared/reference/separable_residual_fcn_camvid.txt` describes a Keras
network: a depthwise-separable residual encoder with FCN-8s fusion through
transposed convolutions. This module builds that network layer for layer
(today's 'dsrfcn' is a separate redesign; see docs/models_reference.md).

Encoder ('backbone'), every conv 3x3 'same' at stride 1:
  stem: conv 3x3 (16, with bias) -> BN -> ReLU -> 2x2 max pool        (1/2)
  block1 (16 -> 32)  -> 2x2 max pool                                 (1/4)
  block2 (32 -> 64)  -> 2x2 max pool = 'pool3'                       (1/8)
  block3 (64 -> 96)  -> 2x2 max pool = 'pool4'                       (1/16)
  block4 (96 -> 128) -> 2x2 max pool = 'pool5'                       (1/32)
Residual block (f_in, f_out), SepConv = Keras SeparableConv2D (depthwise 3x3
without bias -> pointwise 1x1 with bias; no BN or activation in between):
  main:     SepConv(f_in) -> BN -> ELU -> SepConv(f_in) -> BN -> ELU
            -> SepConv(f_out) -> BN -> ELU
  shortcut: SepConv(f_out) -> BN
  out = ReLU(main + shortcut)
Head:
  conv6: 7x7 conv (2048) + ReLU on pool5; conv7: 1x1 conv (2048) + ReLU
  upscore_conv7: transposed conv 4x4 stride 4 (no bias) of conv7 -> 1/8
  pool4_11: 1x1 conv (classes) + ReLU on pool4, then upscore_pool4:
            transposed conv 2x2 stride 2 (no bias) -> 1/8
  pool3_11: 1x1 conv (classes) + ReLU on pool3
  logits = transposed conv 8x8 stride 8 (no bias) of the sum of the three.
The write-up ends with a softmax; this module returns its logits (the loss
applies the softmax). The ReLU on the 1x1 score convs is the write-up's.

BatchNormalization uses Keras' defaults (momentum 0.99, epsilon 1e-3) and
every kernel Keras' glorot_uniform, biases zero. Inputs whose sides are not
multiples of 32 are zero-padded at the bottom/right and the logits cropped
back (the write-up only uses 224x224, where nothing is padded).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers

# The write-up's widths: stem, then blocks 1-4 (their f_out; a block's f_in
# is the width of its input).
STAGE_CHANNELS = (16, 32, 64, 96, 128)
HEAD_CHANNELS = 2048  # conv6 / conv7.
CONV6_KERNEL = 7
# Keras BatchNormalization defaults.
KERAS_BN_MOMENTUM = 0.99
KERAS_BN_EPSILON = 1e-3


class SeparableConv2D(nn.Module):
  """Keras SeparableConv2D (depth multiplier 1): depthwise kxk (no bias) ->
  pointwise 1x1 with bias. Params 'depthwise' {'kernel' (k, k, 1, C)} and
  'pointwise' {'kernel' (1, 1, C, F), 'bias' (F,)}."""
  features: int
  kernel_size: int = 3
  depthwise_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = layers.DepthwiseConv(self.kernel_size, 1, 1, 'SAME', use_bias=False,
                             depthwise_impl=self.depthwise_impl, dtype=self.dtype,
                             kernel_init=layers.glorot_uniform, name='depthwise')(x)
    return layers.Conv(self.features, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=layers.glorot_uniform, name='pointwise')(x)


class ResidualBlock(nn.Module):
  """The write-up's residual block (use_shortcut_=True, stride 1); module doc."""
  f_in: int
  f_out: int
  bn_momentum: float = KERAS_BN_MOMENTUM
  bn_epsilon: float = KERAS_BN_EPSILON
  depthwise_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    sep = functools.partial(SeparableConv2D, depthwise_impl=self.depthwise_impl,
                            dtype=self.dtype)
    bn = functools.partial(layers.batch_norm, train=train, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon, dtype=self.dtype)
    y = x
    for i, width in enumerate((self.f_in, self.f_in, self.f_out), start=1):
      y = nn.elu(bn(name=f'bn{i}')(sep(width, name=f'sepconv{i}')(y)))
    shortcut = bn(name='shortcut_bn')(sep(self.f_out, name='shortcut')(x))
    return nn.relu(y + shortcut)


def _pool(x: jax.Array) -> jax.Array:
  # Keras MaxPooling2D(): 2x2, stride 2, 'valid'.
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')


class SepResEncoder(nn.Module):
  """Stem + four residual blocks; returns {'pool3', 'pool4', 'pool5'} (strides
  8, 16, 32) and 'stride2', 'stride4' (after the stem's and block1's pools)."""
  stage_channels: Sequence[int] = STAGE_CHANNELS
  bn_momentum: float = KERAS_BN_MOMENTUM
  bn_epsilon: float = KERAS_BN_EPSILON
  depthwise_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    dtype = layers.canonical_dtype(self.dtype)
    widths = tuple(self.stage_channels)
    x = layers.Conv(widths[0], (3, 3), padding='SAME', dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=layers.glorot_uniform, name='stem_conv')(x.astype(dtype))
    x = layers.batch_norm(train=train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                          dtype=dtype, name='stem_bn')(x)
    x = _pool(nn.relu(x))
    feats = {'stride2': x}
    keys = ('stride4', 'pool3', 'pool4', 'pool5')
    for i, (f_in, f_out, key) in enumerate(zip(widths[:-1], widths[1:], keys), start=1):
      x = ResidualBlock(f_in, f_out, self.bn_momentum, self.bn_epsilon, self.depthwise_impl,
                        dtype, name=f'block{i}')(x, train=train)
      x = _pool(x)
      feats[key] = x
    return feats


class SepResFCN(nn.Module):
  """The write-up's separable residual FCN-8s; see the module docstring.

  Attributes:
    num_classes: output channels (12 for the write-up's CamVid, void included).
    backbone: only 'sepres_fcn' (the encoder is this model's own).
    output_stride: only 32 (pooling, no strided convs to dilate).
    width_multiplier: only 1.0 (use stage_channels / head_channels instead).
    freeze_encoder: encoder BN on running statistics, no gradient into it.
    dtype: compute dtype; logits are float32.
    stage_channels: stem width and the four blocks' output widths.
    head_channels: conv6 / conv7 filters (2048).
    bn_momentum, bn_epsilon: Keras' BatchNormalization defaults.
    padding: 'SAME' | 'SYMMETRIC': identical here (every conv has stride 1 and
      an odd kernel, so both pad (k - 1) / 2 on each side).
    depthwise_impl: 'auto' | 'xla' | 'shift' (layers.resolve_depthwise_impl).
  """
  num_classes: int
  backbone: str = 'sepres_fcn'
  output_stride: int = 32
  width_multiplier: float = 1.0
  freeze_encoder: bool = False
  dtype: Any = jnp.float32
  stage_channels: Sequence[int] = STAGE_CHANNELS
  head_channels: int = HEAD_CHANNELS
  bn_momentum: float = KERAS_BN_MOMENTUM
  bn_epsilon: float = KERAS_BN_EPSILON
  padding: str = 'SAME'
  depthwise_impl: str = 'auto'

  def __post_init__(self):
    layers.check_fixed_encoder(self, 'sepres_fcn', ('sepres_fcn',), 32,
                               'its stages are separated by pooling')
    if self.width_multiplier != 1.0:
      raise ValueError(f'width_multiplier {self.width_multiplier!r} is not supported by '
                       "'sepres_fcn' (only 1.0; set stage_channels / head_channels)")
    if (len(self.stage_channels) != len(STAGE_CHANNELS)
        or any(int(c) != c or c < 1 for c in self.stage_channels)):
      raise ValueError(f'stage_channels {self.stage_channels!r} must be '
                       f'{len(STAGE_CHANNELS)} positive integers (stem, blocks 1-4)')
    if int(self.head_channels) != self.head_channels or self.head_channels < 1:
      raise ValueError(f'head_channels {self.head_channels!r} must be a positive integer')
    layers.canonical_dtype(self.dtype)
    layers.check_padding(self.padding)
    layers.resolve_depthwise_impl(self.depthwise_impl)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    dtype = layers.canonical_dtype(self.dtype)
    h, w = images.shape[1:3]
    x = layers.pad_to_multiple(images, 32)
    encoder = SepResEncoder(tuple(self.stage_channels), self.bn_momentum, self.bn_epsilon,
                            self.depthwise_impl, dtype, name='backbone')
    feats = encoder(x, train=train and not self.freeze_encoder)
    if self.freeze_encoder:
      feats = jax.lax.stop_gradient(feats)

    conv = functools.partial(layers.Conv, padding='SAME', dtype=dtype, param_dtype=jnp.float32,
                             kernel_init=layers.glorot_uniform)
    # Kernel == stride and 'VALID': every input pixel becomes a k x k tile
    # (Keras Conv2DTranspose(padding='valid') gives exactly n * stride pixels).
    up = lambda factor, name: layers.ConvTranspose(
        self.num_classes, (factor, factor), strides=(factor, factor), padding='VALID',
        use_bias=False, dtype=dtype, kernel_init=layers.glorot_uniform, name=name)
    y = nn.relu(conv(self.head_channels, (CONV6_KERNEL, CONV6_KERNEL), name='conv6')(
        feats['pool5']))
    y = nn.relu(conv(self.head_channels, (1, 1), name='conv7')(y))
    y = up(4, 'upscore_conv7')(y)
    p4 = nn.relu(conv(self.num_classes, (1, 1), name='pool4_11')(feats['pool4']))
    p4 = up(2, 'upscore_pool4')(p4)
    p3 = nn.relu(conv(self.num_classes, (1, 1), name='pool3_11')(feats['pool3']))
    logits = up(8, 'upscore_final')(p4 + p3 + y)
    return logits[:, :h, :w].astype(jnp.float32)
