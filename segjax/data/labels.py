"""The one label specification shared by sources, losses, metrics and images.

A dataset's raw mask values are turned into training labels in exactly one
place (`LabelMapper`): raw value -> class index in [0, num_classes) or the
ignore label. Anything else is an error that names the file and the values.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  """Classes of a dataset: how many, which label is ignored, names, colours."""
  num_classes: int
  ignore_label: int = 255
  class_names: tuple[str, ...] = ()
  palette: tuple[tuple[int, int, int], ...] = ()

  def __post_init__(self):
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f'num_classes must be a positive int, got {self.num_classes!r}')
    if 0 <= self.ignore_label < self.num_classes:
      raise ValueError(
          f'ignore_label={self.ignore_label} is a valid class index for '
          f'num_classes={self.num_classes}; choose a value outside '
          f'[0, {self.num_classes}) (255 by default)')
    if self.class_names and len(self.class_names) != self.num_classes:
      raise ValueError(f'class_names has {len(self.class_names)} names but '
                       f'num_classes={self.num_classes}')
    if len(set(self.class_names)) != len(self.class_names):
      raise ValueError(f'class_names are not unique: {self.class_names}')
    if self.palette:
      if len(self.palette) != self.num_classes:
        raise ValueError(f'palette has {len(self.palette)} colours but '
                         f'num_classes={self.num_classes}')
      for c in self.palette:
        if len(c) != 3 or not all(0 <= int(v) <= 255 for v in c):
          raise ValueError(f'palette colour {c} is not an RGB triple in [0, 255]')

  @property
  def names(self) -> tuple[str, ...]:
    return self.class_names or tuple(f'class_{i}' for i in range(self.num_classes))

  @property
  def colors(self) -> np.ndarray:
    """(num_classes + 1, 3) uint8; the last row colours ignored pixels (black)."""
    if self.palette:
      pal = np.asarray(self.palette, np.uint8)
    else:
      pal = default_palette(self.num_classes)
    return np.concatenate([pal, np.zeros((1, 3), np.uint8)], axis=0)

  def colorize(self, labels: np.ndarray) -> np.ndarray:
    """Class-index map (H, W) -> RGB uint8 (H, W, 3); ignored pixels black."""
    labels = np.asarray(labels)
    idx = np.where((labels >= 0) & (labels < self.num_classes), labels,
                   self.num_classes)
    return self.colors[idx]


def default_palette(n: int) -> np.ndarray:
  """The PASCAL VOC colour map (bit-interleaved), distinct for any n."""
  pal = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    pal[i] = (r, g, b)
  return pal


def parse_label_map(text: str) -> dict[int, int]:
  """'11:255,0:0' -> {11: 255, 0: 0}. Empty string -> identity (no mapping)."""
  mapping: dict[int, int] = {}
  text = (text or '').strip()
  if not text:
    return mapping
  for item in text.split(','):
    item = item.strip()
    parts = item.split(':')
    if len(parts) != 2:
      raise ValueError(f"data.label_map entry {item!r} is not of the form 'raw:label'")
    try:
      src, dst = int(parts[0]), int(parts[1])
    except ValueError:
      raise ValueError(f"data.label_map entry {item!r} is not of the form 'raw:label' "
                       'with integers') from None
    if src in mapping:
      raise ValueError(f'data.label_map maps raw value {src} twice')
    mapping[src] = dst
  return mapping


class LabelMapper:
  """Raw mask values -> labels in [0, num_classes) or ignore_label, validated.

  With an empty mapping raw values are used as they are. With a mapping, only
  listed raw values are remapped; unlisted values pass through and must
  themselves be valid labels. A raw value mapped to -1 ('11:-1') is declared
  invalid: a mask holding it is an error like any other bad value (COCO-Stuff's
  unused ids, which would otherwise pass through as classes). Either way the
  result is checked.
  """

  def __init__(self, spec: LabelSpec, label_map: dict[int, int] | str = ''):
    self.spec = spec
    if isinstance(label_map, str):
      label_map = parse_label_map(label_map)
    for src, dst in label_map.items():
      if not (0 <= dst < spec.num_classes or dst == spec.ignore_label or dst == -1):
        raise ValueError(
            f'data.label_map maps {src} -> {dst}, which is neither a class in '
            f'[0, {spec.num_classes}) nor ignore_label={spec.ignore_label} (nor -1, '
            'an invalid raw value)')
    self.label_map = dict(label_map)
    self._lut = None
    if self.label_map:
      lut = np.arange(65536, dtype=np.int32)
      for src, dst in self.label_map.items():
        if not 0 <= src < 65536:
          raise ValueError(f'data.label_map raw value {src} is outside [0, 65535]')
        lut[src] = dst
      self._lut = lut

  def __call__(self, raw: np.ndarray, *, name: str = '<mask>') -> np.ndarray:
    """Maps and validates; returns uint8 (or int32 when ignore_label > 255)."""
    raw = np.asarray(raw)
    if raw.ndim != 2:
      raise ValueError(f'{name}: mask must be 2-D (H, W) of class indices, got shape '
                       f'{raw.shape}')
    if raw.dtype.kind not in 'iu':
      raise ValueError(f'{name}: mask dtype {raw.dtype} is not an integer type')
    if raw.size and (raw.min() < 0 or raw.max() > 65535):
      raise ValueError(f'{name}: mask values outside [0, 65535]')
    labels = self._lut[raw.astype(np.int64)] if self._lut is not None else raw.astype(np.int32)
    ok = ((labels >= 0) & (labels < self.spec.num_classes)) | (labels == self.spec.ignore_label)
    if not ok.all():
      bad = np.unique(labels[~ok])
      raw_bad = np.unique(raw[~ok])
      invalid = ' (-1: a value data.label_map declares invalid)' if (bad == -1).any() else ''
      raise ValueError(
          f'{name}: mask values {raw_bad[:10].tolist()} (mapped to {bad[:10].tolist()}{invalid}) '
          f'are outside [0, {self.spec.num_classes}) and are not ignore_label='
          f'{self.spec.ignore_label}; fix the mask or set data.label_map '
          "(e.g. '11:255' to ignore value 11)")
    out_dtype = np.uint8 if self.spec.ignore_label <= 255 else np.int32
    return labels.astype(out_dtype)


def spec_from_config(data_config) -> LabelSpec:
  """LabelSpec from a config's `data` block."""
  return LabelSpec(
      num_classes=int(data_config.num_classes),
      ignore_label=int(data_config.ignore_label),
      class_names=tuple(data_config.class_names or ()),
      palette=tuple(tuple(int(v) for v in c) for c in (data_config.palette or ())),
  )


def rgb_to_index(rgb: np.ndarray, palette: Sequence[Sequence[int]], ignore_label: int,
                 *, name: str = '<mask>', void_color=None) -> np.ndarray:
  """Colour-coded mask (H, W, 3) -> class indices using the palette.

  Pixels with `void_color` become ignore_label; any other colour not in the
  palette is an error naming the file and the colour.
  """
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ValueError(f'{name}: colour mask must be (H, W, 3), got {rgb.shape}')
  code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
  out = np.full(code.shape, -1, np.int32)
  for i, c in enumerate(palette):
    out[code == ((int(c[0]) << 16) | (int(c[1]) << 8) | int(c[2]))] = i
  if void_color is not None:
    v = (int(void_color[0]) << 16) | (int(void_color[1]) << 8) | int(void_color[2])
    out[code == v] = ignore_label
  if (out < 0).any():
    bad = np.unique(code[out < 0])[:5]
    colors = [((b >> 16) & 255, (b >> 8) & 255, b & 255) for b in bad.tolist()]
    raise ValueError(f'{name}: colours {colors} are not in the palette')
  return out.astype(np.uint8 if ignore_label <= 255 else np.int32)
