"""Random-access segmentation source over a prepared TFDS dataset, without TF.

The dataset must have been prepared in `array_record` format (see
`python -m segjax.tools.prepare_tfds`); it is then read with TFDS' own data
source (`builder.as_data_source`, the same as `tfds.data_source`), which
decodes images with Pillow/OpenCV and never imports TensorFlow.

Each item is `{'image': uint8 (H, W, 3), 'label': uint8 (H, W), 'name': str}`
with the dataset's raw mask values mapped by the config's `LabelMapper`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from segjax.data import labels as labels_lib


@dataclasses.dataclass(frozen=True)
class SegFeatures:
  """Which TFDS features of a dataset hold the image, the mask and a name."""
  image: str
  mask: str
  name: str | None = None  # None: items are named by their index.


# Feature keys per TFDS dataset (base name, without config or version). Taken
# from the builders shipped with tensorflow-datasets 4.9.10.
DATASETS = {
    'oxford_iiit_pet': SegFeatures('image', 'segmentation_mask', 'file_name'),
    # Needs a segmentation config, e.g. tfds_name='cityscapes/semantic_segmentation'.
    'cityscapes': SegFeatures('image_left', 'segmentation_label', 'image_id'),
    'scene_parse150': SegFeatures('image', 'annotation'),
}


class TfdsNotPreparedError(FileNotFoundError):
  """The TFDS dataset is not in data_dir in a random-access format."""


def base_name(tfds_name: str) -> str:
  """'cityscapes/semantic_segmentation:1.0.0' -> 'cityscapes'."""
  return tfds_name.split('/')[0].split(':')[0]


def features_for(tfds_name: str) -> SegFeatures:
  """The feature keys of `tfds_name`, or a ValueError listing supported names."""
  try:
    return DATASETS[base_name(tfds_name)]
  except KeyError:
    raise ValueError(
        f'TFDS dataset {tfds_name!r} is not supported as a segmentation source; '
        f'supported: {sorted(DATASETS)} (add its image/mask feature keys to '
        'segjax.data.tfds_source.DATASETS)') from None


# Datasets `segjax prepare_tfds` builds without TensorFlow -> where their
# original archives (images.tar.gz, annotations.tar.gz) are downloaded from.
PREPARABLE = {'oxford_iiit_pet': 'https://thor.robots.ox.ac.uk/~vgg/data/pets'}


def instructions(tfds_name: str, data_dir: str) -> str:
  """How to prepare `tfds_name` into `data_dir`, as shell commands."""
  name = base_name(tfds_name)
  if name in PREPARABLE:
    return (
        'Prepare it (no TensorFlow needed):\n'
        f'  (a) with internet access:\n'
        f'      python -m segjax.tools.prepare_tfds --name={name} --data_dir={data_dir}\n'
        f'  (b) offline: download images.tar.gz and annotations.tar.gz (the Oxford-IIIT Pet '
        f'originals, {PREPARABLE[name]}/) into MANUAL_DIR, then run\n'
        f'      python -m segjax.tools.prepare_tfds --name={name} --data_dir={data_dir} '
        '--manual_dir=MANUAL_DIR\n'
        f'then pass --config.data.root={data_dir}')
  return (
      f'segjax cannot prepare {name!r} without TensorFlow; in an environment '
      'with TensorFlow run\n'
      f'  tfds build {tfds_name} --data_dir={data_dir} --file_format=array_record\n'
      f'then pass --config.data.root={data_dir} (reading needs no TensorFlow)')


def _not_prepared(tfds_name: str, split: str, data_dir: str, reason: str) -> TfdsNotPreparedError:
  return TfdsNotPreparedError(
      f'TFDS dataset {tfds_name!r} (split {split!r}) {reason} in data_dir '
      f'{data_dir!r}.\n{instructions(tfds_name, data_dir)}')


def _to_rgb(image: np.ndarray, name: str) -> np.ndarray:
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f'{name}: image has shape {image.shape}, expected (H, W, 3)')
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  elif image.shape[-1] == 4:
    image = image[..., :3]  # RGBA: drop alpha, as the TFDS builders do.
  if image.dtype != np.uint8:
    raise ValueError(f'{name}: image dtype {image.dtype} is not uint8')
  return image


def _to_2d(mask: np.ndarray, name: str) -> np.ndarray:
  if mask.ndim == 3:
    # Index masks stored as RGB PNG repeat the index in every channel.
    if mask.shape[-1] > 1 and not (mask == mask[..., :1]).all():
      raise ValueError(f'{name}: mask has {mask.shape[-1]} differing channels; '
                       'expected a single-channel index mask')
    mask = mask[..., 0]
  return mask


class TfdsSource:
  """Len + getitem over one split of a prepared TFDS dataset; picklable."""

  def __init__(self, data_source, tfds_name: str, split: str,
               features: SegFeatures, mapper: labels_lib.LabelMapper):
    self._source = data_source
    self.tfds_name = tfds_name
    self.split = split
    self.features = features
    self.mapper = mapper

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f'{self.tfds_name}/{self.split}: index {index} out of '
                       f'range [0, {len(self)})')
    where = f'{self.tfds_name}/{self.split}[{index}]'
    example = self._source[index]
    image = _to_rgb(np.asarray(example[self.features.image]), where)
    raw = _to_2d(np.asarray(example[self.features.mask]), where)
    if raw.shape != image.shape[:2]:
      raise ValueError(f'{where}: image is {image.shape[:2]} but mask is {raw.shape}')
    label = self.mapper(raw, name=where)
    if self.features.name is not None:
      name = example[self.features.name]
      name = name.decode('utf-8') if isinstance(name, bytes) else str(name)
    else:
      name = str(index)
    return {'image': image, 'label': label, 'name': name}

  def __repr__(self) -> str:
    return f'TfdsSource({self.tfds_name!r}, split={self.split!r}, len={len(self)})'


def make_tfds_source(data_config, split: str, mapper: labels_lib.LabelMapper) -> TfdsSource:
  """Source over `split` (slices allowed: 'train[:80%]') of `data_config.tfds_name`.

  `data_config.root` is the TFDS data_dir ('' = TFDS' default: $TFDS_DATA_DIR
  or ~/tensorflow_datasets). Never downloads: a missing dataset raises
  TfdsNotPreparedError with the command that prepares it.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds_name = data_config.tfds_name
  features = features_for(tfds_name)
  root = os.path.expanduser(data_config.root) if data_config.root else None
  builder = tfds.builder(tfds_name, data_dir=root)
  data_dir = os.fspath(builder.data_dir_root)
  try:
    source = builder.as_data_source(split=split)
  except (ValueError, NotImplementedError) as e:
    # TFDS says "file format is not set" for a missing dataset; tell how to
    # prepare it instead. A prepared dataset's errors (bad split) pass through.
    if not builder.is_prepared():
      raise _not_prepared(tfds_name, split, data_dir, 'is not prepared') from None
    if isinstance(e, NotImplementedError):
      raise _not_prepared(tfds_name, split, data_dir,
                          'is prepared only in a format without random access '
                          f'({builder.info.file_format}); prepare it again with '
                          '--overwrite') from e
    raise ValueError(f'TFDS dataset {tfds_name!r} in {data_dir!r}: {e}') from e
  keys = set(builder.info.features.keys())
  for key in (features.image, features.mask):
    if key not in keys:
      raise ValueError(f'TFDS dataset {tfds_name!r} has no feature {key!r} (features: '
                       f'{sorted(keys)}); choose a config that has segmentation masks')
  if features.name not in keys:
    features = dataclasses.replace(features, name=None)
  return TfdsSource(source, tfds_name, split, features, mapper)
