"""The U-Net of TensorFlow's "Image segmentation" tutorial
(tensorflow.org/tutorials/images/segmentation): a MobileNetV2 encoder and a
pix2pix upsampling decoder."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models import layers
from segjax.models import backbones
from segjax.models.backbones import mobilenet_v2

# pix2pix.upsample's kernel init: tf.random_normal_initializer(0., 0.02).
_pix2pix_init = nn.initializers.normal(stddev=0.02)


class Upsample(nn.Module):
  """pix2pix.upsample: ConvTranspose(stride 2, 'same', no bias) -> BN -> [dropout] -> ReLU.

  The kernel is flax's (kh, kw, in, out) without spatial flip
  (transpose_kernel=False): a Keras Conv2DTranspose kernel (kh, kw, out, in)
  loads as its spatial flip with the last two axes swapped.
  """
  features: int
  kernel_size: int = 3
  dropout_rate: float = 0.0
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    k = (self.kernel_size, self.kernel_size)
    x = layers.ConvTranspose(self.features, k, strides=(2, 2), padding='SAME', use_bias=False,
                         kernel_init=_pix2pix_init, dtype=self.dtype,
                         param_dtype=jnp.float32, name='conv')(x)
    x = layers.batch_norm(train=train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                          dtype=self.dtype, name='bn')(x)
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    return nn.relu(x)


class UNet(nn.Module):
  """TF-tutorial U-Net: MobileNetV2 taps + `decoder_filters` pix2pix upsamplers.

  Encoder taps (stride): block_1_expand_relu (2), block_3_expand_relu (4),
  block_6_expand_relu (8), block_13_expand_relu (16), block_16_project (32,
  the projection conv before its BN, as in the tutorial). The decoder
  upsamples the deepest tap, concatenates the next skip, and so on; a final
  ConvTranspose(num_classes, 3, stride 2, 'same', with bias) gives logits at
  input resolution.

  Inputs whose sides are not multiples of 32 are zero-padded at the bottom and
  right to the next multiple of 32 (zero = the mean of normalised images) and
  the logits cropped back, so any H, W works. Only output_stride=32 and the
  'mobilenetv2' backbone exist. Decoder BatchNorm uses Keras' epsilon 1e-3.

  With `freeze_encoder` the encoder runs BatchNorm on its running statistics
  even in training (like the tutorial's `down_stack.trainable = False`) and no
  gradient flows into it.
  """
  num_classes: int
  backbone: str = 'mobilenetv2'
  output_stride: int = 32
  width_multiplier: float = 1.0
  freeze_encoder: bool = False
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3
  decoder_filters: Sequence[int] = (512, 256, 128, 64)
  dropout_rate: float = 0.0
  padding: str = 'SAME'
  depthwise_impl: str = 'auto'
  # Extra encoder arguments, e.g. {'bn_epsilon': 1e-5} for torchvision weights.
  backbone_kwargs: Any = ()

  def __post_init__(self):
    layers.check_fixed_encoder(self, 'unet', ('mobilenetv2',), 32,
                               'its decoder upsamples 5 times')
    object.__setattr__(self, 'backbone_kwargs',
                       backbones.backbone_kwargs_items('mobilenetv2', self.backbone_kwargs))
    n_skips = len(mobilenet_v2.UNET_TAPS) - 1
    if len(self.decoder_filters) != n_skips:
      raise ValueError(f'decoder_filters {self.decoder_filters!r} must have {n_skips} '
                       'values, one per skip connection')
    layers.check_module_args(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    dtype = layers.canonical_dtype(self.dtype)
    h, w = images.shape[1:3]
    x = layers.pad_to_multiple(images, 32)

    encoder = mobilenet_v2.MobileNetV2(
        width_multiplier=self.width_multiplier, output_stride=32, final_project_bn=False,
        bn_momentum=self.bn_momentum, padding=self.padding,
        depthwise_impl=self.depthwise_impl, dtype=dtype, name='backbone',
        **dict(self.backbone_kwargs))
    feats = encoder(x, train=train and not self.freeze_encoder)
    skips = [feats[k] for k in mobilenet_v2.UNET_TAPS]
    if self.freeze_encoder:
      skips = jax.lax.stop_gradient(skips)

    x = skips[-1]
    for i, (filters, skip) in enumerate(zip(self.decoder_filters, reversed(skips[:-1]))):
      x = Upsample(filters, dropout_rate=self.dropout_rate, bn_momentum=self.bn_momentum,
                   bn_epsilon=self.bn_epsilon, dtype=dtype, name=f'up_{i}')(x, train=train)
      x = jnp.concatenate([x, skip], axis=-1)
    # Keras' default initialisers for this last layer: Glorot uniform, zero bias.
    x = layers.ConvTranspose(self.num_classes, (3, 3), strides=(2, 2), padding='SAME',
                         kernel_init=layers.glorot_uniform, dtype=dtype,
                         param_dtype=jnp.float32, name='last')(x)
    return x[:, :h, :w].astype(jnp.float32)
