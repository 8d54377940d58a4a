"""The joint training augmentation as jitted batch ops, run on the accelerator.

With `data.augment_on='device'` the host only decodes, applies `data.resize`
and pads every example to one canvas (bottom/right: image 0, label ignore), so
that a batch stacks; `augment_batch` then does, per example, what the host's
TrainTransform does (segjax/data/transforms.py), with the same distributions:

  random scale  s ~ U(scale_range); the image becomes round(h*s) x round(w*s)
  random crop   offsets uniform over the scaled image, padded first with
                image 0 / label ignore when it is smaller than the crop
  flips         horizontal (and vertical if asked), each with probability 1/2
  colour jitter brightness, contrast, saturation factors ~ U(max(0, 1-x), 1+x)
                and a hue shift ~ U(-hue, hue), in that order

Scale and crop are one gather: output pixel (i, j) reads the source at
((y + i + 0.5) / s' - 0.5) with s' = round(h*s)/h (bilinear for the image,
nearest for the label, as Pillow's resize maps pixel centres), so nothing of
data-dependent shape is ever built. Differences from the host path: the image
is resampled bilinearly without Pillow's antialiasing when shrinking, hue is
rotated in float HSV instead of Pillow's 8-bit HSV, and rotation is not
supported (augment.rotate_degrees must be 0). Random draws come from
jax.random keyed by (seed, step, row of the global batch), so a resumed run
sees the same augmentation.
"""

from __future__ import annotations

from typing import NamedTuple

import grain
import jax
import jax.numpy as jnp
import numpy as np

from segjax.data import transforms

_LUMA = jnp.asarray([0.2989, 0.587, 0.114], jnp.float32)


class AugmentParams(NamedTuple):
  crop_size: tuple[int, int]
  ignore_label: int
  scale_range: tuple[float, float]
  hflip: bool
  vflip: bool
  brightness: float
  contrast: float
  saturation: float
  hue: float


def params_from_config(config) -> AugmentParams:
  a, d = config.augment, config.data
  if float(a.rotate_degrees):
    raise ValueError(f'data.augment_on=\'device\' does not rotate: set augment.rotate_degrees=0 '
                     f'(got {a.rotate_degrees}) or data.augment_on=\'host\'')
  if not 0 <= float(a.hue) <= 0.5:
    raise ValueError(f'augment.hue must be in [0, 0.5], got {a.hue}')
  return AugmentParams((int(d.crop_size[0]), int(d.crop_size[1])), int(d.ignore_label),
                       (float(a.scale_range[0]), float(a.scale_range[1])), bool(a.hflip),
                       bool(a.vflip), float(a.brightness), float(a.contrast),
                       float(a.saturation), float(a.hue))


class Draws(NamedTuple):
  """One example's random choices (exposed for the distribution tests)."""
  scaled_hw: jax.Array   # int32 (2,): round(h * s), round(w * s)
  offset: jax.Array      # int32 (2,): crop's top-left in the padded scaled image
  hflip: jax.Array       # bool
  vflip: jax.Array       # bool
  factors: jax.Array     # float32 (3,): brightness, contrast, saturation (1 = off)
  hue: jax.Array         # float32: hue shift in turns


def draw(key: jax.Array, size_hw: jax.Array, p: AugmentParams) -> Draws:
  """The random choices for one example whose real size is size_hw (h, w)."""
  ks = jax.random.split(key, 9)
  lo, hi = p.scale_range
  hw = size_hw.astype(jnp.float32)
  if lo == hi == 1.0:
    scaled = size_hw.astype(jnp.int32)
  else:
    s = jax.random.uniform(ks[0], (), jnp.float32, lo, hi)
    # Python's round() (half to even) as in transforms.random_scale.
    scaled = jnp.maximum(1, jnp.round(hw * s)).astype(jnp.int32)
  crop = jnp.asarray(p.crop_size, jnp.int32)
  room = jnp.maximum(scaled, crop) - crop  # After padding to at least the crop.
  offset = jnp.stack([jax.random.randint(ks[1], (), 0, room[0] + 1),
                      jax.random.randint(ks[2], (), 0, room[1] + 1)]).astype(jnp.int32)
  hflip = (jax.random.uniform(ks[3]) < 0.5) if p.hflip else jnp.zeros((), bool)
  vflip = (jax.random.uniform(ks[4]) < 0.5) if p.vflip else jnp.zeros((), bool)

  def factor(k, strength):
    if not strength:
      return jnp.ones((), jnp.float32)
    return jax.random.uniform(k, (), jnp.float32, max(0.0, 1 - strength), 1 + strength)

  factors = jnp.stack([factor(ks[5], p.brightness), factor(ks[6], p.contrast),
                       factor(ks[7], p.saturation)])
  hue = (jax.random.uniform(ks[8], (), jnp.float32, -p.hue, p.hue) if p.hue
         else jnp.zeros((), jnp.float32))
  return Draws(scaled, offset, hflip, vflip, factors, hue)


def _rgb_to_hsv(x):
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v = jnp.max(x, -1)
  c = v - jnp.min(x, -1)
  s = jnp.where(v > 0, c / jnp.where(v > 0, v, 1), 0)
  safe = jnp.where(c > 0, c, 1)
  h = jnp.where(v == r, (g - b) / safe, jnp.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
  h = jnp.where(c > 0, (h / 6) % 1.0, 0)
  return h, s, v


def _hsv_to_rgb(h, s, v):
  i = jnp.floor(h * 6)
  f = h * 6 - i
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  i = i.astype(jnp.int32) % 6
  r = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [v, q, p, p, t], v)
  g = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [t, v, v, q, p], p)
  b = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [p, p, t, v, v], q)
  return jnp.stack([r, g, b], -1)


def jitter(image: jax.Array, d: Draws, p: AugmentParams) -> jax.Array:
  """Colour jitter of one float image in [0, 255] (torchvision ColorJitter's
  formulas, as transforms.color_jitter)."""
  x = image
  if p.brightness:
    x = jnp.clip(x * d.factors[0], 0, 255)
  if p.contrast:
    mean = jnp.mean(x @ _LUMA)
    x = jnp.clip(d.factors[1] * x + (1 - d.factors[1]) * mean, 0, 255)
  if p.saturation:
    gray = (x @ _LUMA)[..., None]
    x = jnp.clip(d.factors[2] * x + (1 - d.factors[2]) * gray, 0, 255)
  if p.hue:
    h, s, v = _rgb_to_hsv(x / 255.0)
    x = _hsv_to_rgb((h + d.hue) % 1.0, s, v) * 255.0
  return x


def augment_one(image: jax.Array, label: jax.Array, size_hw: jax.Array, key: jax.Array,
                p: AugmentParams) -> tuple[jax.Array, jax.Array]:
  """One example: image uint8 (H, W, 3) canvas whose real part is size_hw,
  label (H, W). Returns uint8 (ch, cw, 3) and int32 (ch, cw)."""
  d = draw(key, size_hw, p)
  ch, cw = p.crop_size
  hw = size_hw.astype(jnp.float32)
  ratio = d.scaled_hw.astype(jnp.float32) / hw  # Scaled pixels per source pixel.
  rows = d.offset[0] + jnp.arange(ch)  # Coordinates in the padded scaled image.
  cols = d.offset[1] + jnp.arange(cw)
  row_in = rows < d.scaled_hw[0]
  col_in = cols < d.scaled_hw[1]
  inside = row_in[:, None] & col_in[None, :]
  # Source coordinates of pixel centres (Pillow's convention).
  sy = (rows + 0.5) / ratio[0] - 0.5
  sx = (cols + 0.5) / ratio[1] - 0.5
  h_real, w_real = size_hw[0], size_hw[1]
  # Label: nearest source pixel.
  ny = jnp.clip(jnp.floor((rows + 0.5) / ratio[0]).astype(jnp.int32), 0, h_real - 1)
  nx = jnp.clip(jnp.floor((cols + 0.5) / ratio[1]).astype(jnp.int32), 0, w_real - 1)
  out_label = label[ny[:, None], nx[None, :]].astype(jnp.int32)
  out_label = jnp.where(inside, out_label, p.ignore_label)
  # Image: bilinear with edge clamping inside the real image.
  y0 = jnp.clip(jnp.floor(sy), 0, h_real - 1)
  x0 = jnp.clip(jnp.floor(sx), 0, w_real - 1)
  wy = jnp.clip(sy - y0, 0, 1)[:, None, None]
  wx = jnp.clip(sx - x0, 0, 1)[None, :, None]
  y0i, x0i = y0.astype(jnp.int32), x0.astype(jnp.int32)
  y1i = jnp.minimum(y0i + 1, h_real - 1)
  x1i = jnp.minimum(x0i + 1, w_real - 1)
  img = image.astype(jnp.float32)

  def at(yi, xi):
    return img[yi[:, None], xi[None, :]]

  out = ((1 - wy) * ((1 - wx) * at(y0i, x0i) + wx * at(y0i, x1i))
         + wy * ((1 - wx) * at(y1i, x0i) + wx * at(y1i, x1i)))
  out = jnp.where(inside[..., None], out, 0.0)
  out = jnp.where(d.hflip, out[:, ::-1], out)
  out_label = jnp.where(d.hflip, out_label[:, ::-1], out_label)
  out = jnp.where(d.vflip, out[::-1], out)
  out_label = jnp.where(d.vflip, out_label[::-1], out_label)
  out = jitter(out, d, p)
  return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8), out_label


def example_keys(seed: int, step: jax.Array, batch: int) -> jax.Array:
  """One key per row of the global batch of `step`: (seed, step, row)."""
  base = jax.random.fold_in(jax.random.fold_in(jax.random.key(int(seed)), 0x5E6), step)
  return jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.arange(batch))


def augment_batch(batch: dict, keys: jax.Array, p: AugmentParams) -> dict:
  """{'image' uint8 (B, H, W, 3), 'label' (B, H, W), 'size' int32 (B, 2)} ->
  {'image' uint8 (B, ch, cw, 3), 'label' int32 (B, ch, cw)}. Jit-able."""
  image, label = jax.vmap(lambda i, l, s, k: augment_one(i, l, s, k, p))(
      batch['image'], batch['label'], batch['size'], keys)
  return {'image': image, 'label': label}


# --------------------------------------------------------------------------- host side


class DecodeTransform(grain.transforms.Map):
  """Host side of augment_on='device': data.resize if set, then pad to the
  canvas (bottom/right: image 0, label ignore); adds 'size', the real (h, w)."""

  def __init__(self, config, canvas: tuple[int, int]):
    self.resize = transforms._resize_size(config.data)  # pylint: disable=protected-access
    self.canvas = (int(canvas[0]), int(canvas[1]))
    self.ignore_label = int(config.data.ignore_label)

  def map(self, element):
    image, label = element['image'], element['label']
    if self.resize:
      image, label = transforms.resize(image, label, self.resize)
    h, w = image.shape[:2]
    if h > self.canvas[0] or w > self.canvas[1]:
      raise ValueError(f'example {element.get("name", "?")!r} is {h}x{w}, larger than the '
                       f'device-augmentation canvas {self.canvas[0]}x{self.canvas[1]} (the '
                       'first training example\'s size); set data.resize so that all '
                       'examples share one size')
    image, label = transforms.pad_to(image, label, self.canvas, self.ignore_label)
    out = dict(element)
    out['image'], out['label'] = image, label
    out['size'] = np.asarray([h, w], np.int32)
    return out


def canvas_size(config, source) -> tuple[int, int]:
  """data.resize, else the size of the split's first example."""
  r = transforms._resize_size(config.data)  # pylint: disable=protected-access
  if r:
    return r
  first = source[0]
  return tuple(int(v) for v in first['image'].shape[:2])
