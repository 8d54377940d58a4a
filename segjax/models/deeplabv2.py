"""DeepLab v2 on ResNet-101 (Chen et al., 2017, "DeepLab: Semantic Image
Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully
Connected CRFs"; registry 'deeplabv2').

The DeepLab write-up (`../shared/reference/deeplab_family_v1_to_v3plus.txt`)
names v2's changes over v1: a ResNet backbone and ASPP, parallel atrous
branches at several sampling rates. In v2's ASPP-L each branch is a single
3x3 atrous conv straight to the classes (rates 6, 12, 18, 24) and the
branches are SUMMED (unlike v3's concatenated, batch-normalised ASPP):

  encoder ('backbone'): ResNet-101 at output stride 8 (layer3 dilation 2,
    layer4 dilation 4; torchvision's replace_stride_with_dilation layout,
    so torchvision resnet101 weights load as they are)
  logits = sum_r conv3x3_r(layer4)  (dilation r, bias), r in 6, 12, 18, 24
  upsampled bilinearly (half-pixel centres) to the input size.

Differences from the paper's Caffe model, by design: torchvision's
ResNet-101 ("v1.5", the stride on the 3x3 conv, first block of a dilated
stage at the previous dilation); `backbone_kwargs={'stride_in_1x1': True}`
puts the stride on the 1x1 conv like Caffe's ResNet. The paper's multi-scale
input fusion (MSC) and CRF are not part of the network (CRF: segjax.crf,
config eval.crf).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers
from segjax.models.backbones import backbone_kwargs_items, make_backbone

BACKBONES = ('resnet101', 'resnet50', 'resnet152')
ASPP_RATES = (6, 12, 18, 24)
# DeepLab's classifier convs: gaussian std 0.01 (Caffe filler), zero bias.
_CLASSIFIER_INIT = nn.initializers.normal(0.01)


class DeepLabV2(nn.Module):
  """DeepLab v2: ResNet -> ASPP-L (sum of per-rate 3x3 classifiers).

  Attributes:
    num_classes: output channels.
    backbone: 'resnet101' (the paper), or 'resnet50' / 'resnet152'.
    output_stride: 8 (the paper) or 16.
    width_multiplier: only 1.0.
    freeze_encoder: encoder BN on running statistics, no gradient into it
      (the paper trains with BN frozen).
    dtype: compute dtype; logits are float32.
    aspp_rates: the atrous rates, one 3x3 classifier each.
    bn_momentum, bn_epsilon: the backbone's BatchNorm.
    padding: 'SYMMETRIC' (PyTorch) or 'SAME' (TF), backbone and ASPP.
    backbone_kwargs: extra backbone keywords (a dict or pairs).
  """
  num_classes: int
  backbone: str = 'resnet101'
  output_stride: int = 8
  width_multiplier: float = 1.0
  freeze_encoder: bool = False
  dtype: Any = jnp.float32
  aspp_rates: tuple[int, ...] = ASPP_RATES
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str = 'SYMMETRIC'
  backbone_kwargs: Any = ()

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f'num_classes {self.num_classes!r} must be >= 1')
    if self.backbone not in BACKBONES:
      raise ValueError(f'backbone {self.backbone!r} is not supported by \'deeplabv2\' '
                       f'(one of {BACKBONES})')
    if self.output_stride not in (8, 16):
      raise ValueError(f'output_stride {self.output_stride!r} is not supported by '
                       "'deeplabv2' (8, the paper, or 16)")
    if self.width_multiplier != 1.0:
      raise ValueError(f'width_multiplier {self.width_multiplier!r} is not supported by '
                       "'deeplabv2' (only 1.0)")
    rates = tuple(self.aspp_rates) if isinstance(self.aspp_rates, (list, tuple)) else None
    if not rates or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in rates):
      raise ValueError(f'aspp_rates {self.aspp_rates!r} must be positive integers')
    object.__setattr__(self, 'aspp_rates', rates)
    object.__setattr__(self, 'backbone_kwargs',
                       backbone_kwargs_items(self.backbone, self.backbone_kwargs))
    layers.canonical_dtype(self.dtype)
    layers.check_padding(self.padding)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    dtype = layers.canonical_dtype(self.dtype)
    h, w = images.shape[1:3]
    args = dict(output_stride=self.output_stride, bn_momentum=self.bn_momentum,
                bn_epsilon=self.bn_epsilon, padding=self.padding, dtype=dtype)
    args.update(self.backbone_kwargs)
    encoder = make_backbone(self.backbone, name_='backbone', **args)
    x = encoder(images, train=train and not self.freeze_encoder)['stride32']
    if self.freeze_encoder:
      x = jax.lax.stop_gradient(x)
    logits = None
    for i, rate in enumerate(self.aspp_rates):
      branch = layers.Conv(self.num_classes, (3, 3), kernel_dilation=rate,
                           padding=layers.conv_padding(self.padding, 3, 1, rate), dtype=dtype,
                           param_dtype=jnp.float32, kernel_init=_CLASSIFIER_INIT,
                           name=f'aspp{i}')(x)
      logits = branch if logits is None else logits + branch
    return layers.resize_bilinear(logits, (h, w)).astype(jnp.float32)
