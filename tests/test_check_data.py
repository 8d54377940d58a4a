"""check_data: statistics against hand counts, every kind of problem collected, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from segjax.tools import check_data
from segjax import config as config_lib
from segjax.data import sources

ROOT = Path(__file__).resolve().parents[1]
NAMES = ('sky', 'road', 'car')


def _rgb(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def _mask(h, w, seed=0):
  """Raw values 0..2 and some 7s (mapped to ignore by label_map '7:255')."""
  m = np.random.default_rng(100 + seed).integers(0, 3, (h, w)).astype(np.uint8)
  m[0, :2] = 7
  return m


def _save(path, array_or_image):
  path.parent.mkdir(parents=True, exist_ok=True)
  img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(
      array_or_image)
  img.save(path)
  return path


def _config(root, **data):
  c = config_lib.base_config()
  c.data.name = 'folder'
  c.data.root = str(root)
  c.data.num_classes = 3
  c.data.class_names = NAMES
  c.data.label_map = '7:255'
  for k, v in data.items():
    setattr(c.data, k, v)
  return config_lib.validate(c)


def _expected(masks):
  """Class pixels, class images, ignore and total pixels of raw masks, counted by hand."""
  pixels, images, ignore, total = [0] * 3, [0] * 3, 0, 0
  for m in masks:
    for k in range(3):
      n = int((m == k).sum())
      pixels[k] += n
      images[k] += n > 0
    ignore += int((m == 7).sum())
    total += m.size
  return pixels, images, ignore, total


def _clean(root):
  """train: two 6x8 and one 5x7 RGB image; val: one 6x8. Returns the raw masks."""
  masks = {'train': [], 'val': []}
  for split, shapes in (('train', [(6, 8), (6, 8), (5, 7)]), ('val', [(6, 8)])):
    for i, (h, w) in enumerate(shapes):
      _save(root / split / f'img{i}.png', _rgb(h, w, i))
      masks[split].append(_save_mask(root / f'{split}annot' / f'img{i}.png', _mask(h, w, i)))
  return masks


def _save_mask(path, m):
  _save(path, m)
  return m


def test_clean_folder_dataset_counts(tmp_path):
  masks = _clean(tmp_path)
  report = check_data.scan(_config(tmp_path), ['train', 'val'])
  assert report['num_problems'] == 0 and list(report['splits']) == ['train', 'val']
  r = report['splits']['train']
  assert (r['num_available'], r['num_examples'], r['num_ok'], r['num_failed']) == (3, 3, 3, 0)
  assert r['problems'] == []
  assert r['sizes'] == [{'height': 6, 'width': 8, 'count': 2},
                        {'height': 5, 'width': 7, 'count': 1}]
  assert r['height_range'] == [5, 6] and r['width_range'] == [7, 8]
  assert r['modes'] == {'RGB': 3} and r['mode_rules'] == {'RGB': 'as is'}
  assert r['mask_modes'] == {'L': 3}
  pixels, images, ignore, total = _expected(masks['train'])
  assert r['class_pixels'] == dict(zip(NAMES, pixels))
  assert r['class_images'] == dict(zip(NAMES, images))
  assert (r['ignore_pixels'], r['total_pixels']) == (ignore, total) == (6, 2 * 48 + 35)
  assert r['valid_pixels'] == sum(pixels) == total - ignore
  assert r['ignore_fraction'] == pytest.approx(ignore / total)
  for name, p in zip(NAMES, pixels):
    assert r['class_fractions'][name] == pytest.approx(p / (total - ignore))
  pixels, _, ignore, total = _expected(masks['val'])
  assert report['splits']['val']['class_pixels'] == dict(zip(NAMES, pixels))
  text = check_data.format_report(report)
  assert '| 6 x 8' in text and 'Problems: none' in text
  assert text.splitlines()[-1] == 'check_data: no problems; 4 examples read from train, val'
  json.dumps(report)  # Serialisable as it is.
  # max_examples reads only the first examples.
  head = check_data.scan_split(_config(tmp_path), 'train', max_examples=2)
  assert (head['num_available'], head['num_examples'], head['num_ok']) == (3, 2, 2)
  assert 'first 2 of 3 examples read' in check_data.format_report(
      check_data.scan(_config(tmp_path), ['train'], max_examples=2))


_CONFIG_PY = '''
from segjax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.data.name = 'folder'
  c.data.num_classes = 3
  c.data.class_names = ('sky', 'road', 'car')
  c.data.label_map = '7:255'
  return c
'''


def _cli(config_file, root, *flags):
  return subprocess.run(
      [sys.executable, '-m', 'segjax.tools.check_data', f'--config={config_file}',
       f'--config.data.root={root}', *flags], cwd=ROOT, capture_output=True, text=True,
      timeout=120)


def test_command_line_exit_status_and_json(tmp_path):
  config_file = tmp_path / 'cfg.py'
  config_file.write_text(_CONFIG_PY)
  _clean(tmp_path / 'clean')
  out = _cli(config_file, tmp_path / 'clean', f'--json={tmp_path / "clean.json"}')
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == (
      'check_data: no problems; 4 examples read from train, val')
  saved = json.loads((tmp_path / 'clean.json').read_text())
  want = check_data.scan(_config(tmp_path / 'clean'), ['train', 'val'])
  assert saved == json.loads(json.dumps(want))
  _broken(tmp_path / 'broken')
  out = _cli(config_file, tmp_path / 'broken', '--split=train', '--config.data.num_classes=4',
             "--config.data.class_names=('a','b','c','d')")
  assert out.returncode == 1, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1].startswith('check_data: 6 problems found (train: 6)')
  # Bad flags are usage / config errors, not a scan.
  out = _cli(config_file, tmp_path / 'clean', '--split=train[x')
  assert out.returncode != 0 and 'split' in out.stderr and 'check_data:' not in out.stdout
  out = _cli(config_file, tmp_path / 'clean', '--config.data.ignore_label=1')
  assert out.returncode != 0 and 'ignore_label' in out.stderr


def _broken(root):
  """One of each per-example problem next to two good examples (num_classes=4)."""
  ok = {}
  for name in ('good0', 'good1'):
    _save(root / 'train' / f'{name}.png', _rgb(6, 8))
    ok[name] = _save_mask(root / 'trainannot' / f'{name}.png', _mask(6, 8))
  (root / 'train' / 'corrupt.png').write_bytes(b'not a png at all')
  _save(root / 'trainannot' / 'corrupt.png', _mask(6, 8))
  _save(root / 'train' / 'trunc.png', _rgb(64, 64))
  data = _save(root / 'trainannot' / 'trunc.png', _rgb(64, 64)[..., 0]).read_bytes()
  (root / 'trainannot' / 'trunc.png').write_bytes(data[:len(data) // 2])
  _save(root / 'train' / 'nomask.png', _rgb(6, 8))
  _save(root / 'train' / 'mismatch.png', _rgb(6, 8))
  _save(root / 'trainannot' / 'mismatch.png', _mask(6, 7))
  _save(root / 'train' / 'outofrange.png', _rgb(6, 8))
  m = _mask(6, 8)
  m[3, 3] = 9
  _save(root / 'trainannot' / 'outofrange.png', m)
  _save(root / 'train' / 'rgbmask.png', _rgb(6, 8))
  colour = np.repeat(_mask(6, 8)[..., None], 3, -1)
  colour[1, 1] = (1, 2, 3)
  _save(root / 'trainannot' / 'rgbmask.png', colour)
  return ok


def test_every_example_problem_collected(tmp_path):
  ok = _broken(tmp_path)
  config = _config(tmp_path, num_classes=4, class_names=('a', 'b', 'c', 'd'))
  r = check_data.scan_split(config, 'train')
  # Seven pairs (nomask has none); the two good ones still read and counted.
  assert (r['num_examples'], r['num_ok'], r['num_failed']) == (7, 2, 5)
  problems = {Path(p['file']).name: p['problem'] for p in r['problems']}
  assert len(r['problems']) == 6
  expected = {
      'corrupt.png': r'train/corrupt\.png: cannot read image',
      'trunc.png': r'trainannot/trunc\.png: cannot read image',
      'nomask.png': r'train/nomask\.png.* has no mask',
      'mismatch.png': r'size mismatch: image .*train/mismatch\.png.* 8x6 .*mismatch\.png.* 7x6',
      'outofrange.png': r'trainannot/outofrange\.png: mask values \[9\]',
      'rgbmask.png': r"trainannot/rgbmask\.png: RGB mask .*mask_format='index'",
  }
  assert set(problems) == set(expected)
  for name, pattern in expected.items():
    assert re.search(pattern, problems[name]), (name, problems[name])
  # Sizes and modes count every image that opened (all but corrupt.png).
  assert sum(s['count'] for s in r['sizes']) == 6 and r['modes'] == {'RGB': 6}
  assert r['mask_modes'] == {'L': 5, 'RGB': 1}  # trunc.png's mask did not open.
  pixels, images, ignore, total = _expected(ok.values())
  assert list(r['class_pixels'].values())[:3] == pixels and r['class_pixels']['d'] == 0
  assert list(r['class_images'].values())[:3] == images
  assert (r['ignore_pixels'], r['total_pixels']) == (ignore, total)
  text = check_data.format_report(check_data.scan(config, ['train']))
  for name in expected:
    assert name in text
  assert text.splitlines()[-1].startswith('check_data: 6 problems found (train: 6)')


def test_list_file_problems_collected(tmp_path):
  root = tmp_path / 'root'
  for name in ('a', 'b'):
    _save(root / 'train' / f'{name}.png', _rgb(6, 8))
    _save(root / 'trainannot' / f'{name}.png', _mask(6, 8))
  _save(tmp_path / 'outside.png', _rgb(6, 8))
  (root / 'train.txt').write_text(
      '# header\n'
      'train/a.png trainannot/a.png\n'
      f'{tmp_path / "outside.png"} trainannot/a.png\n'
      'train/../../outside.png trainannot/b.png\n'
      'train/b.png trainannot/nope.png\n'
      'train/b.png\n'
      'train/b.png trainannot/b.png\n')
  r = check_data.scan_split(_config(root, list_file='{split}.txt'), 'train')
  assert (r['num_examples'], r['num_ok']) == (2, 2)
  got = [(Path(p['file']).name, p['problem']) for p in r['problems']]
  assert [f for f, _ in got] == ['train.txt:3', 'train.txt:4', 'train.txt:5', 'train.txt:6']
  assert 'outside.png' in got[0][1] and 'is absolute' in got[0][1]
  assert 'train/../../outside.png' in got[1][1] and 'escapes data.root' in got[1][1]
  assert 'trainannot/nope.png' in got[2][1] and 'does not exist' in got[2][1]
  # A malformed line is named by its number; its text is not echoed (item 8 of issue 15).
  # One field is an image id (Pascal VOC lists); none matches, still not echoed.
  assert 'no image for the id on this line' in got[3][1] and 'train/b.png' not in got[3][1]


def test_palette_colour_not_in_palette(tmp_path):
  palette = ((0, 0, 0), (255, 0, 0), (0, 255, 0))
  idx = np.random.default_rng(0).integers(0, 3, (6, 7))
  for name in ('a', 'b'):
    _save(tmp_path / 'train' / f'{name}.png', _rgb(6, 7))
    colour = np.asarray(palette, np.uint8)[idx]
    if name == 'b':
      colour[2, 3] = (1, 2, 3)
    _save(tmp_path / 'trainannot' / f'{name}.png', colour)
  r = check_data.scan_split(_config(tmp_path, mask_format='palette', palette=palette,
                                    label_map=''), 'train')
  assert (r['num_ok'], r['num_failed']) == (1, 1)
  [p] = r['problems']
  assert p['file'].endswith('trainannot/b.png') and '(1, 2, 3)' in p['problem']
  assert list(r['class_pixels'].values()) == [int((idx == k).sum()) for k in range(3)]


def test_empty_splits_reported(tmp_path):
  _clean(tmp_path / 'data')
  (tmp_path / 'empty' / 'train').mkdir(parents=True)
  (tmp_path / 'empty' / 'trainannot').mkdir()
  cases = [(_config(tmp_path / 'data'), 'train[5:5]', r"'train\[5:5\]'.*selects none of the 3"),
           (_config(tmp_path / 'empty'), 'train', r"'train'.*no image/mask pairs")]
  synthetic = config_lib.base_config()
  synthetic.data.synthetic_train_examples = 4
  cases.append((synthetic, 'train[2:2]', r"'train\[2:2\]' has no examples"))
  for config, split, pattern in cases:
    report = check_data.scan(config, [split])
    r = report['splits'][split]
    assert (r['num_examples'], r['num_ok'], report['num_problems']) == (0, 0, 1)
    assert re.search(pattern, r['problems'][0]['problem']), r['problems']
    text = check_data.format_report(report)
    assert text.splitlines()[-1].startswith('check_data: 1 problem found')


def test_gray_rgba_and_16_bit_images_read_and_counted(tmp_path):
  gray = (np.arange(48, dtype=np.uint8).reshape(6, 8) * 5)
  images = {
      'gray.png': Image.fromarray(gray),
      'rgba.png': Image.fromarray(np.dstack([_rgb(6, 8), np.full((6, 8), 7, np.uint8)])),
      'g16.png': Image.fromarray(gray.astype(np.uint16) * 257),
      'rgb.png': Image.fromarray(_rgb(6, 8)),
  }
  for name, img in images.items():
    _save(tmp_path / 'train' / name, img)
    _save(tmp_path / 'trainannot' / name, _mask(6, 8))
  r = check_data.scan_split(_config(tmp_path), 'train')
  assert (r['num_ok'], r['problems']) == (4, [])
  mode16 = Image.open(tmp_path / 'train' / 'g16.png').mode
  assert mode16.startswith('I')
  assert r['modes'] == {'L': 1, 'RGBA': 1, mode16: 1, 'RGB': 1}
  assert 'repeated to 3 channels' in r['mode_rules']['L']
  assert 'alpha dropped' in r['mode_rules']['RGBA']
  assert 'divided by 257' in r['mode_rules'][mode16]
  text = check_data.format_report(check_data.scan(_config(tmp_path), ['train']))
  assert '| RGBA ' in text and '| L ' in text


def test_synthetic_counts_equal_direct_bincount():
  c = config_lib.base_config()
  c.data.synthetic_size = (24, 32)
  c.data.synthetic_train_examples = 6
  r = check_data.scan_split(config_lib.validate(c), 'train')
  src = sources.make_source(c.data, 'train')
  labels = np.stack([src[i]['label'] for i in range(len(src))])
  want = np.bincount(labels.ravel(), minlength=4)
  assert (r['num_examples'], r['num_ok'], r['problems']) == (6, 6, [])
  assert list(r['class_pixels'].values()) == want[:4].tolist()
  assert r['ignore_pixels'] == int((labels == 255).sum()) and r['total_pixels'] == labels.size
  assert r['modes'] == {'RGB': 6} and r['sizes'] == [{'height': 24, 'width': 32, 'count': 6}]
  assert r['mask_modes'] == {}


def test_folder_source_still_raises_without_problems_list(tmp_path):
  _broken(tmp_path)
  d = _config(tmp_path, num_classes=4, class_names=('a', 'b', 'c', 'd')).data
  with pytest.raises(sources.DataError, match=r'train/nomask\.png.* has no mask'):
    sources.make_source(d, 'train')
  collected = []
  src = sources.make_source(d, 'train', problems=collected)
  assert len(src) == 7 and len(collected) == 1 and 'nomask.png' in collected[0][0]
  (tmp_path / 'train.txt').write_text('train/good0.png trainannot/nope.png\ntrain/good1.png\n')
  d.list_file = '{split}.txt'
  with pytest.raises(sources.DataError, match=r'train\.txt:1: file .*nope\.png.* does not'):
    sources.make_source(d, 'train')
  # Collected lines are skipped; with none left the split is empty, which still raises.
  collected = []
  with pytest.raises(sources.DataError, match='no image/mask pairs'):
    sources.make_source(d, 'train', problems=collected)
  list_file = tmp_path / 'train.txt'
  assert [p for p, _ in collected] == [f'{list_file}:1', f'{list_file}:2']
