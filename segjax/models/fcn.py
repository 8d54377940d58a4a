"""Fully Convolutional Networks (Long, Shelhamer & Darrell, 2015, "Fully
Convolutional Networks for Semantic Segmentation"): FCN-32s, FCN-16s and
FCN-8s on a VGG16 (the paper) or ResNet (torchvision's fcn_resnet50/101) encoder.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models import layers
from segjax.models.backbones import backbone_kwargs_items, make_backbone

VGG_BACKBONES = ('vgg16', 'vgg16_bn')
RESNET_BACKBONES = ('resnet50', 'resnet101')
BACKBONES = VGG_BACKBONES + RESNET_BACKBONES
VARIANTS = ('32s', '16s', '8s')
UPSAMPLES = ('bilinear', 'transposed')

# (feature key, score layer, 2x upsampling layer) of each skip, coarse to fine;
# names from the paper's Caffe models (voc-fcn16s / voc-fcn8s).
_SKIPS = (('stride16', 'score_pool4', 'upscore2'), ('stride8', 'score_pool3', 'upscore_pool4'))
_NUM_SKIPS = {'32s': 0, '16s': 1, '8s': 2}
_FINAL_UPSCORE = {'32s': 'upscore', '16s': 'upscore16', '8s': 'upscore8'}

# Defaults per encoder family. VGG: fc6/fc7 width and dropout of the VGG
# classifier; ResNet: torchvision FCNHead (inner = in_channels // 4, Dropout(0.1)).
_VGG_HEAD_CHANNELS = 4096
_VGG_DROPOUT = 0.5
_RESNET_DROPOUT = 0.1
_FCN_HEAD_REDUCTION = 4


def bilinear_kernel(factor: int, channels: int) -> np.ndarray:
  """(2f, 2f, C, C) transposed-conv kernel of bilinear upsampling by `factor`,
  on the channel diagonal (the FCN Caffe models' `surgery.interp`)."""
  size = 2 * factor
  # Caffe's upsample_filt: centre at factor - 0.5 for an even kernel size.
  centre = factor - 0.5
  og = np.arange(size, dtype=np.float64)
  filt1d = 1.0 - np.abs(og - centre) / factor
  filt = np.outer(filt1d, filt1d)
  kernel = np.zeros((size, size, channels, channels), np.float32)
  for c in range(channels):
    kernel[:, :, c, c] = filt
  return kernel


def _bilinear_init(factor: int):
  def init(key, shape, dtype=jnp.float32):
    del key
    if shape[2] != shape[3]:
      raise ValueError(f'bilinear init needs in == out channels, got kernel shape {shape}')
    return jnp.asarray(bilinear_kernel(factor, shape[2]), dtype)
  return init


class BilinearConvTranspose(nn.Module):
  """Learnable x`factor` upsampling initialised to bilinear interpolation.

  Equals torch ConvTranspose2d(C, C, 2f, stride=f, padding=f // 2, bias=False)
  with the bilinear kernel: an n-pixel map becomes n * f pixels whose centres
  sit at the half-pixel positions of align_corners=False bilinear resizing
  (outside the map counts as zero, so only the outermost f/2 rows and columns
  differ from an edge-clamped resize). The kernel is applied as a correlation
  over the stride-dilated input (flax ConvTranspose, transpose_kernel=False).
  """
  factor: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    f = self.factor
    if f < 2 or f % 2:
      raise ValueError(f'upsampling factor {f!r} must be an even integer >= 2')
    k = 2 * f
    # Padding of the dilated input: k - 1 - torch_padding on each side.
    pad = k - 1 - f // 2
    return layers.ConvTranspose(x.shape[-1], (k, k), strides=(f, f), padding=((pad, pad),) * 2,
                                use_bias=False, kernel_init=_bilinear_init(f), dtype=self.dtype,
                                param_dtype=jnp.float32)(x)


def fit_to(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Crops NHWC `x` to `size` at the top-left, then edge-pads it up to `size`
  (a floor-pooled odd side leaves the upsampled map one row/column short)."""
  h, w = size
  x = x[:, :h, :w]
  ph, pw = h - x.shape[1], w - x.shape[2]
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode='edge')
  return x


class FCN(nn.Module):
  """FCN-32s / 16s / 8s.

  VGG encoders (the paper): VGG16 with fc6 (7x7 conv, `head_channels`) and fc7
  (1x1) -> 'score_fr' (1x1 conv to classes). FCN-16s adds 'score_pool4' (1x1
  on pool4) to the 2x-upsampled scores, FCN-8s then 'score_pool3' (1x1 on
  pool3) to those upsampled 2x again; the result is upsampled to the input
  size. All score layers start at zero, as in the paper ("zero-initialized
  so that the net starts with unmodified predictions" for the skips; a
  zero class-scoring layer trained as well as a random one). fc6 uses 'SAME'
  padding, so the paper's 100-pixel input padding and Caffe crops are not
  needed and any H, W works.

  ResNet encoders (torchvision): FCNHead ('head': 3x3 conv to
  `head_channels` (default in // 4 = 512) -> BN -> ReLU -> Dropout(0.1) -> 1x1
  conv) on 'stride32', with the same optional skip fusion (1x1 score convs on
  'stride16' / 'stride8'). With output_stride 8, variant '32s' and `aux_head`
  ('aux_head': FCNHead 1024 -> 256 -> classes on 'stride16') this is
  torchvision `segmentation.fcn_resnet50(aux_loss=True)`.

  Upsampling ('upsample'): 'bilinear' resizes with half-pixel centres
  (F.interpolate(align_corners=False)); 'transposed' uses learnable
  transposed convs initialised to bilinear interpolation (the paper): 2x for
  each fusion ('upscore2', 'upscore_pool4') and the remaining factor at the
  end ('upscore' / 'upscore16' / 'upscore8'); maps are then cropped/edge-padded
  to the finer size (`fit_to`). With output_stride < 32 a fusion between maps
  of equal resolution is a plain sum.

  Returns float32 logits (B, H, W, num_classes), or {'logits', 'aux'} with
  `aux_head`.
  """
  num_classes: int
  backbone: str = 'vgg16'
  output_stride: int = 32
  width_multiplier: float = 1.0
  freeze_encoder: bool = False
  dtype: Any = jnp.float32
  variant: str = '8s'
  upsample: str = 'bilinear'
  head_channels: int | None = None
  dropout_rate: float | None = None
  aux_head: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str | None = None
  backbone_kwargs: Any = ()  # Extra backbone arguments, e.g. {'bn_epsilon': 1.001e-5}.

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f'num_classes {self.num_classes!r} must be >= 1')
    if self.backbone not in BACKBONES:
      raise ValueError(f'unknown backbone {self.backbone!r} for FCN; known: {BACKBONES}')
    object.__setattr__(self, 'backbone_kwargs',
                       backbone_kwargs_items(self.backbone, self.backbone_kwargs))
    if self.output_stride not in (8, 16, 32):
      raise ValueError(f'output_stride {self.output_stride!r} is not one of (8, 16, 32)')
    if self.variant not in VARIANTS:
      raise ValueError(f'variant {self.variant!r} is not one of {VARIANTS}')
    if self.upsample not in UPSAMPLES:
      raise ValueError(f'upsample {self.upsample!r} is not one of {UPSAMPLES}')
    if self.width_multiplier <= 0:
      raise ValueError(f'width_multiplier {self.width_multiplier!r} must be > 0')
    if self.backbone in RESNET_BACKBONES and self.width_multiplier != 1.0:
      raise ValueError(f'width_multiplier {self.width_multiplier!r} is not supported by '
                       f'backbone {self.backbone!r} (only 1.0)')
    if self.head_channels is not None and self.head_channels < 1:
      raise ValueError(f'head_channels {self.head_channels!r} must be >= 1')
    if self.dropout_rate is not None and not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'dropout_rate {self.dropout_rate!r} must be in [0, 1)')
    if self.aux_head and self.backbone not in RESNET_BACKBONES:
      raise ValueError(f'aux_head=True needs a ResNet backbone, not {self.backbone!r}')
    if self.padding is not None:
      layers.check_padding(self.padding)
    layers.canonical_dtype(self.dtype)
    super().__post_init__()

  @property
  def is_vgg(self) -> bool:
    return self.backbone in VGG_BACKBONES

  def _upsample(self, x: jax.Array, factor: int, size: tuple[int, int], name: str,
                dtype: Any) -> jax.Array:
    if self.upsample == 'bilinear':
      return layers.resize_bilinear(x, size)
    if factor > 1:
      x = BilinearConvTranspose(factor, dtype=dtype, name=name)(x)
    return fit_to(x, size)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array | dict[str, jax.Array]:
    dtype = layers.canonical_dtype(self.dtype)
    h, w = images.shape[1:3]
    vgg = self.is_vgg
    padding = self.padding or ('SAME' if vgg else 'SYMMETRIC')
    dropout = self.dropout_rate
    if dropout is None:
      dropout = _VGG_DROPOUT if vgg else _RESNET_DROPOUT
    common = dict(output_stride=self.output_stride, bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon, padding=padding, dtype=dtype)
    if vgg:
      common.update(include_fc=True, fc_channels=self.head_channels or _VGG_HEAD_CHANNELS,
                    dropout_rate=dropout)
    common.update(self.backbone_kwargs)
    encoder = make_backbone(self.backbone, width_multiplier=self.width_multiplier,
                            name_='backbone', **common)
    feats = encoder(images, train=train and not self.freeze_encoder)
    if self.freeze_encoder:
      feats = jax.lax.stop_gradient(feats)

    conv1x1 = lambda name, init: layers.Conv(self.num_classes, (1, 1), dtype=dtype,
                                         param_dtype=jnp.float32, kernel_init=init,
                                         name=name)
    zeros = nn.initializers.zeros
    head = dict(num_classes=self.num_classes, dropout_rate=dropout, padding=padding,
                bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=dtype)
    if vgg:
      score = conv1x1('score_fr', zeros)(feats['fc7'])
    else:
      top = feats['stride32']
      score = layers.FCNHead(self.head_channels or top.shape[-1] // _FCN_HEAD_REDUCTION, **head,
                      name='head')(top, train=train)

    stride = min(32, self.output_stride)
    for key, score_name, up_name in _SKIPS[:_NUM_SKIPS[self.variant]]:
      skip_stride = min(int(key[len('stride'):]), self.output_stride)
      skip = conv1x1(score_name, zeros)(feats[key])
      score = self._upsample(score, stride // skip_stride, skip.shape[1:3], up_name, dtype)
      score = score + skip
      stride = skip_stride
    logits = self._upsample(score, stride, (h, w), _FINAL_UPSCORE[self.variant], dtype)
    logits = logits.astype(jnp.float32)
    if not self.aux_head:
      return logits
    mid = feats['stride16']
    aux = layers.FCNHead(mid.shape[-1] // _FCN_HEAD_REDUCTION, **head, name='aux_head')(
        mid, train=train)
    aux = layers.resize_bilinear(aux, (h, w)).astype(jnp.float32)
    return {'logits': logits, 'aux': aux}


class FCN32s(FCN):
  """FCN with `variant='32s'`: no skips."""
  variant: str = '32s'


class FCN16s(FCN):
  """FCN with `variant='16s'`: fuses pool4 (stride 16)."""
  variant: str = '16s'


class FCN8s(FCN):
  """FCN with `variant='8s'`: fuses pool4 and pool3 (strides 16 and 8)."""
  variant: str = '8s'
