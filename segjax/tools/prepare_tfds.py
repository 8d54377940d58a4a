r"""Prepares a TFDS segmentation dataset in array_record format, without TF.

  segjax prepare_tfds --name=oxford_iiit_pet --data_dir=DIR
  segjax prepare_tfds --name=oxford_iiit_pet --data_dir=DIR \
      --manual_dir=MANUAL_DIR   # holding images.tar.gz + annotations.tar.gz

The result is a normal TFDS dataset (same name, version and features as the
TFDS builder), so `tfds.data_source('oxford_iiit_pet', data_dir=DIR)` and
segjax (`--config.data.root=DIR`) read it.

Why a builder of our own: the stock Oxford-IIIT Pet builder fixes a few
corrupt images with TensorFlow ops, and TFDS' archive extraction uses
`tf.io.gfile`; both fail without TensorFlow. `PetBuilder` subclasses the stock
builder (features, version, metadata, checksums unchanged) and replaces only
`_split_generators` (Python `tarfile` extraction, optional manual dir) and
`_generate_examples` (Pillow instead of TF). It is declared with
`skip_registration=True` and `name='oxford_iiit_pet'`: TFDS' registry keeps
the stock class for reading, and writing uses the same name and version
directory. Everything else (download, serialization, shuffling, array_record
writing) is TFDS' own no-TF path.

Images: every image is fully decoded with Pillow while preparing. Images that
are not RGB JPEGs (CMYK, grayscale, RGBA/PNG data named .jpg) and the
samples TFDS lists as corrupt (decoded tolerating truncation, as TF does) are
re-encoded as RGB JPEG (quality 95); the others are stored byte for byte. An
image that Pillow cannot decode at all is an error naming the file (a broken
download should not go unnoticed), unless `--skip_bad_images`, which leaves it
out and lists it at the end. Examples keep the stock builder's keys (TFDS
orders examples by a hash of the key).

Extracted archives stay under the download dir (DATA_DIR/downloads/extracted)
and are reused by later runs.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import tarfile

from absl import flags
from etils import epath
from PIL import Image
from PIL import ImageFile
import tensorflow_datasets as tfds
from tensorflow_datasets.datasets.oxford_iiit_pet import oxford_iiit_pet_dataset_builder as tfds_pet

from segjax import cli
from segjax.data import tfds_source

_JPEG_QUALITY = 95  # tf.io.encode_jpeg's default, used by the stock builder.
_PET_ARCHIVES = ('images', 'annotations')
# Private names of the stock builder module, reused so records match it exactly.
# pylint: disable=protected-access
_PET_URL = tfds_pet._BASE_URL
_PET_CORRUPT = frozenset(tfds_pet._CORRUPT_SAMPLES)
_pet_head_bbox = tfds_pet._get_head_bbox
_PET_EMPTY_BBOX = tfds_pet._EMPTY_BBOX
# pylint: enable=protected-access


class BadImageError(ValueError):
  """An image or mask file that Pillow cannot decode (or a mask with colours)."""

  def __init__(self, path: str, problem: str):
    super().__init__(f'{path}: {problem}')
    self.path = path
    self.problem = problem


def _rgb_jpeg(data: bytes, path: str, known_corrupt: bool) -> tuple[bytes, bool]:
  """(bytes, re-encoded?): `data` if it is a clean RGB JPEG, else re-encoded.

  `known_corrupt` images are always re-encoded and, like TF's decoder in the
  stock builder, may be truncated.
  """
  # A Pillow global; generation runs in a single thread.
  truncated_ok = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = known_corrupt
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()  # Full decode: truncated files fail here, not in training.
      if im.format == 'JPEG' and im.mode == 'RGB' and not known_corrupt:
        return data, False
      out = io.BytesIO()
      im.convert('RGB').save(out, format='JPEG', quality=_JPEG_QUALITY)
      return out.getvalue(), True
  except (OSError, SyntaxError, ValueError) as e:
    raise BadImageError(path, f'cannot be decoded as an image ({e})') from e
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok


def _check_mask(data: bytes, path: str) -> None:
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      bands = len(im.getbands())
  except (OSError, SyntaxError, ValueError) as e:
    raise BadImageError(path, f'cannot be decoded as a mask ({e})') from e
  if bands != 1:
    raise BadImageError(path, f'mask has {bands} channels, expected 1 (trimap)')


def _extract(archive: epath.Path, into: epath.Path) -> epath.Path:
  """Extracts a tar (gzip or not) once into `into/<stem>`; returns that folder."""
  stem = archive.name.split('.tar')[0]
  dest = into / stem
  done = dest / '.extracted'
  if done.exists():
    return dest
  tmp = into / f'{stem}.incomplete-{os.getpid()}'
  if tmp.exists():
    tmp.rmtree()
  tmp.mkdir(parents=True)
  logging.info('Extracting %s to %s', archive, dest)
  # 'r:*': the Pet "tar.gz" files have been plain tar in the past.
  with tarfile.open(os.fspath(archive), 'r:*') as tar:
    tar.extractall(os.fspath(tmp), filter='data')
  (tmp / '.extracted').touch()
  if dest.exists():
    dest.rmtree()
  tmp.rename(dest)
  return dest


class PetBuilder(tfds_pet.Builder, skip_registration=True):
  """The stock oxford_iiit_pet builder with Pillow and a manual-dir option."""

  name = 'oxford_iiit_pet'
  # Metadata (README, citation) and checksums.tsv of the stock builder.
  pkg_dir_path = tfds_pet.Builder._get_pkg_dir_path()  # pylint: disable=protected-access
  code_path = tfds_pet.Builder.code_path
  URLS = {a: f'{_PET_URL}/{a}.tar.gz' for a in _PET_ARCHIVES}

  def __init__(self, *, manual_dir: str | None = None, skip_bad_images: bool = False,
               **kwargs):
    self._manual = epath.Path(manual_dir) if manual_dir else None
    self._skip_bad_images = skip_bad_images
    self.reencoded: list[str] = []
    self.skipped: list[str] = []
    super().__init__(**kwargs)

  def _folders(self, dl_manager) -> dict[str, epath.Path]:
    """'images'/'annotations' -> the folder holding that subfolder."""
    extract_to = epath.Path(dl_manager.download_dir) / 'extracted'
    if self._manual is None:
      archives = dl_manager.download(self.URLS)
      return {a: _extract(epath.Path(p), extract_to) for a, p in archives.items()}
    folders = {}
    for a in _PET_ARCHIVES:
      if (self._manual / a).is_dir():
        folders[a] = self._manual
      elif (self._manual / f'{a}.tar.gz').exists():
        folders[a] = _extract(self._manual / f'{a}.tar.gz', extract_to)
      else:
        raise FileNotFoundError(
            f'manual_dir {os.fspath(self._manual)!r} has neither {a}.tar.gz nor an '
            f'extracted {a}/ folder; download {a}.tar.gz from '
            f'{self.URLS[a]}')
    return folders

  def _split_generators(self, dl_manager):
    folders = self._folders(dl_manager)
    images = folders['images'] / 'images'
    annotations = folders['annotations'] / 'annotations'
    return [
        tfds.core.SplitGenerator(name=split, gen_kwargs={
            'images_dir_path': images,
            'annotations_dir_path': annotations,
            'images_list_file': annotations / list_file,
        }) for split, list_file in (('train', 'trainval.txt'), ('test', 'test.txt'))
    ]

  def _generate_examples(self, images_dir_path, annotations_dir_path, images_list_file):
    """Same records and keys as the stock builder, with Pillow for the fixes."""
    images_dir = epath.Path(images_dir_path)
    annotations = epath.Path(annotations_dir_path)
    for line in epath.Path(images_list_file).read_text().splitlines():
      if not line.strip() or line.startswith('#'):
        continue
      stem, label, species, _ = line.split()
      image_path = images_dir / f'{stem}.jpg'
      trimap_path = annotations / 'trimaps' / f'{stem}.png'
      try:
        image, reencoded = _rgb_jpeg(image_path.read_bytes(), os.fspath(image_path),
                                     known_corrupt=stem in _PET_CORRUPT)
        mask = trimap_path.read_bytes()
        _check_mask(mask, os.fspath(trimap_path))
      except BadImageError as e:
        if not self._skip_bad_images:
          raise BadImageError(e.path, f'{e.problem}\nRe-download the archive, or pass '
                              '--skip_bad_images to leave such images out.') from None
        logging.warning('Skipping %s', e)
        self.skipped.append(e.path)
        continue
      if reencoded:
        self.reencoded.append(stem)
      try:
        head_bbox = _pet_head_bbox(os.fspath(annotations / 'xmls' / f'{stem}.xml'))
      except FileNotFoundError:  # Test images have no head box.
        head_bbox = _PET_EMPTY_BBOX
      yield f'{stem}.jpg', {
          'image': image,
          'label': int(label) - 1,
          'species': int(species) - 1,
          'file_name': f'{stem}.jpg',
          'segmentation_mask': mask,
          'head_bbox': head_bbox,
      }


BUILDERS = {'oxford_iiit_pet': PetBuilder}
assert set(BUILDERS) == set(tfds_source.PREPARABLE)


@dataclasses.dataclass
class PrepareResult:
  path: str                       # The prepared dataset/version folder.
  data_dir: str                   # What to pass as --config.data.root.
  split_sizes: dict[str, int]
  reencoded: list[str]            # Image stems stored re-encoded as RGB JPEG.
  skipped: list[str]              # Undecodable files; their examples were left out.
  reused: bool                    # Already prepared; nothing was written.


def prepare(name: str, data_dir: str, *, manual_dir: str | None = None,
            download_dir: str | None = None, overwrite: bool = False,
            skip_bad_images: bool = False) -> PrepareResult:
  """Prepares TFDS dataset `name` into `data_dir` in array_record format."""
  base = tfds_source.base_name(name)
  tfds_source.features_for(name)  # Unknown dataset: error listing supported ones.
  if base not in BUILDERS:
    raise ValueError(tfds_source.instructions(name, data_dir))
  # '--data_dir=~/x' reaches us unexpanded: the shell expands only a leading ~.
  data_dir = os.path.expanduser(data_dir)
  manual_dir = os.path.expanduser(manual_dir) if manual_dir else None
  download_dir = os.path.expanduser(download_dir) if download_dir else None
  if manual_dir and not os.path.isdir(manual_dir):
    raise FileNotFoundError(f'manual_dir {manual_dir!r} is not a directory')
  make = functools.partial(BUILDERS[base], data_dir=data_dir, manual_dir=manual_dir,
                           skip_bad_images=skip_bad_images)
  builder = make()
  if overwrite and builder.is_prepared():
    # TFDS cannot change the file format of an info read from disk, so the old
    # version folder goes first (downloads and extractions are kept).
    logging.info('Deleting %s', builder.data_dir)
    epath.Path(builder.data_dir).rmtree()
    builder = make()
  reused = builder.is_prepared()
  builder.download_and_prepare(download_dir=download_dir, file_format='array_record')
  formats = builder.info.available_file_formats()
  if tfds.core.FileFormat.ARRAY_RECORD not in formats:
    raise ValueError(f'{builder.data_dir} holds {base} in {sorted(f.value for f in formats)} '
                     'format, not array_record; run again with --overwrite')
  return PrepareResult(
      path=os.fspath(builder.data_dir),
      data_dir=os.fspath(builder.data_dir_root),
      split_sizes={s: info.num_examples for s, info in builder.info.splits.items()},
      reencoded=builder.reencoded, skipped=builder.skipped, reused=reused)


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  flags.DEFINE_string('name', 'oxford_iiit_pet', f'TFDS dataset; preparable here: '
                      f'{sorted(BUILDERS)}.', flag_values=fv)
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir to write to.', required=True,
                      flag_values=fv)
  flags.DEFINE_string('manual_dir', None, 'Folder with the original archives (or their '
                      'extracted folders); without it they are downloaded.', flag_values=fv)
  flags.DEFINE_string('download_dir', None, 'Downloads and extractions (default '
                      'DATA_DIR/downloads).', flag_values=fv)
  flags.DEFINE_bool('overwrite', False, 'Regenerate even if already prepared.', flag_values=fv)
  flags.DEFINE_bool('skip_bad_images', False, 'Leave out images Pillow cannot decode instead '
                    'of failing.', flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  del argv
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  result = prepare(fv.name, fv.data_dir, manual_dir=fv.manual_dir,
                   download_dir=fv.download_dir, overwrite=fv.overwrite,
                   skip_bad_images=fv.skip_bad_images)
  state = 'already prepared' if result.reused else 'prepared'
  print(f'{fv.name} {state} at {result.path}: ' +
        ', '.join(f'{s}={n}' for s, n in sorted(result.split_sizes.items())))
  if result.reencoded:
    print(f're-encoded as RGB JPEG: {len(result.reencoded)} images '
          f'({", ".join(result.reencoded[:20])}{" ..." if len(result.reencoded) > 20 else ""})')
  if result.skipped:
    print(f'skipped {len(result.skipped)} undecodable images:\n  ' + '\n  '.join(result.skipped))
  print(f'Use it with --config.data.name=tfds --config.data.tfds_name={fv.name} '
        f'--config.data.root={result.data_dir}')
  return 0


if __name__ == '__main__':
  cli.run(main, define_flags)
