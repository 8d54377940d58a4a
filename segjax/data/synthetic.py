"""Procedural shapes: a small, learnable segmentation dataset with no download.

Class 0 is background; class k >= 1 is a shape (disc, square, triangle, ring,
cross, ellipse, star; cycled when there are more classes) filled with a
class-specific texture. Colours come from overlapping per-class hue ranges, so
a model has to use shape and texture, not colour alone. Every example is a pure
function of (split, seed, index).
"""

from __future__ import annotations

import colorsys
import zlib

import numpy as np
from PIL import Image

SHAPES = ('disc', 'square', 'triangle', 'ring', 'cross', 'ellipse', 'star')
TEXTURES = ('stripes', 'checker', 'dots', 'smooth')


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
  """Inside-test in object coordinates (u, v) (centred, rotated).

  Sizes are set so every shape has the area of a disc of radius r.
  """
  d = np.hypot(u, v)
  if shape == 'disc':
    return d < r
  if shape == 'square':
    return np.maximum(np.abs(u), np.abs(v)) < 0.886 * r
  if shape == 'triangle':
    # Equilateral: three half-planes at 120 degrees around the inradius.
    inside = np.ones(u.shape, bool)
    for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
      inside &= u * np.cos(a) + v * np.sin(a) < 0.778 * r
    return inside
  if shape == 'ring':
    outer = 1.197 * r
    return (d < outer) & (d > 0.55 * outer)
  if shape == 'cross':
    half = 1.194 * r
    arm = 0.33 * half
    return (((np.abs(u) < arm) & (np.abs(v) < half)) |
            ((np.abs(v) < arm) & (np.abs(u) < half)))
  if shape == 'ellipse':
    a = 1.414 * r
    return (u / a) ** 2 + (v / (0.5 * a)) ** 2 < 1.0
  if shape == 'star':
    phi = np.arctan2(v, u)
    return d < 1.367 * r * (0.7 + 0.3 * np.cos(5 * phi))
  raise ValueError(f'unknown shape {shape!r}')


def _texture(k: int, yy: np.ndarray, xx: np.ndarray, scale: float,
             rng: np.random.Generator) -> np.ndarray:
  """Class-specific pattern in [0, 1]; parameters depend on the class k."""
  kind = TEXTURES[(k - 1) % len(TEXTURES)]
  cycle = (k - 1) // len(TEXTURES)  # Distinguishes classes sharing a texture.
  oy, ox = rng.uniform(0, 16, size=2)  # Random phase, same pattern.
  y, x = yy + oy, xx + ox
  if kind == 'stripes':
    theta = np.deg2rad((45 + 60 * cycle) % 180)
    period = (5 + 2 * (cycle % 3)) * scale
    return 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period)
  if kind == 'checker':
    cell = (3 + (cycle % 3)) * scale
    return ((np.floor(x / cell) + np.floor(y / cell)) % 2).astype(np.float32)
  if kind == 'dots':
    period = (6 + 2 * (cycle % 3)) * scale
    dy = (y % period) - period / 2
    dx = (x % period) - period / 2
    return (np.hypot(dy, dx) < 0.3 * period).astype(np.float32)
  # Smooth: a gentle linear ramp in a random direction.
  a = rng.uniform(0, 2 * np.pi)
  ramp = xx * np.cos(a) + yy * np.sin(a)
  return (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)


def _hsv(h, s, v) -> np.ndarray:
  return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


class SyntheticShapes:
  """Random-access source of procedural shape images.

  Records: {'image': uint8 (H, W, 3), 'label': uint8 (H, W) (int32 if
  ignore_label > 255), 'name': str}.
  """

  def __init__(self, num_examples: int, size: tuple[int, int] = (64, 64),
               num_classes: int = 4, split: str = 'train', seed: int = 0,
               ignore_label: int = 255, ignore_boundary: bool = False):
    if num_examples < 0:
      raise ValueError(f'num_examples must be >= 0, got {num_examples}')
    if num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {num_classes}')
    self.num_examples = int(num_examples)
    self.size = (int(size[0]), int(size[1]))
    self.num_classes = int(num_classes)
    self.split = split
    self.seed = int(seed)
    self.ignore_label = int(ignore_label)
    self.ignore_boundary = bool(ignore_boundary)
    # crc32 rather than hash(): stable across processes and Python runs.
    self._split_key = zlib.crc32(split.encode('utf-8'))

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    return (f'SyntheticShapes(split={self.split!r}, n={self.num_examples}, '
            f'size={self.size}, num_classes={self.num_classes})')

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not -self.num_examples <= index < self.num_examples:
      raise IndexError(f'index {index} out of range for {self!r}')
    index %= self.num_examples
    rng = np.random.default_rng(
        np.random.SeedSequence([self.seed, self._split_key, index]))
    image, label = self._render(rng)
    return {'image': image, 'label': label, 'name': f'{self.split}_{index:06d}'}

  def _render(self, rng: np.random.Generator):
    h, w = self.size
    scale = max(1.0, min(h, w) / 64)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Background: smooth random colour field from a coarse grid, plus clutter.
    coarse = np.stack([_hsv(rng.uniform(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.9))
                       for _ in range(16)]).reshape(4, 4, 3)
    field = Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BILINEAR)
    image = np.asarray(field, np.float32).copy()
    for _ in range(rng.integers(2, 5)):
      color = image[rng.integers(h), rng.integers(w)] * rng.uniform(0.7, 1.3)
      if rng.uniform() < 0.5:  # Thin line.
        a, off = rng.uniform(0, np.pi), rng.uniform(-0.5, 0.5) * min(h, w)
        dist = np.abs((xx - w / 2) * np.sin(a) - (yy - h / 2) * np.cos(a) - off)
        m = dist < 0.75 * scale
      else:  # Small blob, much smaller than any object.
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        m = np.hypot(yy - cy, xx - cx) < rng.uniform(1.5, 3.5) * scale
      image[m] = color

    label = np.zeros((h, w), np.int32)
    depth = np.full((h, w), -1, np.int32)  # Which object is visible (-1: none).
    if self.num_classes > 1:
      hue_step = 1.0 / (self.num_classes - 1)
      for j in range(rng.integers(1, 5)):
        k = int(rng.integers(1, self.num_classes))
        shape = SHAPES[(k - 1) % len(SHAPES)]
        frac = rng.uniform(0.1, 0.3)  # Of the image area, before occlusion.
        r = np.sqrt(frac * h * w / np.pi)
        # Mostly inside the frame; large objects may be cut by the border.
        cy = rng.uniform(min(0.6 * r, h / 2), max(h - 0.6 * r, h / 2))
        cx = rng.uniform(min(0.6 * r, w / 2), max(w - 0.6 * r, w / 2))
        a = rng.uniform(0, 2 * np.pi)
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        m = _shape_mask(shape, u, v, r)
        # Hue ranges of neighbouring classes overlap by design.
        hue = (k - 1) * hue_step + rng.uniform(-0.6, 0.6) * max(hue_step, 0.25)
        c1 = _hsv(hue, rng.uniform(0.4, 1.0), rng.uniform(0.6, 1.0))
        c2 = c1 * rng.uniform(0.25, 0.55)
        t = _texture(k, yy, xx, scale, rng)[..., None]
        fill = c1 * (1 - t) + c2 * t
        image[m] = fill[m]
        label[m] = k
        depth[m] = j

    if self.ignore_boundary:
      # 1-px band on the front side of every boundary.
      pad_l = np.pad(label, 1, mode='edge')
      pad_d = np.pad(depth, 1, mode='edge')
      band = np.zeros((h, w), bool)
      for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        nl = pad_l[dy:dy + h, dx:dx + w]
        nd = pad_d[dy:dy + h, dx:dx + w]
        band |= (nl != label) & (depth > nd)
      label[band] = self.ignore_label

    image += rng.normal(0, 4.0, image.shape).astype(np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    out_dtype = np.uint8 if self.ignore_label <= 255 else np.int32
    return image, label.astype(out_dtype)
