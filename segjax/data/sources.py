"""Random-access data sources: synthetic shapes, image/mask folders, TFDS.

Every source returns records {'image': uint8 (H, W, 3), 'label': uint8 (H, W)
with values in [0, num_classes) or ignore_label (int32 if ignore_label > 255),
'name': str}. Split strings take an optional integer slice: 'train[:25]',
'train[25:]', 'val[10:20]', applied to the sorted example list.

Image decoding rule (folders):
  RGB as is; 'L' repeated to 3 channels; 16-bit and 32-bit integer grayscale
  ('I;16*', 'I') divided by 257 after clipping to [0, 65535] (full 16-bit
  range -> 8 bits); float 'F' multiplied by 255 if its maximum is <= 1, then
  clipped to [0, 255]; 'P' through its palette; alpha ('RGBA', 'LA', 'PA')
  dropped; 'CMYK', 'YCbCr' and other colour modes converted to RGB.
Mask decoding rule (folders):
  mask_format='index': raw values ('P' gives its palette indices, never
  colours; 'L', 'I;16', 'I' integers; '1' gives 0/1; RGB(A) only if its three
  channels are equal). mask_format='palette': RGB colours mapped through
  data.palette. Then LabelMapper(spec, data.label_map) maps and validates.
"""

from __future__ import annotations

import os
from pathlib import Path
import re

import numpy as np
from PIL import Image

from segjax.data import labels as labels_lib
from segjax.data import synthetic

MASK_EXTENSIONS = ('.png', '.bmp', '.tif', '.tiff')
_SPLIT_RE = re.compile(r'^\s*([^\[\]]+?)\s*(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\])?\s*$')


class DataError(ValueError):
  """A problem with the dataset's files; the message names the file(s)."""


def _inside(real_root: str, real_path: str) -> bool:
  """Whether real_path is real_root or below it (both already real paths)."""
  return os.path.commonpath([real_root, real_path]) == real_root


def _cut(text: str, limit: int = 200) -> str:
  """A path from a list file, cut short: messages name paths, not file contents."""
  return text if len(text) <= limit else text[:limit] + '...'


def label_spec(data_config) -> labels_lib.LabelSpec:
  """The LabelSpec of a config's `data` block."""
  return labels_lib.spec_from_config(data_config)


def parse_split(split: str) -> tuple[str, slice]:
  """'train[25:]' -> ('train', slice(25, None)); 'val' -> ('val', slice(None))."""
  m = _SPLIT_RE.match(split or '')
  if not m:
    raise ValueError(f"split {split!r} is not of the form 'name' or 'name[start:stop]' "
                     'with integer start/stop')
  base, start, stop = m.groups()
  return base, slice(int(start) if start else None, int(stop) if stop else None)


def natural_key(text: str):
  """Sort key treating digit runs as numbers: '2.png' < '10.png'."""
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r'(\d+)', text)]


class Subset:
  """A source restricted to some of its indices (e.g. a split slice)."""

  def __init__(self, source, indices):
    self.source = source
    self.indices = indices

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[self.indices[index]]

  def __repr__(self) -> str:
    return f'Subset({self.source!r}, {self.indices!r})'


class Concat:
  """Several sources one after another (a split like 'train+val')."""

  def __init__(self, sources):
    self.sources = list(sources)
    self._starts = np.cumsum([0] + [len(s) for s in self.sources])

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, index: int):
    if not 0 <= index < len(self):
      raise IndexError(f'index {index} out of range for {len(self)} examples')
    part = int(np.searchsorted(self._starts, index, side='right')) - 1
    return self.sources[part][index - int(self._starts[part])]

  def __repr__(self) -> str:
    return f'Concat({self.sources!r})'


def make_source(data_config, split: str, *, problems: list | None = None):
  """The source for `split` of the dataset named by data_config.name.

  A split may join several with '+', each with its own slice:
  'train+val', 'train[:300]+val'. `problems` is passed to FolderSource (see
  there); other sources ignore it.
  """
  if split and '+' in split:
    parts = [p.strip() for p in split.split('+')]
    if not all(parts):
      raise ValueError(f"split {split!r}: an empty part between '+'")
    return Concat(make_source(data_config, p, problems=problems) for p in parts)
  spec = label_spec(data_config)
  mapper = labels_lib.LabelMapper(spec, data_config.label_map)
  name = data_config.name
  if name == 'synthetic':
    base, sl = parse_split(split)
    n = (data_config.synthetic_train_examples if base == 'train'
         else data_config.synthetic_val_examples)
    # Split name feeds the seed, so 'val' and 'test' are different images.
    src = synthetic.SyntheticShapes(
        int(n), size=tuple(data_config.synthetic_size), num_classes=spec.num_classes,
        split=base, seed=0, ignore_label=spec.ignore_label)
    if sl == slice(None):
      return src
    return Subset(src, range(len(src))[sl])
  if name == 'folder':
    return FolderSource(
        data_config.root, split, mapper=mapper,
        image_dir=data_config.image_dir, mask_dir=data_config.mask_dir,
        list_file=data_config.list_file,
        image_suffixes=tuple(data_config.image_suffixes),
        mask_suffix=data_config.mask_suffix, mask_format=data_config.mask_format,
        void_color=tuple(data_config.void_color), recursive=bool(data_config.recursive),
        alt_mask_suffix=data_config.alt_mask_suffix,
        alt_mapper=(labels_lib.LabelMapper(spec, data_config.alt_label_map)
                    if data_config.alt_mask_suffix else None),
        problems=problems)
  if name == 'tfds':
    from segjax.data import tfds_source  # pylint: disable=g-import-not-at-top
    return tfds_source.make_tfds_source(data_config, split, mapper)
  raise ValueError(f"data.name={name!r} is not one of 'synthetic', 'folder', 'tfds'")


# --------------------------------------------------------------------------- decoding


def _open(path: Path) -> Image.Image:
  try:
    img = Image.open(path)
    img.load()  # Forces a full decode here, so truncation fails now.
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f'{path}: cannot read image ({type(e).__name__}: {e})') from None
  return img


def decode_image(img: Image.Image) -> np.ndarray:
  """PIL image -> uint8 (H, W, 3) RGB, by the rule in the module docstring."""
  mode = img.mode
  if mode == 'RGB':
    return np.asarray(img, np.uint8)
  if mode in ('L', '1', 'LA', 'La'):
    gray = np.asarray(img.getchannel(0) if mode in ('LA', 'La') else img.convert('L'))
  elif mode.startswith('I'):  # 'I;16', 'I;16B', 'I;16L', 'I;16N', 'I'.
    x = np.asarray(img).astype(np.int64)
    gray = np.round(np.clip(x, 0, 65535) / 257.0).astype(np.uint8)
  elif mode == 'F':
    x = np.asarray(img, np.float32)
    if x.size and np.nanmax(x) <= 1.0:
      x = x * 255.0
    gray = np.clip(np.round(np.nan_to_num(x)), 0, 255).astype(np.uint8)
  else:  # 'P', 'PA', 'RGBA', 'RGBa', 'RGBX', 'CMYK', 'YCbCr', 'LAB', 'HSV'.
    return np.asarray(img.convert('RGB'), np.uint8)
  return np.repeat(np.asarray(gray, np.uint8)[..., None], 3, axis=-1)


def decode_mask(img: Image.Image, *, name: str, mask_format: str = 'index',
                palette=(), ignore_label: int = 255, void_color=None) -> np.ndarray:
  """PIL mask -> 2-D integer array of raw values (or class indices for palette)."""
  mode = img.mode
  if mask_format == 'palette':
    rgb = np.asarray(img.convert('RGB'))
    return labels_lib.rgb_to_index(rgb, palette, ignore_label, name=name,
                                   void_color=void_color or None)
  if mask_format != 'index':
    raise ValueError(f"data.mask_format={mask_format!r} is not 'index' or 'palette'")
  if mode in ('P', 'L'):
    return np.asarray(img)  # 'P' gives palette indices, not colours.
  if mode == '1':
    return np.asarray(img).astype(np.uint8)
  if mode.startswith('I'):
    return np.asarray(img).astype(np.int32)
  if mode in ('LA', 'La', 'PA'):
    return np.asarray(img.getchannel(0))
  if mode in ('RGB', 'RGBA', 'RGBX'):
    rgb = np.asarray(img)[..., :3]
    if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
      raise DataError(
          f'{name}: RGB mask has different values in its R, G, B channels but '
          "data.mask_format='index'; set data.mask_format='palette' (with "
          'data.palette) for colour-coded masks, or save masks as 8-bit index images')
    return rgb[..., 0]
  raise DataError(f'{name}: mask image mode {mode!r} is not supported (expected an '
                  "integer mode 'L', 'P', 'I;16', 'I' or equal-channel RGB)")


# --------------------------------------------------------------------------- folders


class FolderSource:
  """Image/mask pairs from folders or a list file, decoded lazily.

  Layout (templates take '{split}', the split name without its slice):
    * image_dir / mask_dir: folders under root; images are the files whose
      name ends with one of image_suffixes ('.jpg', or a longer ending such as
      Cityscapes' '_leftImg8bit.png'); the stem is the name without that
      ending. Each image is matched to the mask stem + mask_suffix ('' = the
      same stem with any of .png/.bmp/.tif/.tiff; else e.g. '_mask.png',
      '_gtFine_labelIds.png'). With `recursive`, images are also found in
      sub-folders of image_dir (Cityscapes' city folders) and each mask is
      looked for in the same sub-folder of mask_dir.
    * mask_dir may name several folders separated by '|', tried in order for
      each image (Pascal VOC + SBD: 'SegmentationClass|SegmentationClassAug').
    * alt_mask_suffix (with alt_mapper): a second encoding of the same mask,
      preferred when its file exists (Cityscapes' '_gtFine_labelTrainIds.png'
      beside '_gtFine_labelIds.png'); it is read with alt_mapper instead of
      mapper. `mapper_for(mask_path)` says which mapper a mask is read with.
    * list_file (takes precedence when set): a file under root with
      '<image> <mask>' per line, paths relative to root, or one image id per
      line (Pascal VOC's ImageSets/Segmentation/train.txt): the image is
      image_dir/<id><suffix> for the first of image_suffixes that exists and
      the mask is found from it as in the folder layout. Blank lines and
      lines starting with '#' are skipped.
  Pairs are naturally sorted by image path before the split slice applies.

  Confinement: every folder, list file and image or mask this source opens
  must have its real path (symlinks resolved) inside the real path of root.
  A root that is itself a symlink is fine (it is resolved first); a link
  inside it that leads out (a 'train/x.png -> /elsewhere' file, a 'train ->
  /etc' folder, a list_file, image_dir, mask_dir or split name with '..' or
  an absolute path) is refused naming the path and where it leads. Files are
  checked again when read, so a file swapped for such a link later is
  refused too.

  `problems`: None (the default) raises DataError on the first image without a
  mask or bad list-file line. A list instead collects each of those as a
  (path, message) tuple and skips that image or line (the split slice then
  applies to the pairs that remain); a missing root, folder or list file and
  an empty split still raise. Used by `python -m segjax.tools.check_data`.
  """

  def __init__(self, root, split: str, *, mapper: labels_lib.LabelMapper,
               image_dir: str = '{split}', mask_dir: str = '{split}annot',
               list_file: str = '', image_suffixes=('.png', '.jpg', '.jpeg', '.bmp',
                                                    '.tif', '.tiff'),
               mask_suffix: str = '', mask_format: str = 'index', void_color=(),
               recursive: bool = False, alt_mask_suffix: str = '',
               alt_mapper: labels_lib.LabelMapper | None = None,
               problems: list | None = None):
    self.split = split
    self.recursive = recursive
    if alt_mask_suffix and alt_mapper is None:
      raise ValueError('FolderSource: alt_mask_suffix needs alt_mapper')
    self.alt_mask_suffix = alt_mask_suffix
    self.alt_mapper = alt_mapper
    self._mask_folders_cache = None
    self._problems = problems
    self.void_color = tuple(void_color) if void_color else None
    self.mapper = mapper
    self.mask_format = mask_format
    spec = mapper.spec
    if mask_format not in ('index', 'palette'):
      raise ValueError(f"data.mask_format={mask_format!r} is not 'index' or 'palette'")
    if mask_format == 'palette' and not spec.palette:
      raise ValueError("data.mask_format='palette' needs data.palette (one RGB colour "
                       'per class)')
    if not str(root):
      raise DataError('data.root is empty; set it to the dataset folder')
    self.root = Path(os.path.abspath(root))
    if not self.root.is_dir():
      raise DataError(f'data.root {str(self.root)!r} does not exist or is not a folder')
    self.real_root = os.path.realpath(self.root)
    base, sl = parse_split(split)
    self._suffixes = tuple(s.lower() for s in image_suffixes)
    self._mask_suffix = mask_suffix
    self._image_dir = image_dir.format(split=base)
    self._mask_dirs = [m.strip() for m in mask_dir.format(split=base).split('|')]
    if list_file:
      pairs, where = self._from_list(list_file.format(split=base))
    else:
      pairs, where = self._from_folders()
    pairs.sort(key=lambda p: natural_key(os.path.relpath(p[0], self.root)))
    if not pairs:
      raise DataError(f'split {split!r}: no image/mask pairs found in {where}')
    self.pairs = pairs[sl]
    if not self.pairs:
      raise DataError(f'split {split!r}: the slice selects none of the {len(pairs)} '
                      f'examples in {where}')

  def _outside(self, path) -> str | None:
    """None if the real path of `path` is inside the real data.root, else that real path."""
    real = os.path.realpath(path)
    return None if _inside(self.real_root, real) else real

  def _check_inside(self, path, what: str) -> None:
    """Raises DataError unless `path` (a folder or list file from the config) is inside."""
    outside = self._outside(path)
    if outside is not None:
      raise DataError(f'split {self.split!r}: {what} {str(path)!r} is outside data.root '
                      f'({self.real_root}): it resolves to {outside!r}')

  def mapper_for(self, mask_path) -> labels_lib.LabelMapper:
    """The LabelMapper a mask file is read with (alt_mapper for alt_mask_suffix files)."""
    if self.alt_mask_suffix and str(mask_path).endswith(self.alt_mask_suffix):
      return self.alt_mapper
    return self.mapper

  def _stem(self, name: str) -> str | None:
    """The name without its image ending, or None if it is not an image name."""
    lower = name.lower()
    for suffix in self._suffixes:
      if lower.endswith(suffix) and len(name) > len(suffix):
        return name[:-len(suffix)]
    return None

  def _mask_folders(self):
    """The mask folders (data.mask_dir, '|' alternatives), each checked to be inside."""
    folders = []
    for m in self._mask_dirs:
      d = self.root / m
      self._check_inside(d, 'data.mask_dir folder')
      folders.append(d)
    if not any(d.is_dir() for d in folders):
      raise DataError(f'split {self.split!r}: data.mask_dir folder '
                      f'{" or ".join(repr(str(d)) for d in folders)} does not exist')
    return folders

  def _find_mask(self, image: Path, stem: str, sub: str, mask_folders):
    """(mask path, None, None) for an image, or (None, path, problem message)."""
    candidates = []
    for mdir in mask_folders:
      folder = mdir / sub if sub else mdir
      if self.alt_mask_suffix:
        candidates.append(folder / (stem + self.alt_mask_suffix))
      if self._mask_suffix:
        candidates.append(folder / (stem + self._mask_suffix))
      else:
        candidates += [folder / (stem + ext) for ext in MASK_EXTENSIONS]
    candidates = [c for c in candidates if c != image]
    mask = next((c for c in candidates if c.is_file()), None)
    if mask is None:
      return None, image, (f'image {str(image)!r} has no mask: looked for '
                           f'{[str(c) for c in candidates]}')
    outside = self._outside(mask)
    if outside is not None:
      return None, mask, (f'mask {str(mask)!r} leads outside data.root ({self.real_root}) '
                          f'to {outside!r}; refused')
    return mask, None, None

  def _image_files(self, idir: Path):
    """(path, sub-folder relative to idir) of the files in idir (recursively with
    `recursive`); sub-folders whose real path leaves data.root are problems."""
    if not self.recursive:
      return [(f, '') for f in idir.iterdir()]
    files, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(idir, followlinks=True):
      real = os.path.realpath(dirpath)
      if real in seen or self._outside(dirpath) is not None:
        if real not in seen:
          self._problem(dirpath, f'folder {dirpath!r} leads outside data.root '
                        f'({self.real_root}) to {real!r}; refused')
        dirnames[:] = []
        continue
      seen.add(real)
      dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
      sub = os.path.relpath(dirpath, idir)
      files += [(Path(dirpath) / n, '' if sub == '.' else sub) for n in filenames]
    return files

  def _from_folders(self):
    idir = self.root / self._image_dir
    self._check_inside(idir, 'data.image_dir folder')
    if not idir.is_dir():
      raise DataError(f'split {self.split!r}: data.image_dir folder {str(idir)!r} does not '
                      'exist')
    mask_folders = self._mask_folders()
    real_mask_dirs = {os.path.realpath(d) for d in mask_folders}
    same_dir = os.path.realpath(idir) in real_mask_dirs
    mask_endings = tuple(e for e in (self._mask_suffix, self.alt_mask_suffix) if e)
    pairs = []
    for f, sub in self._image_files(idir):
      stem = self._stem(f.name)
      if f.name.startswith('.') or stem is None or not f.is_file():
        continue
      if same_dir and mask_endings and f.name.endswith(mask_endings):
        continue  # Masks that live next to their images are not images.
      outside = self._outside(f)
      if outside is not None:
        self._problem(f, f'image {str(f)!r} leads outside data.root ({self.real_root}) to '
                      f'{outside!r}; refused')
        continue
      mask, where, message = self._find_mask(f, stem, sub, mask_folders)
      if mask is None:
        self._problem(where, message)
        continue
      pairs.append((f, mask))
    return pairs, f'folder {str(idir)!r}'

  def _from_list(self, list_file):
    path = self.root / list_file
    self._check_inside(path, 'data.list_file')
    if not path.is_file():
      raise DataError(f'split {self.split!r}: list file {str(path)!r} does not exist')
    try:
      text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError as e:  # Named by position only: the bytes are not echoed.
      raise DataError(f'split {self.split!r}: list file {str(path)!r} is not UTF-8 text '
                      f'(byte {e.start})') from None
    root = os.path.normpath(str(self.root))
    pairs = []
    for lineno, line in enumerate(text.splitlines(), 1):
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      parts = line.split()
      where = f'{path}:{lineno}'
      if len(parts) == 1:  # An image id: JPEGImages/<id>.jpg and its mask.
        pair = self._pair_from_id(parts[0], where)
        if pair is not None:
          pairs.append(pair)
        continue
      if len(parts) != 2:  # The line itself is not echoed (the file may not be a list).
        self._problem(where, f'{where}: expected "<image> <mask>" (two paths relative to '
                      f'data.root) or one image id, got {len(parts)} fields')
        continue
      pair = []
      for p in parts:
        if os.path.isabs(p) or p.startswith(('/', '\\')) or re.match(r'^[A-Za-z]:', p):
          self._problem(where, f'{where}: path {_cut(p)!r} is absolute; list-file paths '
                        f'must be relative to data.root ({root})')
          continue
        full = os.path.normpath(os.path.join(root, p))
        outside = self._outside(full)
        if outside is not None:
          self._problem(where, f'{where}: path {_cut(p)!r} escapes data.root '
                        f'({self.real_root}) to {outside!r}')
          continue
        if not os.path.isfile(full):
          self._problem(where, f'{where}: file {full!r} does not exist')
          continue
        pair.append(Path(full))
      if len(pair) == 2:
        pairs.append(tuple(pair))
    return pairs, f'list file {str(path)!r}'

  def _pair_from_id(self, image_id: str, where: str):
    """(image, mask) for an id line of a list file, or None after recording a problem."""
    # Named by line number only, as malformed lines: the file may not be a list.
    if (os.path.isabs(image_id) or image_id.startswith(('/', '\\')) or '..' in
        Path(image_id).parts or re.match(r'^[A-Za-z]:', image_id)):
      self._problem(where, f'{where}: expected one image id (a name under data.image_dir '
                    f'{self._image_dir!r}) or "<image> <mask>"; got a path that is absolute '
                    "or contains '..'")
      return None
    if self._mask_folders_cache is None:
      idir = self.root / self._image_dir
      self._check_inside(idir, 'data.image_dir folder')
      if not idir.is_dir():
        raise DataError(f'split {self.split!r}: data.image_dir folder {str(idir)!r} does not '
                        'exist')
      self._mask_folders_cache = self._mask_folders()
    idir = self.root / self._image_dir
    sub, name = os.path.split(image_id)
    candidates = [idir / (image_id + s) for s in self._suffixes]
    image = next((c for c in candidates if c.is_file()), None)
    if image is None:
      self._problem(where, f'{where}: no image for the id on this line in data.image_dir '
                    f'{str(idir)!r} (with any of {list(self._suffixes)})')
      return None
    outside = self._outside(image)
    if outside is not None:
      self._problem(where, f'{where}: image {str(image)!r} leads outside data.root '
                    f'({self.real_root}) to {outside!r}; refused')
      return None
    mask, _, message = self._find_mask(image, name, sub, self._mask_folders_cache)
    if mask is None:
      self._problem(where, f'{where}: {message}')
      return None
    return image, mask

  def _problem(self, path, message: str) -> None:
    """Raises DataError(message), or records (path, message) when collecting."""
    if self._problems is None:
      raise DataError(message)
    self._problems.append((str(path), message))

  def __len__(self) -> int:
    return len(self.pairs)

  def __repr__(self) -> str:
    return f'FolderSource(root={str(self.root)!r}, split={self.split!r}, n={len(self)})'

  def __getitem__(self, index: int) -> dict:
    image_path, mask_path = self.pairs[index]
    for path in (image_path, mask_path):  # Checked again: a file may be a link by now.
      outside = self._outside(path)
      if outside is not None:
        raise DataError(f'{str(path)!r} leads outside data.root ({self.real_root}) to '
                        f'{outside!r}; refused')
    img = _open(image_path)
    mask = _open(mask_path)
    if img.size != mask.size:
      raise DataError(f'size mismatch: image {str(image_path)!r} is {img.size[0]}x'
                      f'{img.size[1]} but mask {str(mask_path)!r} is {mask.size[0]}x'
                      f'{mask.size[1]} (width x height)')
    image = decode_image(img)
    spec = self.mapper.spec
    raw = decode_mask(mask, name=str(mask_path), mask_format=self.mask_format,
                      palette=spec.palette, ignore_label=spec.ignore_label,
                      void_color=self.void_color)
    label = self.mapper_for(mask_path)(raw, name=str(mask_path))
    name = os.path.relpath(image_path, self.root)
    return {'image': image, 'label': label, 'name': name}
