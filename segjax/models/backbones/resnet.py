"""ResNet-50/101/152 (He et al., 2016) laid out like torchvision's resnet.

Submodule names mirror torchvision so its state dicts map mechanically:
  torchvision conv1, bn1                      -> conv1, bn1
  torchvision layer{s}.{i}.conv{j}, .bn{j}    -> layer{s}_{i}/conv{j}, bn{j}
  torchvision layer{s}.0.downsample.{0,1}     -> layer{s}_0/downsample_conv, downsample_bn
(torch conv weights (out, in, kh, kw) -> flax (kh, kw, in, out); BN weight/bias
-> scale/bias, running_mean/var -> batch_stats mean/var). No classifier.

Variants:
  * `stride_in_1x1=False` (default) is torchvision's "v1.5": a block's stride
    sits on its 3x3 conv. `stride_in_1x1=True` is the original v1 (and
    keras.applications.ResNet50): the stride sits on the first 1x1 conv.
  * `conv_bias=True` gives every conv a bias (Keras' ResNet50 has them).
  * `output_stride` 16 / 8 reproduces torchvision's
    `replace_stride_with_dilation` [False, False, True] / [False, True, True];
    `multi_grid` sets layer4's per-block rates (DeepLabV3), see
    `resnet_blocks`.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers

# Bottleneck blocks per stage: Table 1 of He et al. 2016 ("Deep Residual
# Learning for Image Recognition"), the same lists as torchvision's
# resnet50/101/152.
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# Bottleneck widths (the 1x1/3x3 convs) per stage; outputs are 4x these
# (torchvision's Bottleneck.expansion = 4).
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
STEM_CHANNELS = 64


def check_multi_grid(multi_grid: Sequence[int] | None, num_blocks: int = 3) -> None:
  """None, or `num_blocks` positive ints (layer4 has 3 blocks at every depth)."""
  if multi_grid is None:
    return
  if (not isinstance(multi_grid, (tuple, list)) or len(multi_grid) != num_blocks
      or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in multi_grid)):
    raise ValueError(f'multi_grid {multi_grid!r} must be None or {num_blocks} positive '
                     f'integers (one rate per layer4 block)')


def resnet_blocks(depth: int = 50, output_stride: int = 32,
                  multi_grid: Sequence[int] | None = None) -> list[list[tuple[int, int]]]:
  """(stride, dilation) of every bottleneck block, one list per stage.

  Without `multi_grid` this is exactly torchvision's `_make_layer` with
  `replace_stride_with_dilation`: a stage whose stride-2 would take the running
  stride past `output_stride` runs at stride 1, its FIRST block keeps the
  previous stage's dilation and the following blocks use the dilation times 2.

  With `multi_grid` (DeepLabV3, Chen et al. 2017, "Rethinking Atrous
  Convolution", sec. 3.2 / 4.2), block i of layer4 uses dilation
  `rate * multi_grid[i]`, where `rate` is layer4's dilation (1 at output
  stride 32, 2 at 16, 4 at 8); the other stages are unchanged.

  Args:
    depth: 50, 101 or 152.
    output_stride: 8, 16 or 32.
    multi_grid: None or one positive rate per layer4 block (3 for all depths).

  Returns:
    [[(stride, dilation), ...] for layer1..layer4].
  """
  if depth not in STAGE_BLOCKS:
    raise ValueError(f'depth {depth!r} is not one of {tuple(STAGE_BLOCKS)}')
  if output_stride not in (8, 16, 32):
    raise ValueError(f'output_stride {output_stride!r} is not one of (8, 16, 32)')
  counts = STAGE_BLOCKS[depth]
  check_multi_grid(multi_grid, counts[-1])
  current_stride, dilation = 4, 1  # After conv1 (stride 2) and the max pool (2).
  stages = []
  for stage, n in enumerate(counts):
    stride = 1 if stage == 0 else 2
    previous_dilation = dilation
    if stride > 1 and current_stride >= output_stride:
      dilation *= stride
      stride = 1
    else:
      current_stride *= stride
    blocks = [(stride, previous_dilation)] + [(1, dilation)] * (n - 1)
    if stage == len(counts) - 1 and multi_grid is not None:
      blocks = [(s, dilation * r) for (s, _), r in zip(blocks, multi_grid)]
    stages.append(blocks)
  return stages


def _torch_conv_init() -> Any:
  # torchvision ResNet: kaiming_normal_(mode='fan_out', nonlinearity='relu').
  return nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (dilated) -> 1x1 (x4 channels) with a residual; torchvision names."""
  width: int
  strides: int = 1
  dilation: int = 1
  downsample: bool = False
  stride_in_1x1: bool = False
  conv_bias: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str = 'SYMMETRIC'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(layers.Conv, use_bias=self.conv_bias, dtype=self.dtype,
                             param_dtype=jnp.float32, kernel_init=_torch_conv_init())
    bn = functools.partial(layers.batch_norm, train=train, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon, dtype=self.dtype)
    s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    out = conv(self.width, (1, 1), strides=s1,
               padding=layers.conv_padding(self.padding, 1, s1), name='conv1')(x)
    out = nn.relu(bn(name='bn1')(out))
    out = conv(self.width, (3, 3), strides=s3,
               padding=layers.conv_padding(self.padding, 3, s3, self.dilation),
               kernel_dilation=self.dilation, name='conv2')(out)
    out = nn.relu(bn(name='bn2')(out))
    out = conv(self.width * EXPANSION, (1, 1), name='conv3')(out)
    out = bn(name='bn3')(out)
    if self.downsample:
      x = conv(self.width * EXPANSION, (1, 1), strides=self.strides,
               padding=layers.conv_padding(self.padding, 1, self.strides),
               name='downsample_conv')(x)
      x = bn(name='downsample_bn')(x)
    return nn.relu(out + x)


class ResNet(nn.Module):
  """ResNet feature extractor (bottleneck depths 50 / 101 / 152).

  `__call__(x, train=...)` returns
    'stride2': relu(bn1(conv1(x))) (64 channels, before the max pool),
    'stride4': layer1 (256), 'stride8': layer2 (512), 'stride16': layer3
    (1024), 'stride32': layer4 (2048).
  Keys are nominal strides: with output_stride < 32 the later ones stay at
  output_stride resolution.

  Attributes:
    depth: 50, 101 or 152.
    output_stride: 8, 16 or 32 (see `resnet_blocks`).
    multi_grid: None or 3 rates multiplying layer4's dilation per block.
    stride_in_1x1: False: torchvision v1.5 (stride on the 3x3 conv); True:
      original v1 / Keras ResNet50 (stride on the first 1x1 conv).
    conv_bias: convs have biases (Keras ResNet50).
    bn_momentum: flax BatchNorm momentum (0.9 = torch momentum 0.1).
    bn_epsilon: 1e-5 (torchvision); Keras' ResNet50 uses 1.001e-5.
    padding: 'SYMMETRIC' (torchvision: conv1 pads 3, 3x3 convs pad their
      dilation, the max pool pads 1 with -inf) or 'SAME' (TensorFlow).
    dtype: compute dtype.
    remat: 'none' | 'blocks': rematerialise every bottleneck block
      (layers.remat_block) with jax.checkpoint_policies.<remat_policy>.
  """
  depth: int = 50
  output_stride: int = 32
  multi_grid: tuple[int, ...] | None = None
  stride_in_1x1: bool = False
  conv_bias: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str = 'SYMMETRIC'
  dtype: Any = jnp.float32
  remat: str = 'none'
  remat_policy: str = 'nothing_saveable'

  def __post_init__(self):
    layers.remat_block(Bottleneck, self.remat, self.remat_policy)  # Validates both.
    resnet_blocks(self.depth, self.output_stride, self.multi_grid)  # Validates all three.
    layers.canonical_dtype(self.dtype)
    layers.check_padding(self.padding)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    dtype = layers.canonical_dtype(self.dtype)
    x = layers.Conv(STEM_CHANNELS, (7, 7), strides=2,
                padding=layers.conv_padding(self.padding, 7, 2), use_bias=self.conv_bias,
                dtype=dtype, param_dtype=jnp.float32, kernel_init=_torch_conv_init(),
                name='conv1')(x)
    x = layers.batch_norm(train=train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                          dtype=dtype, name='bn1')(x)
    x = nn.relu(x)
    feats = {'stride2': x}
    # nn.max_pool pads with -inf, like torch's MaxPool2d(3, 2, padding=1). Keras
    # zero-pads before its pool, which gives the same maxima after a ReLU.
    pool_pad = 'SAME' if self.padding == 'SAME' else ((1, 1), (1, 1))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pool_pad)

    in_channels = STEM_CHANNELS
    stages = resnet_blocks(self.depth, self.output_stride, self.multi_grid)
    block_cls = layers.remat_block(Bottleneck, self.remat, self.remat_policy)
    for s, (width, blocks) in enumerate(zip(STAGE_WIDTHS, stages), start=1):
      for i, (stride, dilation) in enumerate(blocks):
        # torchvision adds the projection shortcut when the shape changes.
        downsample = i == 0 and (stride != 1 or in_channels != width * EXPANSION)
        x = block_cls(width, stride, dilation, downsample, self.stride_in_1x1,
                      self.conv_bias, self.bn_momentum, self.bn_epsilon, self.padding,
                      dtype, name=f'layer{s}_{i}')(x, train)
        in_channels = width * EXPANSION
      feats[f'stride{2 ** (s + 1)}'] = x
    return feats
