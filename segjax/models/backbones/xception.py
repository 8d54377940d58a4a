"""Aligned Xception-65 (DeepLabV3+, Chen et al. 2018), laid out like timm's.

Mirrors `xception65` in timm/models/xception_aligned.py (a port of the DeepLab
TF checkpoints) so timm weights map by name:
  timm stem.{0,1}.{conv,bn}                 -> stem_{0,1}/{conv,bn}
  timm blocks.{i}.shortcut.{conv,bn}        -> blocks_{i}/shortcut/{conv,bn}
  timm blocks.{i}.stack.conv{j}.{conv_dw,bn_dw,conv_pw,bn_pw}
                                            -> blocks_{i}/conv{j}/{same}
(torch conv weights (out, in, kh, kw) -> (kh, kw, in, out); depthwise
(C, 1, kh, kw) -> (kh, kw, 1, C)). No classifier head. Convs have no bias.

BatchNorm epsilon is 1e-3, as both DeepLab TF and timm's xception65 use
(timm: `partial(nn.BatchNorm2d, eps=.001)`). Padding defaults to TF 'SAME';
DeepLab TF and timm pad strided convs symmetrically ('SYMMETRIC' here), which
keeps stride-2 sampling grids aligned on even input sizes.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers


class BlockSpec(NamedTuple):
  in_channels: int
  out_channels: tuple[int, int, int]
  stride: int                   # After output_stride conversion.
  dilation: int
  start_with_relu: bool = True  # False: ReLU inside each separable conv.
  no_skip: bool = False
  tap: bool = False             # Nominally strided: its stack.act3 is a feature.


def xception65_blocks(output_stride: int = 32) -> list[BlockSpec]:
  """timm's xception65 block_cfg with strides turned into dilations.

  As in timm's XceptionAligned: a stride-2 block that would exceed
  `output_stride` runs at stride 1 with the current dilation; blocks after it
  use the dilation times 2.
  """
  if output_stride not in (8, 16, 32):
    raise ValueError(f'output_stride {output_stride!r} is not one of (8, 16, 32)')
  cfg = [
      # Entry flow.
      (64, (128,) * 3, 2, True, False),
      (128, (256,) * 3, 2, True, False),
      (256, (728,) * 3, 2, True, False),
      # Middle flow.
      *[(728, (728,) * 3, 1, True, False)] * 16,
      # Exit flow.
      (728, (728, 1024, 1024), 2, True, False),
      (1024, (1536, 1536, 2048), 1, False, True),
  ]
  current_stride, dilation = 2, 1  # After the stem.
  specs = []
  for in_ch, out_ch, stride, start_with_relu, no_skip in cfg:
    block_dilation, tap = dilation, stride > 1
    if stride > 1:
      if current_stride * stride > output_stride:
        dilation *= stride
        stride = 1
      else:
        current_stride *= stride
    specs.append(BlockSpec(in_ch, out_ch, stride, block_dilation, start_with_relu, no_skip,
                           tap))
  return specs


class XceptionModule(nn.Module):
  """Three separable convs (stride on the last) plus a shortcut.

  Returns (output, tap) where tap is the activation entering the third
  separable conv: timm's `stack.act3` feature for strided blocks.
  """
  features: Sequence[int]
  strides: int = 1
  dilation: int = 1
  start_with_relu: bool = True
  no_skip: bool = False
  padding: str = 'SAME'
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3
  depthwise_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    common = dict(padding=self.padding, bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon, dtype=self.dtype)
    skip = x
    tap = x
    for i, feats in enumerate(self.features):
      if self.start_with_relu:
        x = nn.relu(x)
      tap = x
      x = layers.SeparableConv(feats, 3, strides=self.strides if i == 2 else 1,
                               dilation=self.dilation,
                               act=None if self.start_with_relu else nn.relu,
                               depthwise_impl=self.depthwise_impl, **common,
                               name=f'conv{i + 1}')(x, train=train)
    if self.no_skip:
      return x, tap
    if skip.shape[-1] != self.features[-1] or self.strides != 1:
      skip = layers.ConvBNAct(self.features[-1], 1, strides=self.strides, act=None, **common,
                              name='shortcut')(skip, train=train)
    return x + skip, tap


class Xception65(nn.Module):
  """Aligned Xception-65 feature extractor.

  `__call__(x, train=...)` returns {'stride2', 'stride4', 'stride8', 'stride16',
  'stride32'}: timm's feature taps -- the ReLU'd input of the strided third
  separable conv of blocks 0, 1, 2 and 19 (128, 256, 728, 1024 channels) and
  the final 2048-channel output. Keys are nominal: with output_stride < 32 the
  later taps stay at output_stride resolution. DeepLabV3+ uses 'stride4' as its
  low-level feature.
  """
  output_stride: int = 32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3
  padding: str = 'SAME'
  depthwise_impl: str = 'auto'
  dtype: Any = jnp.float32

  def __post_init__(self):
    xception65_blocks(self.output_stride)  # Validates output_stride.
    layers.check_module_args(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    dtype = layers.canonical_dtype(self.dtype)
    common = dict(padding=self.padding, bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon, dtype=dtype)
    x = layers.ConvBNAct(32, 3, strides=2, **common, name='stem_0')(x, train=train)
    x = layers.ConvBNAct(64, 3, **common, name='stem_1')(x, train=train)
    taps = []
    for i, spec in enumerate(xception65_blocks(self.output_stride)):
      x, tap = XceptionModule(spec.out_channels, spec.stride, spec.dilation,
                              spec.start_with_relu, spec.no_skip,
                              depthwise_impl=self.depthwise_impl, **common,
                              name=f'blocks_{i}')(x, train=train)
      if spec.tap:
        taps.append(tap)
    return dict(stride2=taps[0], stride4=taps[1], stride8=taps[2], stride16=taps[3],
                stride32=x)
