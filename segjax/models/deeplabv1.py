"""DeepLab v1, LargeFOV (Chen et al., 2015, "Semantic Image Segmentation with
Deep Convolutional Nets and Fully Connected CRFs"; registry 'deeplabv1').

The DeepLab write-up (`../shared/reference/deeplab_family_v1_to_v3plus.txt`)
lists v1's changes to VGG-16: the fully connected layers become
convolutions, the last two max pools stop downsampling and the convolutions
after them become atrous. The layer details are those of the paper's
DeepLab-LargeFOV model:

Encoder ('backbone', VGG-16 weights map as for segjax's VGG):
  conv1 (2 x 64) -> pool1, conv2 (2 x 128) -> pool2, conv3 (3 x 256) -> pool3:
    3x3 max pools, stride 2, pad 1                                 (stride 8)
  conv4 (3 x 512) -> pool4: 3x3 max pool, stride 1, pad 1
  conv5 (3 x 512, dilation 2) -> pool5: 3x3 max pool, stride 1, pad 1
Head:
  fc6: 3x3 conv, dilation 12, 1024 filters -> ReLU -> dropout 0.5
  fc7: 1x1 conv, 1024 -> ReLU -> dropout 0.5
  fc8: 1x1 conv to the classes (with bias)
  logits: bilinear upsampling x8 to the input size (half-pixel centres).

The pools pad with -inf and round down (PyTorch MaxPool2d(3, 2, padding=1)):
an H-pixel map becomes ceil(H / 2), e.g. 321 -> 161 -> 81 -> 41 as in
the paper; Caffe rounds up, so even sides differ from it by one pixel.
fc6/fc7 start from random weights (the paper subsampled VGG's fc6/fc7);
ImageNet VGG-16 weights load into the encoder
(segjax convert_weights --from=torchvision --arch=vgg16: fc6/fc7 dropped).
The fully connected CRF is a separate post-processing step (segjax.crf,
config eval.crf).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers
from segjax.models.backbones import vgg

OUTPUT_STRIDE = 8
FC_CHANNELS = 1024
FC6_KERNEL = 3
FC6_DILATION = 12
DROPOUT = 0.5
# DeepLab's fc8: gaussian std 0.01 (Caffe filler), zero bias. fc6/fc7 use
# He init (fan_out, torchvision's VGG convs).
_FC8_INIT = nn.initializers.normal(0.01)
_FC_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """3x3 max pool, pad 1 (with -inf), stride 1 or 2, rounding down."""
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)))


class DeepLabV1Encoder(nn.Module):
  """VGG-16 convs with DeepLab-LargeFOV's pools; returns {'stride2', ...,
  'stride32'} (the outputs of pool1 ... pool5; nominal strides: pool4 and
  pool5 keep stride 8)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    dtype = layers.canonical_dtype(self.dtype)
    x = x.astype(dtype)
    feats = {}
    for b, (n, width) in enumerate(zip(vgg.DEPTHS[16], vgg.WIDTHS), start=1):
      x = vgg.conv_stage(x, stage=b, num_convs=n, features=width, dilation=2 if b == 5 else 1,
                         batch_norm=False, train=train, padding='SAME', bn_momentum=0.9,
                         bn_epsilon=1e-5, dtype=dtype)
      x = pool_3x3(x, 2 if b <= 3 else 1)
      feats[f'stride{2 ** b}'] = x
    return feats


class DeepLabV1(nn.Module):
  """DeepLab-LargeFOV on VGG-16; see the module docstring.

  Attributes:
    num_classes: output channels.
    backbone: only 'vgg16'.
    output_stride: only 8 (the model as published).
    width_multiplier: only 1.0.
    freeze_encoder: no gradient into the encoder (it has no BN).
    dtype: compute dtype; logits are float32.
    fc_channels: fc6 / fc7 filters (1024).
    fc6_dilation: fc6's atrous rate (12: LargeFOV).
    dropout_rate: after fc6 and fc7 (0.5).
    bn_momentum, bn_epsilon: unused (no BN); accepted like every model's.
    padding: 'SAME' | 'SYMMETRIC': identical here (stride-1 odd kernels).
  """
  num_classes: int
  backbone: str = 'vgg16'
  output_stride: int = OUTPUT_STRIDE
  width_multiplier: float = 1.0
  freeze_encoder: bool = False
  dtype: Any = jnp.float32
  fc_channels: int = FC_CHANNELS
  fc6_dilation: int = FC6_DILATION
  dropout_rate: float = DROPOUT
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str = 'SAME'

  def __post_init__(self):
    layers.check_fixed_encoder(self, 'deeplabv1', ('vgg16',), OUTPUT_STRIDE,
                               'DeepLab-LargeFOV keeps pool4/pool5 at stride 1')
    if self.width_multiplier != 1.0:
      raise ValueError(f'width_multiplier {self.width_multiplier!r} is not supported by '
                       "'deeplabv1' (only 1.0)")
    for name in ('fc_channels', 'fc6_dilation'):
      value = getattr(self, name)
      if int(value) != value or value < 1:
        raise ValueError(f'{name} {value!r} must be a positive integer')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'dropout_rate {self.dropout_rate!r} must be in [0, 1)')
    layers.canonical_dtype(self.dtype)
    layers.check_padding(self.padding)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    dtype = layers.canonical_dtype(self.dtype)
    h, w = images.shape[1:3]
    feats = DeepLabV1Encoder(dtype, name='backbone')(images, train=train)
    x = feats['stride32']
    if self.freeze_encoder:
      x = jax.lax.stop_gradient(x)
    conv = functools.partial(layers.Conv, dtype=dtype, param_dtype=jnp.float32,
                             kernel_init=_FC_INIT)
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
    k = FC6_KERNEL
    x = conv(self.fc_channels, (k, k), kernel_dilation=self.fc6_dilation,
             padding=layers.conv_padding(self.padding, k, 1, self.fc6_dilation), name='fc6')(x)
    x = dropout(nn.relu(x))
    x = dropout(nn.relu(conv(self.fc_channels, (1, 1), name='fc7')(x)))
    x = layers.Conv(self.num_classes, (1, 1), dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=_FC8_INIT, name='fc8')(x)
    return layers.resize_bilinear(x, (h, w)).astype(jnp.float32)
