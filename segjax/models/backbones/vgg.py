"""VGG (Simonyan & Zisserman, 2015) laid out so torchvision's and Keras'
weights map mechanically, with the "convolutionalized" classifier of FCN
(Long et al., 2015) and DeepLab-v1 style dilation.

Submodule names (flat under the module):
  * 'conv{b}_{c}': the c-th 3x3 conv (with bias) of stage b (1-based), e.g.
    'conv1_1' ... 'conv5_3' for VGG16: torchvision `features.{i}` in order,
    Keras 'block{b}_conv{c}'.
  * 'bn{b}_{c}': its BatchNorm with `batch_norm=True` (torchvision vgg*_bn,
    `features.{i+1}`).
  * 'fc6' (7x7 conv, `fc_channels` filters) and 'fc7' (1x1 conv) with
    `include_fc`: torchvision `classifier.0` / `classifier.3`, Keras 'fc1' /
    'fc2' reshaped from Linear to conv kernels.
  * 'fc8' (1x1 conv, `num_classes` filters): torchvision `classifier.6`, Keras
    'predictions' -- only for parity checks against the ImageNet classifier.

`conv_stage` builds one stage of 3x3 convs inside any compact module, so
SegNet's encoder (segjax.models.segnet) shares this layout and loads the same
converted weights.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers

# Convs per stage: torchvision cfgs 'A', 'B', 'D', 'E' (the paper's Table 1).
DEPTHS: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
# Filters of the convs of each stage (the paper's Table 1).
WIDTHS = (64, 128, 256, 512, 512)
# Side of fc6's kernel: the classifier's first Linear reads a 7x7x512 map at 224.
FC6_KERNEL = 7
FC_PADDINGS = ('SAME', 'VALID')

# torchvision initialises convs with kaiming_normal_(mode='fan_out', relu).
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def stage_widths(width_multiplier: float = 1.0) -> tuple[int, ...]:
  """Conv filters of the 5 stages, scaled (at least 1 each)."""
  if width_multiplier <= 0:
    raise ValueError(f'width_multiplier {width_multiplier!r} must be > 0')
  return tuple(max(1, int(round(c * width_multiplier))) for c in WIDTHS)


def stage_strides(output_stride: int) -> tuple[tuple[int, int], ...]:
  """(pool stride, dilation of the convs after the pool) for each of the 5 pools.

  The rule (DeepLab-v1, Chen et al. 2015): a 2x2 stride-2 pool that would take
  the running stride beyond `output_stride` becomes a 3x3 stride-1 pad-1 max
  pool, and every conv after it (fc6 included) has its dilation doubled.
  output_stride 16: pool5 -> stride 1, fc6 dilation 2. output_stride 8: pool4
  and pool5 -> stride 1, conv5_* dilation 2, fc6 dilation 4.
  """
  if output_stride not in (8, 16, 32):
    raise ValueError(f'output_stride {output_stride!r} is not one of (8, 16, 32)')
  out, stride, rate = [], 1, 1
  for _ in range(5):
    if stride * 2 > output_stride:
      rate *= 2
      out.append((1, rate))
    else:
      stride *= 2
      out.append((2, rate))
  return tuple(out)


def max_pool(x: jax.Array, stride: int) -> jax.Array:
  """VGG's pool: 2x2 stride 2 (floor, like torch/Keras 'valid'), or the 3x3
  stride-1 pad-1 pool that replaces it when dilating (pads with -inf)."""
  if stride == 2:
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def conv_stage(x: jax.Array, *, stage: int, num_convs: int, features: int,
               dilation: int, batch_norm: bool, train: bool, padding: str,
               bn_momentum: float, bn_epsilon: float, dtype: Any) -> jax.Array:
  """Stage `stage` (1-based) of VGG: num_convs x (3x3 conv [-> BN] -> ReLU).

  Call it inside a compact module: it creates that module's submodules
  'conv{stage}_{c}' (and 'bn{stage}_{c}').
  """
  for c in range(1, num_convs + 1):
    x = layers.Conv(features, (3, 3), padding=layers.conv_padding(padding, 3, 1, dilation),
                kernel_dilation=dilation, dtype=dtype, param_dtype=jnp.float32,
                kernel_init=_conv_init, name=f'conv{stage}_{c}')(x)
    if batch_norm:
      x = layers.batch_norm(train=train, momentum=bn_momentum, epsilon=bn_epsilon,
                            dtype=dtype, name=f'bn{stage}_{c}')(x)
    x = nn.relu(x)
  return x


def check_common_args(module) -> None:
  """dtype, padding, width_multiplier and dropout_rate checks (VGG has no
  depthwise convs, so layers.check_module_args does not apply)."""
  layers.canonical_dtype(module.dtype)
  layers.check_padding(module.padding)
  if module.width_multiplier <= 0:
    raise ValueError(f'width_multiplier {module.width_multiplier!r} must be > 0')
  rate = module.dropout_rate
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'dropout_rate {rate!r} must be in [0, 1)')


class VGG(nn.Module):
  """VGG feature extractor (optionally with the convolutionalized classifier).

  `__call__(x, train=...)` returns a dict:
    * 'stride2' ... 'stride32': the outputs of pool1 ... pool5 (nominal
      strides: with output_stride 16/8 the later pools keep the resolution).
    * 'fc7': with `include_fc`, the output of fc6 -> ReLU -> dropout -> fc7 ->
      ReLU -> dropout (dropout only when training).
    * 'logits': with `num_classes`, fc8 applied to 'fc7'.

  Attributes:
    depth: 11, 13, 16 or 19.
    batch_norm: BN after every conv (torchvision vgg*_bn; convs keep their bias).
    include_fc: add fc6 (7x7 conv) and fc7 (1x1 conv).
    fc_channels: filters of fc6 and fc7 (4096 in VGG).
    fc_padding: fc6's padding: 'SAME' (any input size) or 'VALID' (exactly the
      ImageNet classifier at 224x224: a 7x7 map -> 1x1).
    num_classes: add 'fc8' with this many filters (ImageNet head; parity only).
    dropout_rate: dropout after fc6 and fc7 (0.5 in VGG).
    width_multiplier: scales the conv filters (not fc_channels); 1.0 is VGG.
    output_stride: 8, 16 or 32; see `stage_strides` for the dilation rule.
    padding: 'SAME' or 'SYMMETRIC'; identical for VGG's 3x3 stride-1 convs.
  """
  depth: int = 16
  batch_norm: bool = False
  include_fc: bool = False
  fc_channels: int = 4096
  fc_padding: str = 'SAME'
  num_classes: int | None = None
  dropout_rate: float = 0.5
  width_multiplier: float = 1.0
  output_stride: int = 32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str = 'SAME'
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.depth not in DEPTHS:
      raise ValueError(f'depth {self.depth!r} is not one of {tuple(DEPTHS)}')
    if self.fc_padding not in FC_PADDINGS:
      raise ValueError(f'fc_padding {self.fc_padding!r} is not one of {FC_PADDINGS}')
    if self.fc_channels < 1:
      raise ValueError(f'fc_channels {self.fc_channels!r} must be >= 1')
    if self.num_classes is not None and self.num_classes < 1:
      raise ValueError(f'num_classes {self.num_classes!r} must be >= 1')
    if self.num_classes is not None and not self.include_fc:
      raise ValueError(f'num_classes {self.num_classes!r} needs include_fc=True')
    stage_strides(self.output_stride)
    check_common_args(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    dtype = layers.canonical_dtype(self.dtype)
    x = x.astype(dtype)
    feats = {}
    rate = 1
    strides = stage_strides(self.output_stride)
    widths = stage_widths(self.width_multiplier)
    for b, (n, width, (pool_stride, next_rate)) in enumerate(
        zip(DEPTHS[self.depth], widths, strides), start=1):
      x = conv_stage(x, stage=b, num_convs=n, features=width, dilation=rate,
                     batch_norm=self.batch_norm, train=train, padding=self.padding,
                     bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=dtype)
      x = max_pool(x, pool_stride)
      rate = next_rate
      feats[f'stride{2 ** b}'] = x

    if self.include_fc:
      conv = functools.partial(layers.Conv, dtype=dtype, param_dtype=jnp.float32,
                               kernel_init=_conv_init)
      dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
      x = conv(self.fc_channels, (FC6_KERNEL, FC6_KERNEL), kernel_dilation=rate,
               padding=self.fc_padding, name='fc6')(x)
      x = dropout(nn.relu(x))
      x = conv(self.fc_channels, (1, 1), name='fc7')(x)
      x = dropout(nn.relu(x))
      feats['fc7'] = x
      if self.num_classes is not None:
        feats['logits'] = conv(self.num_classes, (1, 1), name='fc8')(x)
    return feats
