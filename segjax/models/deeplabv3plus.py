"""DeepLabV3+ (Chen et al., 2018, "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation")."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers
from segjax.models import backbones

# ASPP rates of the paper at output_stride 16 and 8; 32 continues the scaling.
_DEFAULT_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


class DeepLabV3Plus(nn.Module):
  """DeepLabV3+: backbone -> ASPP -> decoder with a stride-4 skip -> logits.

  ASPP runs on the deepest feature (rates (6, 12, 18) at output_stride 16,
  (12, 24, 36) at 8, (3, 6, 9) at 32, or `aspp_rates`); the decoder projects
  the stride-4 feature to `low_level_channels` (1x1 conv + BN + ReLU), concats
  it with the bilinearly upsampled ASPP output, applies two 3x3 separable convs
  (`decoder_channels`) and a 1x1 classifier, and upsamples bilinearly to the
  input size. Logits are float32 (B, H, W, num_classes) for any H, W.

  With `freeze_encoder` the backbone runs BatchNorm on its running statistics
  even in training (like Keras `trainable=False`) and no gradient flows into it.
  Head BatchNorm uses epsilon `bn_epsilon` (1e-5); the backbones keep their
  reference epsilon (1e-3).

  With `aux_head` an FCNHead (3x3 conv of `aux_channels` + BN + ReLU +
  dropout `aux_dropout` + 1x1 classifier) on the 'stride16' feature (ResNet
  stage 3) adds upsampled auxiliary logits and the model returns
  {'logits': ..., 'aux': ...}; training adds loss.aux_weight times their loss
  (mmsegmentation's DeepLabV3+ recipes: 256 channels, weight 0.4).
  """
  num_classes: int
  backbone: str = 'mobilenetv2'
  output_stride: int = 16
  width_multiplier: float = 1.0
  freeze_encoder: bool = False
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  aspp_channels: int = 256
  aspp_rates: Sequence[int] | None = None
  aspp_separable: bool = True
  decoder_channels: int = 256
  decoder_separable: bool = True
  low_level_channels: int = 48
  dropout_rate: float = 0.1
  padding: str = 'SAME'
  depthwise_impl: str = 'auto'
  # Extra backbone arguments, e.g. {'bn_epsilon': 1e-5} for torchvision
  # MobileNetV2 weights (Keras' is the default 1e-3).
  backbone_kwargs: Any = ()
  aux_head: bool = False
  aux_channels: int = 256
  aux_dropout: float = 0.1

  def __post_init__(self):
    object.__setattr__(self, 'backbone_kwargs',
                       backbones.backbone_kwargs_items(self.backbone, self.backbone_kwargs))
    if self.num_classes < 1:
      raise ValueError(f'num_classes {self.num_classes!r} must be >= 1')
    if self.output_stride not in (8, 16, 32):
      raise ValueError(f'output_stride {self.output_stride!r} is not one of (8, 16, 32)')
    self._encoder(parent=None)  # Validates the backbone and its arguments (unbound).
    if self.aspp_rates is not None and (
        not self.aspp_rates or any(int(r) != r or r < 1 for r in self.aspp_rates)):
      raise ValueError(f'aspp_rates {self.aspp_rates!r} must be positive integers')
    if self.aux_channels < 1 or not 0.0 <= self.aux_dropout < 1.0:
      raise ValueError(f'aux_channels {self.aux_channels!r} must be >= 1 and aux_dropout '
                       f'{self.aux_dropout!r} in [0, 1)')
    layers.check_module_args(self)
    super().__post_init__()

  def _encoder(self, **extra) -> nn.Module:
    return backbones.make_backbone(
        self.backbone, width_multiplier=self.width_multiplier, output_stride=self.output_stride,
        bn_momentum=self.bn_momentum, padding=self.padding, depthwise_impl=self.depthwise_impl,
        dtype=layers.canonical_dtype(self.dtype), **dict(self.backbone_kwargs), **extra)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array | dict[str, jax.Array]:
    dtype = layers.canonical_dtype(self.dtype)
    h, w = images.shape[1:3]
    encoder = self._encoder()
    feats = encoder(images, train=train and not self.freeze_encoder)
    if self.freeze_encoder:
      feats = jax.lax.stop_gradient(feats)

    common = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=dtype)
    rates = tuple(self.aspp_rates or _DEFAULT_RATES[self.output_stride])
    x = layers.ASPP(self.aspp_channels, rates, separable=self.aspp_separable,
                    dropout_rate=self.dropout_rate, padding=self.padding,
                    depthwise_impl=self.depthwise_impl, **common,
                    name='aspp')(feats['stride32'], train=train)

    low = layers.ConvBNAct(self.low_level_channels, 1, **common,
                           name='low_level_proj')(feats['stride4'], train=train)
    x = layers.resize_bilinear(x, low.shape[1:3])
    x = jnp.concatenate([x, low], axis=-1)
    for i in range(2):
      if self.decoder_separable:
        x = layers.SeparableConv(self.decoder_channels, 3, padding=self.padding,
                                 depthwise_impl=self.depthwise_impl, **common,
                                 name=f'decoder_conv{i}')(x, train=train)
      else:
        x = layers.ConvBNAct(self.decoder_channels, 3, padding=self.padding, **common,
                             name=f'decoder_conv{i}')(x, train=train)
    x = layers.Conv(self.num_classes, (1, 1), dtype=dtype, param_dtype=jnp.float32,
                name='classifier')(x)
    x = layers.resize_bilinear(x, (h, w))
    if not self.aux_head:
      return x.astype(jnp.float32)
    aux = layers.FCNHead(self.aux_channels, self.num_classes, self.aux_dropout, self.padding,
                         **common, name='aux_head')(feats['stride16'], train=train)
    aux = layers.resize_bilinear(aux, (h, w)).astype(jnp.float32)
    return {'logits': x.astype(jnp.float32), 'aux': aux}
