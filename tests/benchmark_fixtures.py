"""Tiny copies of the benchmarks' official on-disk layouts, for the tests.

Each writer builds one dataset's folder tree under `root` (file names, folder
structure and mask encodings as the official archives or converters leave
them) with 8x12 images, and returns {split: [(image path, mask path, raw
mask)]} relative to the dataset root, the raw mask being the values stored in
the file. The mask values are given by the caller's `values` (each split's
masks take them in order, wrapping round), so a test chooses which raw values
appear and writes their expected classes out itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 8, 12


def _image(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _masks(values, n: int, offset: int = 0) -> list[np.ndarray]:
  """n (H, W) masks holding `values` in order (wrapping round), from `offset`."""
  values = np.asarray(values)
  flat = values[(np.arange(n * H * W) + offset) % len(values)]
  return [flat[i * H * W:(i + 1) * H * W].reshape(H, W) for i in range(n)]


def _save(root: Path, rel: str, array: np.ndarray, *, palette=None, jpeg=False) -> None:
  path = root / rel
  path.parent.mkdir(parents=True, exist_ok=True)
  if array.ndim == 3:
    Image.fromarray(array).save(path, quality=95) if jpeg else Image.fromarray(array).save(path)
    return
  img = Image.fromarray(array.astype(np.uint8), mode='L')
  if palette is not None:  # A palette PNG: the pixel is the index, the palette colours it.
    img = Image.fromarray(array.astype(np.uint8), mode='P')
    img.putpalette([int(v) for c in palette for v in c] + [0] * (768 - 3 * len(palette)))
  img.save(path)


def _write_list(root: Path, rel: str, ids) -> None:
  (root / rel).parent.mkdir(parents=True, exist_ok=True)
  (root / rel).write_text(''.join(f'{i}\n' for i in ids))


def cityscapes(root, values, *, train_ids: dict[str, np.ndarray] | None = None):
  """leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png and
  gtFine/<split>/<city>/<stem>_gtFine_{labelIds,color,instanceIds}.png (+ polygons
  JSON). `train_ids`: {stem: array} also written as <stem>_gtFine_labelTrainIds.png."""
  root = Path(root)
  frames = {'train': [('aachen', '000000', '000019'), ('aachen', '000001', '000019'),
                      ('bochum', '000000', '000313')],
            'val': [('frankfurt', '000000', '000294')]}
  out = {}
  for split, items in frames.items():
    out[split] = []
    for k, ((city, seq, frame), raw) in enumerate(zip(items, _masks(values, len(items),
                                                                      7 * (split == 'val')))):
      stem = f'{city}_{seq}_{frame}'
      image = f'leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png'
      mask = f'gtFine/{split}/{city}/{stem}_gtFine_labelIds.png'
      _save(root, image, _image(k + 10 * (split == 'val')))
      _save(root, mask, raw)
      # The other gtFine files, which are not label maps of the 34 ids.
      _save(root, f'gtFine/{split}/{city}/{stem}_gtFine_color.png',
            np.zeros((H, W, 3), np.uint8))
      _save(root, f'gtFine/{split}/{city}/{stem}_gtFine_instanceIds.png',
            raw.astype(np.uint8))
      (root / f'gtFine/{split}/{city}/{stem}_gtFine_polygons.json').write_text('{}')
      if train_ids and stem in train_ids:
        mask = f'gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png'
        raw = train_ids[stem]
        _save(root, mask, raw)
      out[split].append((image, mask, raw))
  return out


def ade20k(root, values):
  """ADEChallengeData2016/: images/{training,validation}/ADE_*_0000000k.jpg,
  annotations/<split>/ADE_*_0000000k.png (8-bit), objectInfo150.txt."""
  root = Path(root)
  counts = {'training': ('train', 3), 'validation': ('val', 1)}
  out = {}
  for split, (tag, n) in counts.items():
    out[split] = []
    for k, raw in enumerate(_masks(values, n, 5 * (split == 'validation')), 1):
      image = f'images/{split}/ADE_{tag}_{k:08d}.jpg'
      mask = f'annotations/{split}/ADE_{tag}_{k:08d}.png'
      _save(root, image, _image(k), jpeg=True)
      _save(root, mask, raw)
      out[split].append((image, mask, raw))
  (root / 'objectInfo150.txt').write_text('Idx\tRatio\tTrain\tVal\tName\n')
  return out


def voc(root, values, *, aug_values=None, palette):
  """VOCdevkit/VOC2012/: JPEGImages/<id>.jpg (also images without segmentation),
  SegmentationClass/<id>.png as palette PNGs, ImageSets/Segmentation/
  {train,val,trainval}.txt. With `aug_values`, the SBD-augmented set too:
  SegmentationClassAug/<id>.png (8-bit gray) for the SBD ids and, as in the
  widely shared copy, for the VOC train ids (there written with other values, so
  a test sees which folder was read), and ImageSets/Segmentation/train_aug.txt."""
  root = Path(root)
  ids = {'train': ['2007_000032', '2007_000039'], 'val': ['2007_000033']}
  out = {}
  for split, names in ids.items():
    out[split] = []
    for k, (name, raw) in enumerate(zip(names, _masks(values, len(names),
                                                      3 * (split == 'val')))):
      image, mask = f'JPEGImages/{name}.jpg', f'SegmentationClass/{name}.png'
      _save(root, image, _image(k), jpeg=True)
      _save(root, mask, raw, palette=palette)
      out[split].append((image, mask, raw))
    _write_list(root, f'ImageSets/Segmentation/{split}.txt', names)
  _write_list(root, 'ImageSets/Segmentation/trainval.txt', ids['train'] + ids['val'])
  _save(root, 'JPEGImages/2007_000027.jpg', _image(99), jpeg=True)  # Detection only.
  (root / 'SegmentationObject').mkdir()
  if aug_values is not None:
    sbd = ['2008_000002', '2008_000003']
    out['train_aug'] = list(out['train'])
    for k, (name, raw) in enumerate(zip(sbd, _masks(aug_values, len(sbd)))):
      image, mask = f'JPEGImages/{name}.jpg', f'SegmentationClassAug/{name}.png'
      _save(root, image, _image(20 + k), jpeg=True)
      _save(root, mask, raw)
      out['train_aug'].append((image, mask, raw))
    for name in ids['train']:  # Not read: SegmentationClass comes first.
      _save(root, f'SegmentationClassAug/{name}.png', np.zeros((H, W), np.uint8))
    _write_list(root, 'ImageSets/Segmentation/train_aug.txt', ids['train'] + sbd)
  return out


def pascal_context(root, values):
  """VOCdevkit/VOC2010/ as mmsegmentation's converter leaves it: JPEGImages/<id>.jpg,
  SegmentationClassContext/<id>.png (0 background, 1..59),
  ImageSets/SegmentationContext/{train,val}.txt."""
  root = Path(root)
  ids = {'train': ['2008_000002', '2008_000003'], 'val': ['2008_000008']}
  out = {}
  for split, names in ids.items():
    out[split] = []
    for k, (name, raw) in enumerate(zip(names, _masks(values, len(names),
                                                      4 * (split == 'val')))):
      image, mask = f'JPEGImages/{name}.jpg', f'SegmentationClassContext/{name}.png'
      _save(root, image, _image(k), jpeg=True)
      _save(root, mask, raw)
      out[split].append((image, mask, raw))
    _write_list(root, f'ImageSets/SegmentationContext/{split}.txt', names)
  return out


def coco_stuff(root, values, *, train_ids: dict[str, np.ndarray] | None = None):
  """coco_stuff164k/: images/{train2017,val2017}/<12 digits>.jpg and
  annotations/<split>/<12 digits>.png (stuffthingmaps: COCO id - 1, 255
  unlabeled). `train_ids`: {name: array} also written as <name>_labelTrainIds.png
  (mmsegmentation's converter output)."""
  root = Path(root)
  ids = {'train2017': ['000000000009', '000000000025'], 'val2017': ['000000000139']}
  out = {}
  for split, names in ids.items():
    out[split] = []
    for k, (name, raw) in enumerate(zip(names, _masks(values, len(names),
                                                      11 * (split == 'val2017')))):
      image, mask = f'images/{split}/{name}.jpg', f'annotations/{split}/{name}.png'
      _save(root, image, _image(k), jpeg=True)
      _save(root, mask, raw)
      if train_ids and name in train_ids:
        mask = f'annotations/{split}/{name}_labelTrainIds.png'
        raw = train_ids[name]
        _save(root, mask, raw)
      out[split].append((image, mask, raw))
  return out


def read_raw(root, rel: str) -> np.ndarray:
  """The stored values of a mask file (palette PNGs: the indices)."""
  return np.asarray(Image.open(os.path.join(root, rel)))
