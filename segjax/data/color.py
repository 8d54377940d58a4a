"""Colour-space conversion: sRGB to CIE L*a*b* (D65 white), for NumPy or JAX arrays.

The formula of the CIE 1976 L*a*b* definition on sRGB (IEC 61966-2-1):
  1. linearise each channel c in [0, 1]: c / 12.92 if c <= 0.04045, else
     ((c + 0.055) / 1.055) ** 2.4;
  2. XYZ = M @ rgb_linear with the sRGB (D65) matrix M, divided by the D65
     white point (0.95047, 1, 1.08883);
  3. f(t) = t ** (1/3) above (6/29) ** 3, else t / (3 (6/29) ** 2) + 4/29;
     L = 116 f(Y) - 16, a = 500 (f(X) - f(Y)), b = 200 (f(Y) - f(Z)).
L is in [0, 100]; a and b lie within about [-128, 128] for sRGB colours.
"""

from __future__ import annotations

import numpy as np

_SRGB_TO_XYZ = np.asarray([[0.4124564, 0.3575761, 0.1804375],
                           [0.2126729, 0.7151522, 0.0721750],
                           [0.0193339, 0.1191920, 0.9503041]], np.float32)
_WHITE_D65 = np.asarray([0.95047, 1.0, 1.08883], np.float32)
_DELTA = 6.0 / 29.0


def rgb_to_lab(rgb, xp=np):
  """(..., 3) sRGB in [0, 1] -> (..., 3) L*, a*, b*. xp: numpy or jax.numpy."""
  rgb = xp.clip(rgb.astype(xp.float32), 0.0, 1.0)
  linear = xp.where(rgb <= 0.04045, rgb / 12.92,
                    ((xp.maximum(rgb, 0.04045) + 0.055) / 1.055) ** 2.4)
  xyz = linear @ (_SRGB_TO_XYZ.T / _WHITE_D65[None, :])
  # The cube root is taken on the clipped value so that its gradient and the
  # unused branch stay finite.
  f = xp.where(xyz > _DELTA**3, xp.maximum(xyz, _DELTA**3) ** (1.0 / 3.0),
               xyz / (3 * _DELTA**2) + 4.0 / 29.0)
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  return xp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def bgr_lab_features(normalised, mean, std, xp=np):
  """The 6-channel input of data.input_channels='bgr_lab' from a normalised
  RGB batch (x - mean) / std: its channels in B, G, R order, then L/50 - 1,
  a/128, b/128 of the original pixels (all roughly in [-1, 1])."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  rgb01 = (normalised * std + mean) / 255.0
  lab = rgb_to_lab(rgb01, xp)
  scaled = lab * np.asarray([1 / 50.0, 1 / 128.0, 1 / 128.0], np.float32) - np.asarray(
      [1.0, 0.0, 0.0], np.float32)
  return xp.concatenate([normalised[..., ::-1], scaled], axis=-1)
