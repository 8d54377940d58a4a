"""The satellite write-up's VGG16-FCN (registry 'fcn32s_sat', 'fcn16s_sat',
'fcn8s_sat').

`../shared/reference/satellite_fcn32s_deeplabv3_r101.txt` trains a PyTorch
FCN whose head differs from the paper's FCN (segjax.models.fcn): 1x1
conv6/conv7 of 512 channels and a decoder of five learned x2 upsamplings.

  encoder ('backbone'): VGG16 convs (torchvision layout, no BN); pool3 (256,
    1/8), pool4 (512, 1/16), pool5 (512, 1/32)
  conv6, conv7: 1x1 convs (512, bias) + ReLU on pool5
  deconv1..5: 3x3 transposed convs, stride 2 (PyTorch padding 1,
    output_padding 1: exactly x2), with bias, 512 -> 512 -> 256 -> 128 ->
    64 -> 32; bn1..bn5 BatchNorms; classifier: 1x1 conv to the classes.

  32s: s = ReLU(deconv1(conv7))
       s = bn2(ReLU(deconv2(s)))
  16s: s = bn1(ReLU(deconv1(conv7)) + pool4)
       s = bn2(ReLU(deconv2(s)))
  8s:  d = ReLU(deconv1(conv7))
       s = bn2(ReLU(deconv2(d)) + ReLU(deconv2(pool4)) + pool3)
         (deconv2 is applied twice with the same weights, as written)
  then s = bn5(ReLU(deconv5(bn4(ReLU(deconv4(bn3(ReLU(deconv3(s)))))))))
       logits = classifier(s)

The write-up's modules also define bn1 in the 32s and 8s variants without
using it; those unused parameters are not created here (a state dict from
its code loads with bn1.* left out). Inputs whose sides are not multiples of
32 are zero-padded at the bottom/right and the logits cropped back (the
write-up's 256x256 crops and 512x512 images need none).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers
from segjax.models.backbones import make_backbone

VARIANTS = ('32s', '16s', '8s')
HEAD_CHANNELS = 512  # conv6 / conv7.
DECONV_CHANNELS = (512, 256, 128, 64, 32)
# PyTorch ConvTranspose2d(kernel 3, stride 2, padding 1, output_padding 1) as a
# correlation over the stride-dilated input: pad k - 1 - padding before and
# that plus output_padding after.
_DECONV_PADS = ((1, 2), (1, 2))
# PyTorch's default conv init (kaiming_uniform_, a = sqrt(5)).
_TORCH_INIT = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


class FCNSat(nn.Module):
  """The satellite write-up's FCN-32s / 16s / 8s; see the module docstring.

  Attributes:
    num_classes: output channels (7 in the write-up).
    backbone: only 'vgg16'.
    output_stride: only 32.
    width_multiplier: only 1.0 (the skips add VGG's 256/512-channel pools).
    freeze_encoder: no gradient into the VGG16 convs.
    dtype: compute dtype; logits are float32.
    variant: '32s', '16s' or '8s'.
    bn_momentum, bn_epsilon: the decoder's BatchNorm (PyTorch defaults).
    padding: 'SAME' | 'SYMMETRIC': identical for VGG's 3x3 stride-1 convs.
  """
  num_classes: int
  backbone: str = 'vgg16'
  output_stride: int = 32
  width_multiplier: float = 1.0
  freeze_encoder: bool = False
  dtype: Any = jnp.float32
  variant: str = '32s'
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str = 'SAME'

  def __post_init__(self):
    layers.check_fixed_encoder(self, f'fcn{self.variant}_sat', ('vgg16',), 32,
                               'the decoder upsamples pool5 five times by 2')
    if self.width_multiplier != 1.0:
      raise ValueError(f'width_multiplier {self.width_multiplier!r} is not supported by the '
                       'satellite FCN (only 1.0)')
    if self.variant not in VARIANTS:
      raise ValueError(f'variant {self.variant!r} is not one of {VARIANTS}')
    layers.canonical_dtype(self.dtype)
    layers.check_padding(self.padding)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    dtype = layers.canonical_dtype(self.dtype)
    h, w = images.shape[1:3]
    x = layers.pad_to_multiple(images, 32)
    encoder = make_backbone('vgg16', output_stride=32, padding=self.padding, dtype=dtype,
                            name_='backbone')
    feats = encoder(x, train=train and not self.freeze_encoder)
    if self.freeze_encoder:
      feats = jax.lax.stop_gradient(feats)

    conv = functools.partial(layers.Conv, kernel_size=(1, 1), dtype=dtype,
                             param_dtype=jnp.float32, kernel_init=_TORCH_INIT)
    deconv = lambda i: layers.ConvTranspose(
        DECONV_CHANNELS[i - 1], (3, 3), strides=(2, 2), padding=_DECONV_PADS, dtype=dtype,
        kernel_init=_TORCH_INIT, name=f'deconv{i}')
    bn = lambda i: layers.batch_norm(train=train, momentum=self.bn_momentum,
                                     epsilon=self.bn_epsilon, dtype=dtype, name=f'bn{i}')

    s = nn.relu(conv(HEAD_CHANNELS, name='conv6')(feats['stride32']))
    s = nn.relu(conv(HEAD_CHANNELS, name='conv7')(s))
    s = nn.relu(deconv(1)(s))
    if self.variant == '8s':
      deconv2 = deconv(2)  # Shared by the conv7 and pool4 paths.
      s = bn(2)(nn.relu(deconv2(s)) + nn.relu(deconv2(feats['stride16'])) + feats['stride8'])
    else:
      if self.variant == '16s':
        s = bn(1)(s + feats['stride16'])
      s = bn(2)(nn.relu(deconv(2)(s)))
    for i in (3, 4, 5):
      s = bn(i)(nn.relu(deconv(i)(s)))
    logits = conv(self.num_classes, name='classifier')(s)
    return logits[:, :h, :w].astype(jnp.float32)


class FCN32sSat(FCNSat):
  """The satellite write-up's FCN-32s."""
  variant: str = '32s'


class FCN16sSat(FCNSat):
  """The satellite write-up's FCN-16s (adds pool4 before bn1)."""
  variant: str = '16s'


class FCN8sSat(FCNSat):
  """The satellite write-up's FCN-8s (adds the x2-upsampled pool4 and pool3
  before bn2)."""
  variant: str = '8s'
