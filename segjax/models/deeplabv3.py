"""DeepLabV3 (Chen et al., 2017, "Rethinking Atrous Convolution for Semantic
Image Segmentation"), laid out like torchvision's `deeplabv3_resnet50/101`."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers
from segjax.models.backbones import backbone_class, backbone_kwargs_items, make_backbone
from segjax.models.backbones import resnet

# ASPP rates of the paper at output_stride 16 and 8 (sec. 4.3: doubled at 8);
# 32 continues the scaling, as in deeplabv3plus.py. torchvision always uses
# (12, 24, 36) with its output-stride-8 backbones.
_DEFAULT_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


class DeepLabV3(nn.Module):
  """DeepLabV3: backbone -> ASPP -> 3x3 conv + BN + ReLU -> 1x1 classifier.

  The head is torchvision's DeepLabHead: ASPP (1x1 branch, three 3x3 atrous
  branches, image pooling; concat -> 1x1 projection + BN + ReLU + dropout
  `aspp_dropout`) on the 'stride32' feature, a 3x3 conv ('head'), a 1x1
  classifier with bias, and bilinear upsampling (align_corners=False) to the
  input size. Logits are float32 (B, H, W, num_classes) for any H, W.

  With `aux_head` an FCNHead on the 'stride16' feature (torchvision's
  aux_classifier on layer3) adds upsampled auxiliary logits and the model
  returns {'logits': ..., 'aux': ...}.

  torchvision's deeplabv3_resnet50 is `output_stride=8, multi_grid=None,
  aux_head=True` (its ASPP rates are the OS-8 defaults (12, 24, 36)). The
  paper's setting is the default: output_stride 16 with multi_grid (1, 2, 4)
  in layer4. multi_grid applies to ResNet backbones only; set it to None for
  others.

  Attributes:
    num_classes: number of output classes.
    backbone: a registry backbone ('resnet50', 'resnet101', 'resnet152', ...).
    output_stride: 8, 16 or 32.
    width_multiplier: passed to the backbone (ResNets only support 1.0).
    freeze_encoder: the backbone runs BN on running statistics and gets no
      gradient.
    dtype: compute dtype.
    multi_grid: per-block rates of ResNet layer4 (None: torchvision's plain
      dilation).
    aspp_rates: atrous rates; None: (6, 12, 18) at OS 16, (12, 24, 36) at 8,
      (3, 6, 9) at 32.
    aspp_channels: channels of ASPP and the 3x3 head conv.
    aspp_dropout: dropout after the ASPP projection (torchvision: 0.5).
    bn_momentum: flax BN momentum of all layers.
    bn_epsilon: BN epsilon of the head (the backbone keeps its own default).
    padding: 'SYMMETRIC' (PyTorch) or 'SAME' (TF), backbone and head.
    backbone_kwargs: extra backbone keywords as (key, value) pairs (a dict or
      list of pairs is accepted), e.g. (('stride_in_1x1', True), ...) for
      Keras' ResNet50 layout.
    aux_head: add the auxiliary FCNHead.
    aux_channels: its hidden channels (torchvision: 1024 // 4 = 256).
    head_dropout: its dropout (torchvision FCNHead: 0.1).
  """
  num_classes: int
  backbone: str = 'resnet50'
  output_stride: int = 16
  width_multiplier: float = 1.0
  freeze_encoder: bool = False
  dtype: Any = jnp.float32
  multi_grid: tuple[int, ...] | None = (1, 2, 4)
  aspp_rates: tuple[int, ...] | None = None
  aspp_channels: int = 256
  aspp_dropout: float = 0.5
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str = 'SYMMETRIC'
  backbone_kwargs: tuple[tuple[str, Any], ...] = ()
  aux_head: bool = False
  aux_channels: int = 256
  head_dropout: float = 0.1

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f'num_classes {self.num_classes!r} must be >= 1')
    if self.output_stride not in (8, 16, 32):
      raise ValueError(f'output_stride {self.output_stride!r} is not one of (8, 16, 32)')
    if self.aspp_rates is not None and (
        not self.aspp_rates or any(int(r) != r or r < 1 for r in self.aspp_rates)):
      raise ValueError(f'aspp_rates {self.aspp_rates!r} must be positive integers')
    for name in ('aspp_channels', 'aux_channels'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} {getattr(self, name)!r} must be >= 1')
    for name in ('aspp_dropout', 'head_dropout'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f'{name} {getattr(self, name)!r} must be in [0, 1)')
    if self.width_multiplier <= 0:
      raise ValueError(f'width_multiplier {self.width_multiplier!r} must be > 0')
    layers.canonical_dtype(self.dtype)
    layers.check_padding(self.padding)
    # Hashable pairs (module attributes must hash for jit's static arguments).
    items = backbone_kwargs_items(self.backbone, self.backbone_kwargs)
    object.__setattr__(self, 'backbone_kwargs', items)
    if self.multi_grid is not None:
      object.__setattr__(self, 'multi_grid', tuple(self.multi_grid))
    if self.aspp_rates is not None:
      object.__setattr__(self, 'aspp_rates', tuple(self.aspp_rates))
    cls, _ = backbone_class(self.backbone)  # Errors on an unknown name.
    fields = {f.name for f in dataclasses.fields(cls)}
    if self.multi_grid is not None and 'multi_grid' not in fields:
      raise ValueError(f'multi_grid {self.multi_grid!r} needs a ResNet backbone; set '
                       f'multi_grid=None for backbone {self.backbone!r}')
    if self.multi_grid is not None:
      resnet.check_multi_grid(self.multi_grid)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array | dict[str, jax.Array]:
    dtype = layers.canonical_dtype(self.dtype)
    h, w = images.shape[1:3]
    kwargs = dict(self.backbone_kwargs)
    if self.multi_grid is not None:
      kwargs['multi_grid'] = self.multi_grid
    encoder = make_backbone(self.backbone, width_multiplier=self.width_multiplier,
                            output_stride=self.output_stride, bn_momentum=self.bn_momentum,
                            padding=self.padding, dtype=dtype, name_='backbone', **kwargs)
    feats = encoder(images, train=train and not self.freeze_encoder)
    if self.freeze_encoder:
      feats = jax.lax.stop_gradient(feats)

    common = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=dtype)
    rates = self.aspp_rates or _DEFAULT_RATES[self.output_stride]
    x = layers.ASPP(self.aspp_channels, rates, separable=False,
                    dropout_rate=self.aspp_dropout, padding=self.padding, **common,
                    name='aspp')(feats['stride32'], train=train)
    x = layers.ConvBNAct(self.aspp_channels, 3, padding=self.padding, **common,
                         name='head')(x, train=train)
    x = layers.Conv(self.num_classes, (1, 1), dtype=dtype, param_dtype=jnp.float32,
                name='classifier')(x)
    logits = layers.resize_bilinear(x, (h, w)).astype(jnp.float32)
    if not self.aux_head:
      return logits
    aux = layers.FCNHead(self.aux_channels, self.num_classes, self.head_dropout, self.padding,
                  **common, name='aux_head')(feats['stride16'], train=train)
    aux = layers.resize_bilinear(aux, (h, w)).astype(jnp.float32)
    return {'logits': logits, 'aux': aux}
