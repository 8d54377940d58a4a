"""Joint image/label transforms in NumPy and Pillow, and the composed train/eval maps.

Images are uint8 (H, W, 3); labels are (H, W) uint8, or int32 when the ignore
label does not fit in a byte. Geometric ops resample the image bilinearly and
the label with nearest neighbour through the same Pillow geometry, so both stay
aligned; pixels that come from outside the image get 0 in the image and the
ignore label in the label. Random ops take an `np.random.Generator`.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np
from PIL import Image

# ITU-R 601 luma, as torchvision's rgb_to_grayscale.
_LUMA = np.asarray([0.2989, 0.587, 0.114], np.float32)


def _label_image(label: np.ndarray) -> Image.Image:
  # 'L' for uint8; 'I' (int32) keeps labels above 255 intact.
  if label.dtype == np.uint8:
    return Image.fromarray(label, mode='L')
  return Image.fromarray(label.astype(np.int32), mode='I')


def _label_array(img: Image.Image, dtype) -> np.ndarray:
  return np.asarray(img).astype(dtype, copy=False)


def resize(image: np.ndarray, label: np.ndarray | None, size: Sequence[int]):
  """Resizes to size=(h, w): image bilinear (antialiased), label nearest."""
  h, w = int(size[0]), int(size[1])
  if image.shape[:2] == (h, w):
    return image, label
  out = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
  if label is not None:
    label = _label_array(_label_image(label).resize((w, h), Image.NEAREST), label.dtype)
  return out, label


def random_scale(image, label, rng: np.random.Generator,
                 scale_range: Sequence[float]):
  """Resizes by a factor drawn uniformly from scale_range=(min, max)."""
  lo, hi = float(scale_range[0]), float(scale_range[1])
  if lo == hi == 1.0:
    return image, label
  s = rng.uniform(lo, hi)
  h, w = image.shape[:2]
  return resize(image, label, (max(1, round(h * s)), max(1, round(w * s))))


def pad_to(image, label, size: Sequence[int], ignore_label: int):
  """Pads bottom/right up to at least size=(h, w): image 0, label ignore."""
  h, w = image.shape[:2]
  ph, pw = max(0, int(size[0]) - h), max(0, int(size[1]) - w)
  if ph or pw:
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
    label = np.pad(label, ((0, ph), (0, pw)), constant_values=ignore_label)
  return image, label


def random_crop(image, label, rng: np.random.Generator, crop_size: Sequence[int],
                ignore_label: int):
  """Crops a random crop_size=(h, w) window, padding first if too small."""
  ch, cw = int(crop_size[0]), int(crop_size[1])
  image, label = pad_to(image, label, (ch, cw), ignore_label)
  h, w = image.shape[:2]
  y = int(rng.integers(0, h - ch + 1))
  x = int(rng.integers(0, w - cw + 1))
  return image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]


def hflip(image, label):
  return image[:, ::-1], label[:, ::-1]


def vflip(image, label):
  return image[::-1], label[::-1]


def rotate(image, label, degrees: float, ignore_label: int):
  """Rotates counter-clockwise about the centre, keeping the size."""
  if degrees == 0:
    return image, label
  out = np.asarray(Image.fromarray(image).rotate(
      degrees, resample=Image.BILINEAR, fillcolor=(0, 0, 0)))
  label = _label_array(_label_image(label).rotate(
      degrees, resample=Image.NEAREST, fillcolor=int(ignore_label)), label.dtype)
  return out, label


def random_rotate(image, label, rng: np.random.Generator, max_degrees: float,
                  ignore_label: int):
  """Rotates by an angle drawn uniformly from [-max_degrees, max_degrees]."""
  if max_degrees <= 0:
    return image, label
  return rotate(image, label, rng.uniform(-max_degrees, max_degrees), ignore_label)


def random_rotate_from(image, label, rng: np.random.Generator, angles: Sequence[float],
                       prob: float, ignore_label: int):
  """With probability `prob`, rotates by an angle drawn uniformly from `angles`
  (the satellite write-up's {20, 30, ..., 75}); otherwise returns the input."""
  if not angles or prob <= 0 or rng.uniform() >= prob:
    return image, label
  return rotate(image, label, float(angles[int(rng.integers(len(angles)))]), ignore_label)


def _grayscale(x: np.ndarray) -> np.ndarray:
  return x @ _LUMA


def adjust_brightness(x: np.ndarray, factor: float) -> np.ndarray:
  return np.clip(x * factor, 0, 255)


def adjust_contrast(x: np.ndarray, factor: float) -> np.ndarray:
  mean = _grayscale(x).mean()
  return np.clip(factor * x + (1 - factor) * mean, 0, 255)


def adjust_saturation(x: np.ndarray, factor: float) -> np.ndarray:
  gray = _grayscale(x)[..., None]
  return np.clip(factor * x + (1 - factor) * gray, 0, 255)


def adjust_hue(image: np.ndarray, shift: float) -> np.ndarray:
  """Rotates the hue of a uint8 image by `shift` in [-0.5, 0.5] of the wheel.

  Same as torchvision's PIL path: HSV in 8 bits, hue shifted modulo 256; Pillow
  does it in C, about 30x faster than float HSV in NumPy.
  """
  step = int(round(shift * 255))
  if step % 256 == 0:
    return image  # Skips the lossy 8-bit HSV round trip.
  h, s, v = Image.fromarray(image).convert('HSV').split()
  h = h.point(lambda x: (x + step) % 256)
  return np.asarray(Image.merge('HSV', (h, s, v)).convert('RGB'))


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.0,
                 contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0) -> np.ndarray:
  """torchvision ColorJitter semantics, applied in a fixed order.

  Factors are drawn uniformly from [max(0, 1 - s), 1 + s] for brightness,
  contrast and saturation, and the hue shift from [-hue, hue] (hue <= 0.5).
  Brightness, contrast and saturation blend in float; hue works in 8-bit HSV.
  Strength 0 disables an op (and draws nothing).
  """
  if not (brightness or contrast or saturation or hue):
    return image
  x = image.astype(np.float32)
  if brightness:
    x = adjust_brightness(x, rng.uniform(max(0.0, 1 - brightness), 1 + brightness))
  if contrast:
    x = adjust_contrast(x, rng.uniform(max(0.0, 1 - contrast), 1 + contrast))
  if saturation:
    x = adjust_saturation(x, rng.uniform(max(0.0, 1 - saturation), 1 + saturation))
  out = np.clip(np.round(x), 0, 255).astype(np.uint8)
  if hue:
    if not 0 <= hue <= 0.5:
      raise ValueError(f'augment.hue must be in [0, 0.5], got {hue}')
    out = adjust_hue(out, rng.uniform(-hue, hue))
  return out


def normalize(images, mean: Sequence[float], std: Sequence[float]):
  """(x - mean) / std in float32, for NumPy or JAX arrays (also under jit).

  mean and std are per channel, in [0, 255] pixel units. NumPy constants
  combine with JAX arrays into JAX arrays, so this needs no jax import.
  """
  x = images.astype(np.float32)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _resize_size(data_config):
  size = tuple(data_config.get('resize', ()) or ())
  return (int(size[0]), int(size[1])) if size else None


class TrainTransform(grain.transforms.RandomMap):
  """resize? -> random scale -> pad/crop -> flips -> rotate (uniform, then from
  a set) -> colour jitter.

  Reads the config once into plain values so that it pickles cheaply into
  grain worker processes. Output: image uint8 (crop_h, crop_w, 3) and label
  (crop_h, crop_w); other keys pass through.
  """

  def __init__(self, config):
    d, a = config.data, config.augment
    self.resize = _resize_size(d)
    self.crop_size = (int(d.crop_size[0]), int(d.crop_size[1]))
    self.ignore_label = int(d.ignore_label)
    self.scale_range = (float(a.scale_range[0]), float(a.scale_range[1]))
    self.hflip = bool(a.hflip)
    self.vflip = bool(a.vflip)
    self.rotate_degrees = float(a.rotate_degrees)
    self.rotate_angles = tuple(float(v) for v in a.get('rotate_angles', ()))
    self.rotate_prob = float(a.get('rotate_prob', 0.5))
    self.jitter = dict(brightness=float(a.brightness), contrast=float(a.contrast),
                       saturation=float(a.saturation), hue=float(a.hue))

  def random_map(self, element, rng: np.random.Generator):
    image, label = element['image'], element['label']
    if self.resize:
      image, label = resize(image, label, self.resize)
    image, label = random_scale(image, label, rng, self.scale_range)
    image, label = random_crop(image, label, rng, self.crop_size, self.ignore_label)
    if self.hflip and rng.uniform() < 0.5:
      image, label = hflip(image, label)
    if self.vflip and rng.uniform() < 0.5:
      image, label = vflip(image, label)
    image, label = random_rotate(image, label, rng, self.rotate_degrees, self.ignore_label)
    image, label = random_rotate_from(image, label, rng, self.rotate_angles, self.rotate_prob,
                                      self.ignore_label)
    image = color_jitter(image, rng, **self.jitter)
    out = dict(element)
    out['image'] = np.ascontiguousarray(image)
    out['label'] = np.ascontiguousarray(label)
    return out


class EvalTransform(grain.transforms.Map):
  """resize if data.resize is set; nothing random. Other keys pass through."""

  def __init__(self, config):
    self.resize = _resize_size(config.data)

  def map(self, element):
    if not self.resize:
      return element
    out = dict(element)
    out['image'], out['label'] = resize(element['image'], element['label'], self.resize)
    return out
