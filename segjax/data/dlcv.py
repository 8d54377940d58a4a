r"""The DLCV satellite land-cover layout: `xxxx_sat.jpg` beside `xxxx_mask.png`
in one folder per split, masks colour-coded with seven colours.

  <root>/train/0000_sat.jpg  <root>/train/0000_mask.png  ...
  <root>/validation/0000_sat.jpg  <root>/validation/0000_mask.png  ...

The colours are the DeepGlobe land-cover palette the DLCV course's data uses
(the satellite write-up names the seven classes but not their colours):
six classes and 'unknown' (black), which is ignored in the loss and metrics.

The folder source pairs files through a list file, so this module writes one
per split (`<root>/<split>.txt`, '<image> <mask>' per line, paths relative
to root); `preset(config.data, root)` points a config at them:

  segjax prepare_dlcv --root=hw1_data/p2_data --splits=train,validation

`write_generated(root, split, n)` writes a small generated dataset in the same
layout (random class regions, colour-coded masks), for the pipeline's tests
and a first run without the data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = ('urban', 'agriculture', 'rangeland', 'forest', 'water', 'barren')
PALETTE = ((0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255),
           (255, 255, 255))
UNKNOWN_COLOR = (0, 0, 0)
IMAGE_SUFFIX, MASK_SUFFIX = '_sat.jpg', '_mask.png'
SPLITS = ('train', 'validation')


def pairs(root: str, split: str) -> list[tuple[str, str]]:
  """(image, mask) paths relative to root for `split`, sorted; every
  xxxx_sat.jpg needs its xxxx_mask.png and the other way round (ValueError
  naming the file)."""
  folder = Path(root) / split
  if not folder.is_dir():
    raise ValueError(f'{folder}: no such folder (expected <root>/{split}/ with '
                     f'xxxx{IMAGE_SUFFIX} and xxxx{MASK_SUFFIX})')
  names = {f.name for f in folder.iterdir() if f.is_file() and not f.name.startswith('.')}
  images = sorted(n[:-len(IMAGE_SUFFIX)] for n in names if n.endswith(IMAGE_SUFFIX))
  masks = sorted(n[:-len(MASK_SUFFIX)] for n in names if n.endswith(MASK_SUFFIX))
  for stem in images:
    if stem + MASK_SUFFIX not in names:
      raise ValueError(f'{folder / (stem + IMAGE_SUFFIX)}: no mask {stem + MASK_SUFFIX} '
                       'beside it')
  for stem in masks:
    if stem + IMAGE_SUFFIX not in names:
      raise ValueError(f'{folder / (stem + MASK_SUFFIX)}: no image {stem + IMAGE_SUFFIX} '
                       'beside it')
  if not images:
    raise ValueError(f'{folder}: no xxxx{IMAGE_SUFFIX} images')
  return [(f'{split}/{s}{IMAGE_SUFFIX}', f'{split}/{s}{MASK_SUFFIX}') for s in images]


def write_list_files(root: str, splits=SPLITS) -> list[str]:
  """Writes <root>/<split>.txt for each split; returns their paths."""
  written = []
  for split in splits:
    path = os.path.join(root, f'{split}.txt')
    lines = [f'{image} {mask}' for image, mask in pairs(root, split)]
    with open(path, 'w') as f:
      f.write('\n'.join(lines) + '\n')
    written.append(path)
  return written


def preset(data_config, root: str = '') -> None:
  """Fills a config's data block for the DLCV layout under `root` (list files
  from write_list_files; splits 'train' and 'validation')."""
  d = data_config
  d.name = 'folder'
  d.root = root
  d.list_file = '{split}.txt'
  d.train_split, d.val_split = 'train', 'validation'
  d.mask_format = 'palette'
  d.num_classes = len(CLASS_NAMES)
  d.class_names = CLASS_NAMES
  d.palette = PALETTE
  d.void_color = UNKNOWN_COLOR
  d.ignore_label = 255
  d.label_map = ''


def write_generated(root: str, split: str, n: int, size: int = 64, seed: int = 0) -> None:
  """n generated image/mask pairs in <root>/<split>/: each mask three random
  rectangles of random classes and one of 'unknown' on a random background, the
  image a class-dependent colour plus noise, saved as JPEG like the data."""
  rng = np.random.default_rng([seed, sum(map(ord, split))])
  folder = Path(root) / split
  folder.mkdir(parents=True, exist_ok=True)
  colours = np.asarray(PALETTE + (UNKNOWN_COLOR,), np.uint8)
  tints = rng.integers(30, 226, (len(colours), 3))
  for i in range(n):
    index = np.full((size, size), rng.integers(len(PALETTE)), np.int64)
    for k in range(4):
      y, x = rng.integers(0, size - 8, 2)
      h, w = rng.integers(8, size // 2, 2)
      # The last region is always 'unknown', like the untagged areas of the data.
      index[y:y + h, x:x + w] = rng.integers(len(PALETTE)) if k < 3 else len(PALETTE)
    image = np.clip(tints[index] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(folder / f'{i:04d}{IMAGE_SUFFIX}', quality=95)
    Image.fromarray(colours[index]).save(folder / f'{i:04d}{MASK_SUFFIX}')
