"""SegNet (Badrinarayanan, Kendall & Cipolla, 2017, "SegNet: A Deep
Convolutional Encoder-Decoder Architecture for Image Segmentation") and
Bayesian SegNet (Kendall, Badrinarayanan & Cipolla, 2017, "Bayesian SegNet:
Model Uncertainty in Deep Convolutional Encoder-Decoder Architectures for
Scene Understanding")."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers
from segjax.models.backbones import vgg

BACKBONES = ('vgg16_bn',)
# Decoder conv widths per stage, deepest first, as in the paper's Caffe model
# (segnet_train.prototxt: conv5_3_D ... conv1_2_D); the 3x3 classifier
# 'conv1_1_D' follows. Each stage mirrors the encoder stage it unpools.
DECODER_WIDTHS = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))
# Bayesian SegNet "central encoder-decoder": dropout after the pools of encoder
# stages 3-5 and after the convs of decoder stages 5-3 (Caffe encdrop3-5,
# decdrop5-3), i.e. before unpooling into decoder stages 4, 3 and 2.
_CENTRAL_ENCODER_STAGES = (3, 4, 5)
_CENTRAL_DECODER_STAGES = (5, 4, 3)
# 5 stride-2 pools: sides must be multiples of 2 ** 5.
_MULTIPLE = 32


def _windows(x: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H/2, W/2, C, 4): each 2x2 window in row-major order."""
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'max_pool_with_indices needs even sides, got {h}x{w}')
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c, 4)


def max_pool_with_indices(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """2x2 stride-2 max pool of NHWC `x` (even sides) and the argmax positions.

  Returns (pooled (B, H/2, W/2, C), indices (same shape, int32 in 0..3: the
  row-major position inside the window; the first maximum on ties)). The
  gradient of `pooled` flows to the chosen element only.
  """
  win = _windows(x)
  idx = jnp.argmax(win, axis=-1).astype(jnp.int32)
  pooled = jnp.take_along_axis(win, idx[..., None], axis=-1)[..., 0]
  return pooled, idx


def max_unpool(x: jax.Array, indices: jax.Array) -> jax.Array:
  """SegNet's upsampling: (B, h, w, C) values -> (B, 2h, 2w, C) with each value
  at its window's recorded position (`indices` from max_pool_with_indices) and
  zeros elsewhere."""
  if x.shape != indices.shape:
    raise ValueError(f'max_unpool: values {x.shape} and indices {indices.shape} differ')
  b, h, w, c = x.shape
  onehot = indices[..., None] == jnp.arange(4, dtype=indices.dtype)
  out = jnp.where(onehot, x[..., None], jnp.zeros((), x.dtype))
  out = out.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return out.reshape(b, 2 * h, 2 * w, c)


class SegNetEncoder(nn.Module):
  """VGG16-BN's 13 convs (torchvision vgg16_bn layout: 'conv{b}_{c}',
  'bn{b}_{c}', so ('torchvision', 'vgg16_bn') weights load) with pools that
  record argmax indices, and optional dropout after given stages' pools.

  Returns (pooled output of stage 5, [indices of stages 1..5]).
  """
  width_multiplier: float = 1.0
  dropout_rate: float = 0.0
  dropout_stages: tuple[int, ...] = ()
  mc_dropout: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str = 'SAME'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, list[jax.Array]]:
    indices = []
    widths = vgg.stage_widths(self.width_multiplier)
    for b, (n, width) in enumerate(zip(vgg.DEPTHS[16], widths), start=1):
      x = vgg.conv_stage(x, stage=b, num_convs=n, features=width, dilation=1,
                         batch_norm=True, train=train, padding=self.padding,
                         bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                         dtype=self.dtype)
      x, idx = max_pool_with_indices(x)
      indices.append(idx)
      if self.dropout_rate > 0 and b in self.dropout_stages:
        x = nn.Dropout(self.dropout_rate, name=f'encdrop{b}')(
            x, deterministic=not (train or self.mc_dropout))
    return x, indices


class SegNet(nn.Module):
  """SegNet: VGG16-BN encoder, index-unpooling decoder, 3x3 classifier.

  Decoder stage s (5 .. 1) unpools with encoder stage s's indices, then runs
  3x3 conv -> BN -> ReLU ('conv{s}_{c}_D', widths DECODER_WIDTHS); the last
  stage ends with the 3x3 classifier conv 'conv1_1_D' (with bias, no BN).
  Inputs are zero-padded at the bottom/right to a multiple of 32 (zero = the
  mean of normalised images) and the logits cropped back, so any H, W works.
  Only output_stride 32 and backbone 'vgg16_bn' exist.

  `dropout_rate` > 0 gives Bayesian SegNet's central encoder-decoder dropout
  (see BayesianSegNet). With `mc_dropout` the dropout also runs when
  train=False (Monte Carlo dropout sampling at test time; pass a 'dropout' rng).

  With `freeze_encoder` the encoder runs BatchNorm on its running statistics
  and no gradient flows into it (the pooling indices carry none anyway).
  """
  num_classes: int
  backbone: str = 'vgg16_bn'
  output_stride: int = 32
  width_multiplier: float = 1.0
  freeze_encoder: bool = False
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  mc_dropout: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str = 'SAME'

  def __post_init__(self):
    layers.check_fixed_encoder(self, 'segnet', BACKBONES, 32, 'its decoder unpools 5 times')
    vgg.check_common_args(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    dtype = layers.canonical_dtype(self.dtype)
    h, w = images.shape[1:3]
    x = layers.pad_to_multiple(images, _MULTIPLE)
    x = x.astype(dtype)

    common = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=dtype)
    x, indices = SegNetEncoder(self.width_multiplier, self.dropout_rate,
                               _CENTRAL_ENCODER_STAGES, self.mc_dropout,
                               padding=self.padding, **common, name='backbone')(
                                   x, train=train and not self.freeze_encoder)
    if self.freeze_encoder:
      x = jax.lax.stop_gradient(x)

    scale = lambda c: max(1, int(round(c * self.width_multiplier)))
    for s, widths in zip(range(5, 0, -1), DECODER_WIDTHS):
      x = max_unpool(x, indices[s - 1])
      n = vgg.DEPTHS[16][s - 1]
      # conv{s}_{n}_D first; stage 1 has one conv (conv1_2_D) before the classifier.
      for c, width in zip(range(n, 0, -1), widths):
        x = layers.ConvBNAct(scale(width), 3, padding=self.padding,
                             kernel_init=layers.he_normal, **common,
                             name=f'conv{s}_{c}_D')(x, train=train)
      if self.dropout_rate > 0 and s in _CENTRAL_DECODER_STAGES:
        x = nn.Dropout(self.dropout_rate, name=f'decdrop{s}')(
            x, deterministic=not (train or self.mc_dropout))
    x = layers.Conv(self.num_classes, (3, 3), padding=layers.conv_padding(self.padding, 3),
                dtype=dtype, param_dtype=jnp.float32, name='conv1_1_D')(x)
    return x[:, :h, :w].astype(jnp.float32)


class BayesianSegNet(SegNet):
  """Bayesian SegNet, central encoder-decoder variant: dropout p=0.5 after the
  pools of the 3 deepest encoder stages (encdrop3-5) and after the convs of
  the 3 deepest decoder stages (decdrop5-3, i.e. before unpooling into stages
  4, 3, 2), as in the paper's Caffe model. Set `mc_dropout=True` for Monte
  Carlo dropout sampling at test time."""
  dropout_rate: float = 0.5
