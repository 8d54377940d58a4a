"""The benchmark presets (`dataset=cityscapes`, ...) on tiny copies of the
official layouts (tests/benchmark_fixtures.py): every stored value's class is
written out here by hand (or by the convention's one-line rule), independently
of segjax/data/benchmarks.py, and checked pixel by pixel, the ignored values
included; check_data passes on each layout and names the file of a corrupted
mask; values outside the convention are errors, never a class."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from configs import deeplabv3plus
from segjax import config as config_lib
from segjax.data import sources
from segjax.tools import check_data
from segjax.tools import class_weights
from tests import benchmark_fixtures as fx

# cityscapesScripts labels.py, labelId -> trainId (255 = not evaluated), by hand.
CITYSCAPES_TRAIN_ID = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255,
    11: 2, 12: 3, 13: 4, 14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8,
    22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16,
    32: 17, 33: 18}
# ADE20K / Pascal Context 59 (mmsegmentation's reduce_zero_label): 0 -> ignored,
# k -> k - 1, 255 -> ignored.
ADE20K = {0: 255, 255: 255, **{k: k - 1 for k in range(1, 151)}}
CONTEXT59 = {0: 255, 255: 255, **{k: k - 1 for k in range(1, 60)}}
# VOC: the palette index is the class; 255 (boundary) ignored.
VOC = {**{k: k for k in range(21)}, 255: 255}
# COCO-Stuff stuffthingmaps value -> class: mmsegmentation's clsID_to_trID
# (tools/dataset_converters/coco_stuff164k.py) leaves out these 11 values (the
# unused COCO thing ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91, minus 1) and
# numbers the other 171 in order; 255 is unlabeled.
COCO_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO = {v: k for k, v in enumerate(v for v in range(182) if v not in COCO_UNUSED)}
COCO[255] = 255
# Spot checks straight from mmsegmentation's table.
COCO_MMSEG = {0: 0, 10: 10, 12: 11, 24: 23, 26: 24, 27: 25, 30: 26, 43: 39, 45: 40, 64: 59,
              66: 60, 69: 61, 71: 62, 81: 72, 83: 73, 89: 79, 91: 80, 92: 81, 181: 170}


def _config(name, root):
  c = deeplabv3plus.get_config(f'dataset={name}')
  c.data.root = str(root)
  return config_lib.validate(c)


def _check_split(config, split, written, expected):
  """The source reads each written pair with expected[raw] per pixel."""
  src = sources.make_source(config.data, split)
  assert len(src) == len(written)
  by_name = {os.path.normpath(src[i]['name']): src[i] for i in range(len(src))}
  seen = set()
  for image, mask, raw in written:
    rec = by_name[os.path.normpath(image)]
    stored = fx.read_raw(config.data.root, mask)
    np.testing.assert_array_equal(stored, raw)  # The file holds what was written.
    want = np.vectorize(expected.__getitem__)(raw)
    np.testing.assert_array_equal(rec['label'], want)
    assert rec['image'].shape == (fx.H, fx.W, 3)
    seen |= set(np.unique(raw).tolist())
  return seen


def _assert_check_data_clean(config):
  report = check_data.scan(config, [config.data.train_split, config.data.val_split])
  assert report['num_problems'] == 0, report['splits']
  return report


def _assert_corrupt_named(config, mask_rel, bad_value):
  path = os.path.join(config.data.root, mask_rel)
  img = Image.open(path)
  raw = np.array(img)
  raw[0, 0] = bad_value
  out = Image.fromarray(raw, mode=img.mode)
  if img.mode == 'P':
    out.putpalette(img.getpalette())
  out.save(path)
  r = check_data.scan_split(config, config.data.train_split)
  [problem] = r['problems']
  assert problem['file'] == path and f'[{bad_value}]' in problem['problem'], problem
  with pytest.raises(ValueError, match=rf'{mask_rel}: mask values \[{bad_value}\]'):
    src = sources.make_source(config.data, config.data.train_split)
    for i in range(len(src)):
      src[i]  # pylint: disable=pointless-statement


# --------------------------------------------------------------------------- Cityscapes


def test_cityscapes_label_ids_to_train_ids(tmp_path):
  root = tmp_path / 'cityscapes'
  written = fx.cityscapes(root, list(range(34)))
  c = _config('cityscapes', root)
  seen = _check_split(c, 'train', written['train'], CITYSCAPES_TRAIN_ID)
  assert seen == set(range(34))  # Every labelId was read, the ignored ones included.
  _check_split(c, 'val', written['val'], CITYSCAPES_TRAIN_ID)
  report = _assert_check_data_clean(c)
  assert report['splits']['train']['num_ok'] == 3
  # class_weights reads the preset too: 19 trainId counts, ignored ids left out.
  counts = class_weights.count_pixels(c, 'train')
  raw = np.concatenate([r.ravel() for _, _, r in written['train']])
  want = np.bincount([CITYSCAPES_TRAIN_ID[v] for v in raw if CITYSCAPES_TRAIN_ID[v] != 255],
                     minlength=19)
  np.testing.assert_array_equal(counts['pixels'][:19], want)
  assert counts['ignored_pixels'] == sum(CITYSCAPES_TRAIN_ID[v] == 255 for v in raw)
  # 34 is no labelId: an error naming the file.
  _assert_corrupt_named(c, written['train'][1][1], 34)


def test_cityscapes_label_train_ids_preferred_when_present(tmp_path):
  """A *_gtFine_labelTrainIds.png beside the labelIds file is read as it is
  (0..18 classes, 255 ignored); the frames without one still use labelIds."""
  root = tmp_path / 'cityscapes'
  train_ids = np.array([*range(19), 255] * 5)[:fx.H * fx.W].reshape(fx.H, fx.W)
  written = fx.cityscapes(root, list(range(34)), train_ids={'aachen_000001_000019': train_ids})
  assert written['train'][1][1].endswith('_gtFine_labelTrainIds.png')
  c = _config('cityscapes', root)
  src = sources.make_source(c.data, 'train')
  identity = {**{k: k for k in range(19)}, 255: 255}
  for image, mask, raw in written['train']:
    [i] = [i for i, (img, _) in enumerate(src.pairs) if str(img).endswith(image)]
    assert str(src.pairs[i][1]).endswith(mask)
    want = identity if mask.endswith('labelTrainIds.png') else CITYSCAPES_TRAIN_ID
    np.testing.assert_array_equal(src[i]['label'], np.vectorize(want.__getitem__)(raw))
  report = _assert_check_data_clean(c)
  assert report['splits']['train']['alt_masks'] == 1  # check_data says which encoding.
  assert 'labelTrainIds.png' in check_data.format_report(report).splitlines()[0]
  # In a labelTrainIds file, 19 is no class.
  _assert_corrupt_named(c, written['train'][1][1], 19)


# --------------------------------------------------------------------------- ADE20K


def test_ade20k_zero_ignored_and_shifted(tmp_path):
  root = tmp_path / 'ADEChallengeData2016'
  written = fx.ade20k(root, [*range(151), 255])
  c = _config('ade20k', root)
  assert _check_split(c, 'training', written['training'], ADE20K) == {*range(151), 255}
  _check_split(c, 'validation', written['validation'], ADE20K)
  _assert_check_data_clean(c)
  _assert_corrupt_named(c, written['training'][2][1], 151)


# --------------------------------------------------------------------------- VOC


def test_voc_palette_pngs_read_as_indices(tmp_path):
  root = tmp_path / 'VOCdevkit' / 'VOC2012'
  c = _config('voc', root)
  written = fx.voc(root, [*range(21), 255], palette=c.data.palette)
  assert Image.open(root / written['train'][0][1]).mode == 'P'
  assert _check_split(c, 'train', written['train'], VOC) == {*range(21), 255}
  _check_split(c, 'val', written['val'], VOC)
  _assert_check_data_clean(c)
  # The devkit's colours: aeroplane (128, 0, 0), person (192, 128, 128), tvmonitor (0, 64, 128).
  assert (c.data.palette[1], c.data.palette[15], c.data.palette[20]) == (
      (128, 0, 0), (192, 128, 128), (0, 64, 128))
  _assert_corrupt_named(c, written['train'][0][1], 21)


def test_voc_aug_prefers_voc_masks_then_sbd(tmp_path):
  root = tmp_path / 'VOCdevkit' / 'VOC2012'
  c = _config('voc_aug', root)
  written = fx.voc(root, [*range(21), 255], aug_values=[255, *range(20, -1, -1)],
                   palette=c.data.palette)
  assert (c.data.train_split, c.data.val_split) == ('train_aug', 'val')
  src = sources.make_source(c.data, 'train_aug')
  folders = sorted(os.path.basename(os.path.dirname(m)) for _, m in src.pairs)
  assert folders == ['SegmentationClass'] * 2 + ['SegmentationClassAug'] * 2
  _check_split(c, 'train_aug', written['train_aug'], VOC)
  _check_split(c, 'val', written['val'], VOC)
  _assert_check_data_clean(c)
  _assert_corrupt_named(c, written['train_aug'][3][1], 22)


# --------------------------------------------------------------------------- Pascal Context


def test_pascal_context_59_background_ignored(tmp_path):
  root = tmp_path / 'VOCdevkit' / 'VOC2010'
  written = fx.pascal_context(root, [*range(60), 255])
  c = _config('pascal_context', root)
  assert _check_split(c, 'train', written['train'], CONTEXT59) == {*range(60), 255}
  _check_split(c, 'val', written['val'], CONTEXT59)
  _assert_check_data_clean(c)
  _assert_corrupt_named(c, written['train'][0][1], 60)


# --------------------------------------------------------------------------- COCO-Stuff


def test_coco_stuff_182_ids_to_171_classes(tmp_path):
  assert len(COCO) == 172 and all(COCO[v] == k for v, k in COCO_MMSEG.items())
  root = tmp_path / 'coco_stuff164k'
  used = [v for v in range(182) if v not in COCO_UNUSED] + [255]
  written = fx.coco_stuff(root, used)
  c = _config('coco_stuff', root)
  assert _check_split(c, 'train2017', written['train2017'], COCO) == set(used)
  _check_split(c, 'val2017', written['val2017'], COCO)
  _assert_check_data_clean(c)
  # An unused thing id (12 - 1) is an error, not the class 11 (stop sign) it would pass as.
  _assert_corrupt_named(c, written['train2017'][0][1], 11)


def test_coco_stuff_label_train_ids_preferred_and_checked(tmp_path):
  root = tmp_path / 'coco_stuff164k'
  train_ids = np.array([*range(171), 255] * 1)[:fx.H * fx.W].reshape(fx.H, fx.W)
  written = fx.coco_stuff(root, [v for v in range(182) if v not in COCO_UNUSED],
                          train_ids={'000000000025': train_ids})
  c = _config('coco_stuff', root)
  identity = {**{k: k for k in range(171)}, 255: 255}
  src = sources.make_source(c.data, 'train2017')
  for i, (image, mask, raw) in enumerate(written['train2017']):
    assert str(src.pairs[i][1]).endswith(mask)
    want = identity if mask.endswith('_labelTrainIds.png') else COCO
    np.testing.assert_array_equal(src[i]['label'], np.vectorize(want.__getitem__)(raw))
  _assert_corrupt_named(c, written['train2017'][1][1], 171)


# --------------------------------------------------------------------------- layout rules


def test_presets_keep_reads_inside_the_root(tmp_path):
  """A city folder that is a link out of the data root is refused by name."""
  root = tmp_path / 'cityscapes'
  fx.cityscapes(root, list(range(34)))
  elsewhere = tmp_path / 'elsewhere'
  os.rename(root / 'leftImg8bit' / 'train' / 'bochum', elsewhere)
  os.symlink(elsewhere, root / 'leftImg8bit' / 'train' / 'bochum')
  (elsewhere / 'bochum_000001_000001_leftImg8bit.png').write_bytes(b'')
  # One problem for the folder, none per file: the walk does not enter it.
  c = _config('cityscapes', root)
  r = check_data.scan_split(c, 'train')
  assert r['num_ok'] == 2
  [problem] = r['problems']
  assert 'bochum' in problem['problem'] and 'outside data.root' in problem['problem']
  with pytest.raises(ValueError, match='bochum.*outside data.root'):
    sources.make_source(c.data, 'train')


def test_every_preset_validates_with_its_names_and_palette():
  for name, n in (('cityscapes', 19), ('ade20k', 150), ('voc', 21), ('voc_aug', 21),
                  ('pascal_context', 59), ('coco_stuff', 171)):
    for arg in (f'dataset={name}', f'dataset={name},runlocal'):
      c = deeplabv3plus.get_config(arg)
      c.data.root = '/data'
      config_lib.validate(c)
      assert c.data.num_classes == n == len(c.data.class_names) == len(c.data.palette)


def test_bad_alt_label_map_is_named():
  c = deeplabv3plus.get_config('dataset=cityscapes')
  c.data.root = '/data'
  c.data.alt_label_map = '3:19'  # 19 is no trainId.
  with pytest.raises(config_lib.ConfigError, match=r'data\.alt_label_map maps 3 -> 19'):
    config_lib.validate(c)
