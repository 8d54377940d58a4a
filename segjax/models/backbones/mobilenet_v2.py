"""MobileNetV2 (Sandler et al., 2018) laid out like keras.applications.MobileNetV2.

Layer names are Keras' (Conv1, bn_Conv1, expanded_conv_depthwise, block_1_expand,
block_1_expand_BN, ..., block_16_project_BN, Conv_1, Conv_1_bn), flat under the
module, so Keras weights map one-to-one: Keras kernels are (kh, kw, in, out)
like flax's; a DepthwiseConv2D kernel (kh, kw, C, 1) becomes (kh, kw, 1, C) here;
BN gamma/beta -> scale/bias, moving_mean/variance -> batch_stats mean/var.

Differences from Keras, all configurable:
  * BN momentum defaults to 0.9 (Keras: 0.999; torchvision and mmsegmentation
    0.9 in flax terms) so running statistics track the weights in runs of a few
    hundred steps; with 0.99 a 300-step synthetic run evaluated at 0.16 mIoU
    with running statistics vs 0.80 with batch statistics. Epsilon is Keras' 1e-3.
  * `output_stride` 8/16 replaces later strides by dilation (DeepLab).
  * include_top=False, and by default without Keras' final Conv_1 (1280) layer,
    which the TF segmentation tutorial's encoder does not use.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers

# (expansion t, filters c, repeats n, first stride s): Table 2 of the paper,
# without the first conv and the final 1x1 conv.
_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))

# Keras-named taps of the TF U-Net tutorial, at strides 2, 4, 8, 16 and 32.
UNET_TAPS = ('block_1_expand_relu', 'block_3_expand_relu', 'block_6_expand_relu',
             'block_13_expand_relu', 'block_16_project')


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Keras/TF-slim channel rounding: nearest multiple of `divisor`, >= 90% of v."""
  min_value = min_value or divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


class BlockSpec(NamedTuple):
  name: str          # Keras prefix: 'expanded_conv' or 'block_{i}'.
  expansion: int
  in_channels: int
  out_channels: int
  stride: int        # After output_stride conversion.
  dilation: int      # Of the depthwise conv.
  residual: bool     # Keras' rule, on the nominal stride: stride 1 and in == out.


def block_specs(width_multiplier: float = 1.0, output_stride: int = 32) -> list[BlockSpec]:
  """The inverted-residual blocks, with strides turned into dilations.

  Like TF-slim's mobilenet (used by DeepLab): once the running stride reaches
  `output_stride`, a stride-2 block runs at stride 1 with the current rate, and
  the blocks after it use twice the rate. Residuals follow the nominal strides,
  so output_stride changes nothing but strides and dilations.
  """
  if output_stride not in (8, 16, 32):
    raise ValueError(f'output_stride {output_stride!r} is not one of (8, 16, 32)')
  if width_multiplier <= 0:
    raise ValueError(f'width_multiplier {width_multiplier!r} must be > 0')
  in_channels = make_divisible(32 * width_multiplier, 8)
  current_stride, rate = 2, 1  # After Conv1.
  specs = []
  for t, c, n, s in _BLOCKS:
    # Keras truncates before rounding: _make_divisible(int(filters * alpha), 8).
    out_channels = make_divisible(int(c * width_multiplier), 8)
    for i in range(n):
      stride = s if i == 0 else 1
      residual = stride == 1 and in_channels == out_channels
      block_rate = rate
      if stride > 1 and current_stride >= output_stride:
        rate *= stride
        stride = 1
      else:
        current_stride *= stride
      block_id = len(specs)
      name = f'block_{block_id}' if block_id else 'expanded_conv'
      specs.append(BlockSpec(name, t, in_channels, out_channels, stride, block_rate,
                           residual))
      in_channels = out_channels
  return specs


class MobileNetV2(nn.Module):
  """MobileNetV2 feature extractor.

  `__call__(x, train=...)` returns a dict of features:
    * 'stride2' ... 'stride32': the last feature map of each stage, i.e. the
      one just before the next stride-2 layer (the expand_relu outputs below)
      and, for 'stride32', the encoder output (block_16_project_BN, or out_relu
      with `include_last_conv`). Keys are nominal: with output_stride < 32 the
      later stages stay at output_stride resolution.
    * the Keras taps of the TF U-Net tutorial: 'block_1_expand_relu' (stride 2,
      96 channels at width 1), 'block_3_expand_relu' (4, 144),
      'block_6_expand_relu' (8, 192), 'block_13_expand_relu' (16, 576) and
      'block_16_project' (32, 320) -- the projection conv *before* its BN, as
      Keras' layer of that name is.

  Attributes:
    width_multiplier: Keras' alpha.
    output_stride: 8, 16 or 32.
    include_last_conv: add Keras' Conv_1 (1280 channels) + Conv_1_bn + ReLU6.
    final_project_bn: apply block_16_project_BN. The TF U-Net tutorial taps
      'block_16_project' (pre-BN), so its encoder has no such BN; UNet sets False.
  """
  width_multiplier: float = 1.0
  output_stride: int = 32
  include_last_conv: bool = False
  final_project_bn: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3
  padding: str = 'SAME'
  depthwise_impl: str = 'auto'
  dtype: Any = jnp.float32

  def __post_init__(self):
    block_specs(self.width_multiplier, self.output_stride)  # Validates both.
    layers.check_module_args(self)
    if self.include_last_conv and not self.final_project_bn:
      raise ValueError('include_last_conv=True needs final_project_bn=True')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    dtype = layers.canonical_dtype(self.dtype)
    conv = functools.partial(layers.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                             kernel_init=layers.glorot_uniform)
    bn = functools.partial(layers.batch_norm, train=train, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon, dtype=dtype)
    feats = {}

    first = make_divisible(32 * self.width_multiplier, 8)
    x = conv(first, (3, 3), strides=2, padding=layers.conv_padding(self.padding, 3, 2),
             name='Conv1')(x)
    x = layers.relu6(bn(name='bn_Conv1')(x))

    specs = block_specs(self.width_multiplier, self.output_stride)
    for spec in specs:
      p = spec.name + '_'
      shortcut = x
      if spec.expansion != 1:
        x = conv(spec.in_channels * spec.expansion, (1, 1), name=p + 'expand')(x)
        x = layers.relu6(bn(name=p + 'expand_BN')(x))
        feats[p + 'expand_relu'] = x
      # Keras pads a stride-2 depthwise with ZeroPadding2D(correct_pad): for a
      # 3x3 kernel that is exactly TF 'SAME', for odd and even sizes alike.
      x = layers.DepthwiseConv(3, spec.stride, spec.dilation, self.padding,
                               depthwise_impl=self.depthwise_impl, dtype=dtype,
                               kernel_init=layers.glorot_uniform, name=p + 'depthwise')(x)
      x = layers.relu6(bn(name=p + 'depthwise_BN')(x))
      x = conv(spec.out_channels, (1, 1), name=p + 'project')(x)
      is_last = spec is specs[-1]
      if is_last:
        feats[p + 'project'] = x
      if not is_last or self.final_project_bn:
        x = bn(name=p + 'project_BN')(x)
      if spec.residual:
        x = x + shortcut

    if self.include_last_conv:
      # Keras widens this layer only for alpha > 1.
      last = (make_divisible(1280 * self.width_multiplier, 8)
              if self.width_multiplier > 1.0 else 1280)
      x = conv(last, (1, 1), name='Conv_1')(x)
      x = layers.relu6(bn(name='Conv_1_bn')(x))

    out = {k: feats[k] for k in UNET_TAPS}
    out.update(stride2=feats['block_1_expand_relu'], stride4=feats['block_3_expand_relu'],
               stride8=feats['block_6_expand_relu'], stride16=feats['block_13_expand_relu'],
               stride32=x)
    return out
