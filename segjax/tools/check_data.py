r"""Scan a dataset before training: read every example, report its statistics and problems.

  segjax check_data --config=configs/deeplabv3plus.py:dataset=camvid,runlocal \
      --config.data.root=../shared/data/camvid [--split=train,val] [--json=out.json] \
      [--max_examples=N]

Every example of each split (default: data.train_split and data.val_split) is
read the way training reads it (`segjax.data.sources`: the same decoding rule
and `LabelMapper` with data.label_map), and the report gives per split:
  * examples read OK / with problems;
  * image sizes (H x W) with counts, and the range of heights and widths;
  * image modes (RGB, L, RGBA, P, I;16, ...) with the conversion applied to
    each (and, for folders, the mask modes and how they are read);
  * per class: pixels, fraction of the valid (not ignored) pixels, number of
    images it appears in; ignored pixels and their fraction of all pixels;
  * every problem, each naming its file: unreadable or truncated images and
    masks, images without a mask, image/mask size mismatches, mask values that
    are neither a class nor the ignore label, RGB masks with unequal channels
    under mask_format='index', colours not in the palette, bad list-file lines
    (absolute, escaping data.root, missing files, malformed: named by line
    number, the line is not echoed), images and masks whose real path
    (symlinks resolved) leads outside data.root, folders or a list file
    outside data.root (then the split is not read), empty splits.
Problems do not stop the scan. Sizes and modes count every image that could be
opened; label statistics count the examples read OK. Images without a mask and
bad list-file lines are skipped before a split slice ('train[:25]') applies,
so with such problems a slice may select other examples than training would
(training stops at the first of them anyway).

Exit status: 0 without problems, 1 with any (the last line counts them).
`--json=PATH` also writes the whole report (`scan`'s dict) as JSON.
"""

from __future__ import annotations

import collections
import json
import os
import sys

from absl import flags
from ml_collections import config_flags
import numpy as np
import tqdm

from segjax import cli
from segjax import config as config_lib
from segjax.data import labels as labels_lib
from segjax.data import sources

# What the sources raise for a bad example or split; anything else is a bug and propagates.
_ERRORS = (sources.DataError, ValueError, OSError)
_TOP_SIZES = 5


def image_rule(mode: str) -> str:
  """How `sources.decode_image` turns a PIL image of `mode` into uint8 RGB."""
  if mode == 'RGB':
    return 'as is'
  if mode == 'L':
    return 'gray repeated to 3 channels'
  if mode == '1':
    return '0/1 -> 0/255, repeated to 3 channels'
  if mode in ('LA', 'La'):
    return 'alpha dropped, gray repeated to 3 channels'
  if mode.startswith('I'):
    return 'clipped to [0, 65535], divided by 257, repeated to 3 channels'
  if mode == 'F':
    return 'x255 if max <= 1, clipped to [0, 255], repeated to 3 channels'
  if mode == 'P':
    return 'through its palette to RGB'
  if mode == 'PA':
    return 'through its palette to RGB, alpha dropped'
  if mode in ('RGBA', 'RGBa'):
    return 'alpha dropped'
  if mode == 'RGBX':
    return 'padding channel dropped'
  return 'converted to RGB by PIL'


def mask_rule(mode: str, mask_format: str) -> str:
  """How `sources.decode_mask` reads a PIL mask of `mode` (before data.label_map)."""
  if mask_format == 'palette':
    return 'colours mapped through data.palette (data.void_color -> ignore)'
  if mode == 'P':
    return 'palette indices (not colours)'
  if mode == 'L':
    return 'raw values'
  if mode == '1':
    return '0/1'
  if mode.startswith('I'):
    return 'raw integers'
  if mode in ('LA', 'La', 'PA'):
    return 'first channel, alpha dropped'
  if mode in ('RGB', 'RGBA', 'RGBX'):
    return 'raw values if R = G = B (else a problem)'
  return 'not supported (a problem)'


def _array_mode(image: np.ndarray) -> str:
  """A PIL-like mode name for a decoded image array."""
  if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1):
    return 'L'
  if image.ndim == 3 and image.shape[-1] in (3, 4) and image.dtype == np.uint8:
    return 'RGB' if image.shape[-1] == 3 else 'RGBA'
  return f'{image.dtype}{list(image.shape[2:])}'


class _Stats:
  """Accumulates one split's statistics and problems."""

  def __init__(self, spec: labels_lib.LabelSpec):
    self.spec = spec
    self.sizes = collections.Counter()
    self.modes = collections.Counter()
    self.mask_modes = collections.Counter()
    self.class_pixels = np.zeros(spec.num_classes, np.int64)
    self.class_images = np.zeros(spec.num_classes, np.int64)
    self.ignore_pixels = 0
    self.ignore_images = 0
    self.total_pixels = 0
    self.problems = []

  def problem(self, file, message) -> None:
    self.problems.append({'file': str(file), 'problem': str(message)})

  def add_image(self, mode: str, hw) -> None:
    self.modes[mode] += 1
    self.sizes[(int(hw[0]), int(hw[1]))] += 1

  def check_label(self, label: np.ndarray) -> str | None:
    """None if `label` holds only classes and the ignore label, else what is wrong."""
    values = np.asarray(label).astype(np.int64)
    n, ignore = self.spec.num_classes, self.spec.ignore_label
    bad = ~(((values >= 0) & (values < n)) | (values == ignore))
    if bad.any():
      return (f'label values {np.unique(values[bad])[:10].tolist()} are outside [0, {n}) '
              f'and not ignore_label={ignore}')
    return None

  def add_label(self, label: np.ndarray) -> None:
    """Adds a checked label map (values in [0, num_classes) or ignore_label)."""
    values = np.asarray(label).astype(np.int64).ravel()
    n = self.spec.num_classes
    valid = (values >= 0) & (values < n)
    hist = np.bincount(values[valid], minlength=n)
    ignored = int(values.size - hist.sum())
    self.class_pixels += hist
    self.class_images += hist > 0
    self.ignore_pixels += ignored
    self.ignore_images += int(ignored > 0)
    self.total_pixels += int(values.size)


def _scan_folder_pair(source: sources.FolderSource, image_path, mask_path,
                      stats: _Stats) -> bool:
  """Reads one image/mask pair as FolderSource does, recording modes; True if OK."""
  img = mask = None
  try:
    img = sources._open(image_path)  # pylint: disable=protected-access
  except _ERRORS as e:
    stats.problem(image_path, e)
  try:
    mask = sources._open(mask_path)  # pylint: disable=protected-access
  except _ERRORS as e:
    stats.problem(mask_path, e)
  if img is not None:
    try:
      image = sources.decode_image(img)
    except _ERRORS as e:
      stats.problem(image_path, f'{image_path}: cannot convert mode {img.mode!r} to RGB '
                    f'({type(e).__name__}: {e})')
      img = None
    else:
      stats.add_image(img.mode, image.shape[:2])
  if mask is not None:
    stats.mask_modes[mask.mode] += 1
  if img is None or mask is None:
    return False
  if img.size != mask.size:  # The same check and message as FolderSource.__getitem__.
    stats.problem(image_path, f'size mismatch: image {str(image_path)!r} is {img.size[0]}x'
                  f'{img.size[1]} but mask {str(mask_path)!r} is {mask.size[0]}x'
                  f'{mask.size[1]} (width x height)')
    return False
  spec = source.mapper.spec
  try:
    raw = sources.decode_mask(mask, name=str(mask_path), mask_format=source.mask_format,
                              palette=spec.palette, ignore_label=spec.ignore_label,
                              void_color=source.void_color)
    label = source.mapper_for(mask_path)(raw, name=str(mask_path))
  except _ERRORS as e:
    stats.problem(mask_path, e)
    return False
  stats.add_label(label)
  return True


def _scan_record(source, index: int, where: str, stats: _Stats) -> bool:
  """Reads source[index] (synthetic, TFDS, ...); True if OK."""
  try:
    record = source[index]
  except _ERRORS as e:
    stats.problem(where, e)
    return False
  name = str(record.get('name', where))
  image, label = np.asarray(record['image']), np.asarray(record['label'])
  stats.add_image(_array_mode(image), image.shape[:2])
  if label.shape != image.shape[:2]:
    stats.problem(name, f'{name}: image is {image.shape[:2]} but label is {label.shape}')
    return False
  error = stats.check_label(label)
  if error:
    stats.problem(name, f'{name}: {error}')
    return False
  stats.add_label(label)
  return True


def scan_split(config, split: str, max_examples: int | None = None) -> dict:
  """Reads every example of `split` (the first `max_examples` if given); see module doc.

  Returns a JSON-serialisable dict: split, num_available (examples in the
  split), num_examples (read), num_ok, num_failed, problems [{file, problem}],
  sizes [{height, width, count}], height_range, width_range, modes, mode_rules,
  mask_modes, mask_mode_rules, class_names, class_pixels, class_fractions,
  class_images (dicts keyed by class name), ignore_label, ignore_pixels,
  ignore_fraction, ignore_images, valid_pixels, total_pixels.
  """
  data = config.data
  spec = labels_lib.spec_from_config(data)
  stats = _Stats(spec)
  listing = []  # (path, message) of images without masks and bad list-file lines.
  try:
    source = sources.make_source(data, split, problems=listing)
  except _ERRORS as e:
    source = None
    split_error = e
  for path, message in listing:
    stats.problem(path, message)
  num_available = num_ok = num_read = 0
  if source is None:
    stats.problem(data.root or data.name, split_error)
  else:
    num_available = len(source)
    num_read = num_available if max_examples is None else min(num_available, max_examples)
    if not num_available:
      stats.problem(data.root or data.name, f'split {split!r} has no examples ({source!r})')
    # A progress bar on stderr when it is a terminal (tqdm's disable=None).
    for i in tqdm.tqdm(range(num_read), desc=f'check {split}', unit='example', file=sys.stderr,
                       disable=None, leave=False):
      if isinstance(source, sources.FolderSource):
        ok = _scan_folder_pair(source, *source.pairs[i], stats)
      else:
        ok = _scan_record(source, i, f'{data.name} {split}[{i}]', stats)
      num_ok += int(ok)

  names = list(spec.names)
  valid = int(stats.class_pixels.sum())
  sizes = sorted(stats.sizes.items(), key=lambda kv: (-kv[1], kv[0]))
  folder = isinstance(source, sources.FolderSource)
  # Masks read in the alternative encoding (data.alt_mask_suffix, e.g. labelTrainIds).
  alt_masks = (sum(source.mapper_for(m) is not source.mapper for _, m in source.pairs[:num_read])
               if folder else 0)
  return {
      'split': split,
      'dataset': data.name,
      'source': repr(source) if source is not None else None,
      'num_available': num_available,
      'num_examples': num_read,
      'num_ok': num_ok,
      'num_failed': num_read - num_ok,
      'problems': stats.problems,
      'sizes': [{'height': h, 'width': w, 'count': c} for (h, w), c in sizes],
      'height_range': ([min(h for h, _ in stats.sizes), max(h for h, _ in stats.sizes)]
                       if stats.sizes else None),
      'width_range': ([min(w for _, w in stats.sizes), max(w for _, w in stats.sizes)]
                      if stats.sizes else None),
      'modes': dict(stats.modes.most_common()),
      'mode_rules': {m: (image_rule(m) if folder else f'decoded to RGB by the {data.name} '
                         'source') for m in stats.modes},
      'mask_modes': dict(stats.mask_modes.most_common()),
      'mask_mode_rules': {m: mask_rule(m, data.mask_format) for m in stats.mask_modes},
      'class_names': names,
      'class_pixels': {n: int(p) for n, p in zip(names, stats.class_pixels)},
      'class_fractions': {n: (int(p) / valid if valid else 0.0)
                          for n, p in zip(names, stats.class_pixels)},
      'class_images': {n: int(c) for n, c in zip(names, stats.class_images)},
      'ignore_label': spec.ignore_label,
      'ignore_pixels': stats.ignore_pixels,
      'ignore_fraction': (stats.ignore_pixels / stats.total_pixels if stats.total_pixels
                          else 0.0),
      'ignore_images': stats.ignore_images,
      'valid_pixels': valid,
      'total_pixels': stats.total_pixels,
      'alt_masks': alt_masks,
  }


def scan(config, splits, max_examples: int | None = None) -> dict:
  """`scan_split` for each of `splits` (duplicates once), with the dataset's description."""
  data = config.data
  reports = {}
  for split in splits:
    if split not in reports:
      reports[split] = scan_split(config, split, max_examples)
  return {
      'dataset': data.name,
      'root': os.path.abspath(os.path.expanduser(data.root)) if data.root else '',
      'num_classes': int(data.num_classes),
      'ignore_label': int(data.ignore_label),
      'label_map': data.label_map,
      'alt_mask_suffix': data.alt_mask_suffix,
      'alt_label_map': data.alt_label_map,
      'mask_format': data.mask_format,
      'max_examples': max_examples,
      'splits': reports,
      'num_problems': sum(len(r['problems']) for r in reports.values()),
  }


def _table(headers, rows, right=()) -> list[str]:
  """A markdown table; columns whose index is in `right` are right-aligned."""
  cells = [list(headers)] + [[str(c) for c in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

  def line(row):
    return '| ' + ' | '.join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths))) + ' |'

  rule = '|' + '|'.join('-' * (w + 1) + ':' if i in right else '-' * (w + 2)
                        for i, w in enumerate(widths)) + '|'
  return [line(cells[0]), rule] + [line(r) for r in cells[1:]]


def _pct(x: float) -> str:
  return f'{100 * x:.2f}%'


def _format_split(r: dict, mask_format: str) -> list[str]:
  read = (f'{r["num_examples"]} examples read' if r['num_examples'] == r['num_available'] else
          f'first {r["num_examples"]} of {r["num_available"]} examples read')
  lines = [f'## {r["split"]}: {read}, {r["num_ok"]} OK, {r["num_failed"]} with problems', '']
  if r['sizes']:
    sizes = r['sizes']
    (h0, h1), (w0, w1) = r['height_range'], r['width_range']
    lines.append(f'Image sizes (H x W): {len(sizes)} distinct; H {h0}..{h1}, W {w0}..{w1}')
    rows = [(f'{s["height"]} x {s["width"]}', s['count']) for s in sizes[:_TOP_SIZES]]
    if len(sizes) > _TOP_SIZES:
      rest = sizes[_TOP_SIZES:]
      rows.append((f'({len(rest)} more sizes)', sum(s['count'] for s in rest)))
    lines += _table(('size', 'images'), rows, right=(1,)) + ['']
    lines.append('Image modes (each converted to uint8 RGB as the sources do):')
    lines += _table(('mode', 'images', 'conversion'),
                    [(m, c, r['mode_rules'][m]) for m, c in r['modes'].items()],
                    right=(1,)) + ['']
  if r.get('alt_masks'):
    lines.append(f'{r["alt_masks"]} of the {r["num_examples"]} masks are in the alternative '
                 'encoding (data.alt_mask_suffix), read with data.alt_label_map')
    lines.append('')
  if r['mask_modes']:
    lines.append(f"Mask modes (mask_format='{mask_format}'):")
    lines += _table(('mode', 'masks', 'read as'),
                    [(m, c, r['mask_mode_rules'][m]) for m, c in r['mask_modes'].items()],
                    right=(1,)) + ['']
  if r['total_pixels']:
    lines.append(f'Labels of the {r["num_ok"]} examples read OK: {r["total_pixels"]:,} pixels, '
                 f'{r["valid_pixels"]:,} valid, {r["ignore_pixels"]:,} ignored '
                 f'({_pct(r["ignore_fraction"])}, ignore_label={r["ignore_label"]}, in '
                 f'{r["ignore_images"]} images)')
    rows = [(n, f'{r["class_pixels"][n]:,}', _pct(r['class_fractions'][n]),
             r['class_images'][n]) for n in r['class_names']]
    lines += _table(('class', 'pixels', '% of valid', 'images'), rows, right=(1, 2, 3))
    absent = [n for n in r['class_names'] if not r['class_pixels'][n]]
    if absent:
      lines.append(f'absent from {r["split"]}: {", ".join(absent)}')
    lines.append('')
  if r['problems']:
    lines.append(f'Problems ({len(r["problems"])}):')
    for p in r['problems']:
      # Source messages name their file already; others get it in front.
      lines.append(f'- {p["problem"]}' if p['file'] in p['problem'] else
                   f'- {p["file"]}: {p["problem"]}')
  else:
    lines.append('Problems: none')
  return lines + ['']


def _short_map(text: str, limit: int = 60) -> str:
  """A label map for a header line: long ones (ADE20K's 152 entries) cut short."""
  if len(text) <= limit:
    return text
  return f'{text[:limit].rsplit(",", 1)[0]},... ({text.count(",") + 1} entries)'


def format_report(report: dict) -> str:
  """The text report of `scan`'s result, ending with a one-line summary."""
  where = f' at {report["root"]}' if report['root'] else ''
  label_map = _short_map(report['label_map'])
  label_map = f", label_map '{label_map}'" if label_map else ''
  if report.get('alt_mask_suffix'):
    label_map += (f"; '*{report['alt_mask_suffix']}' masks preferred where present, "
                  f"alt_label_map '{_short_map(report['alt_label_map']) or 'identity'}'")
  lines = [f'# check_data: {report["dataset"]} dataset{where} ({report["num_classes"]} '
           f'classes, ignore_label {report["ignore_label"]}{label_map})', '']
  for r in report['splits'].values():
    lines += _format_split(r, report['mask_format'])
  splits = report['splits']
  read = sum(r['num_examples'] for r in splits.values())
  names = ', '.join(splits)
  total = report['num_problems']
  if total:
    per = ', '.join(f'{s}: {len(r["problems"])}' for s, r in splits.items() if r['problems'])
    lines.append(f'check_data: {total} problem{"s" * (total != 1)} found ({per}); '
                 f'{read} examples read from {names}')
  else:
    lines.append(f'check_data: no problems; {read} examples read from {names}')
  return '\n'.join(lines)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  del argv
  config = config_lib.validate(fv.config)
  splits = fv.split or [config.data.train_split, config.data.val_split]
  # A joined split ('train+val') is scanned part by part.
  splits = list(dict.fromkeys(p.strip() for s in splits for p in s.split('+')))
  for split in splits:
    try:
      sources.parse_split(split)
    except ValueError as e:
      raise cli.UsageError(f'--split: {e}') from None
  report = scan(config, splits, fv.max_examples)
  print(format_report(report), flush=True)
  if fv.json:
    with open(fv.json, 'w') as f:
      json.dump(report, f, indent=1)
  return 1 if report['num_problems'] else 0


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  config_flags.DEFINE_config_file('config', None, 'Config file: configs/x.py:a=1,b',
                                  lock_config=True, flag_values=fv)
  flags.DEFINE_list('split', None, 'Splits to scan, comma-separated (slices work: '
                    "train[:25]); default: data.train_split and data.val_split.",
                    flag_values=fv)
  flags.DEFINE_string('json', '', 'Also write the full report as JSON to this path.',
                      flag_values=fv)
  flags.DEFINE_integer('max_examples', None, 'Read at most this many examples per split.',
                       lower_bound=1, flag_values=fv)
  flags.mark_flags_as_required(['config'], flag_values=fv)


if __name__ == '__main__':
  cli.run(main, define_flags)
