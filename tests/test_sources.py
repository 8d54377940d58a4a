"""Sources: folder layouts, decoding rules, every error, synthetic shapes, real data."""

from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from segjax import config as config_lib
from segjax.data import labels as labels_lib
from segjax.data import sources
from segjax.data import synthetic

SHARED = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


def _rgb(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def _save(path, array_or_image, **kw):
  path.parent.mkdir(parents=True, exist_ok=True)
  img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(
      array_or_image)
  img.save(path, **kw)
  return path


def _data(root, **kw):
  d = config_lib.base_config().data
  d.name = 'folder'
  d.root = str(root)
  for k, v in kw.items():
    setattr(d, k, v)
  return d


def _camvid_like(root, split='train', n=3, h=12, w=16):
  masks = []
  for i in range(n):
    _save(root / split / f'img{i}.png', _rgb(h, w, i))
    m = np.random.default_rng(100 + i).integers(0, 12, (h, w)).astype(np.uint8)
    m[0, 0] = 11
    _save(root / f'{split}annot' / f'img{i}.png', m)
    masks.append(m)
  return masks


# --------------------------------------------------------------------------- layouts


def test_camvid_style_folders(tmp_path):
  masks = _camvid_like(tmp_path)
  d = _data(tmp_path, num_classes=11, label_map='11:255')
  src = sources.make_source(d, 'train')
  assert len(src) == 3
  for i in range(3):
    r = src[i]
    assert r['name'] == f'train/img{i}.png'
    np.testing.assert_array_equal(r['image'], _rgb(12, 16, i))
    assert r['label'].dtype == np.uint8
    np.testing.assert_array_equal(r['label'], np.where(masks[i] == 11, 255, masks[i]))
  tail = sources.make_source(d, 'train[1:]')
  assert [tail[i]['name'] for i in range(len(tail))] == ['train/img1.png', 'train/img2.png']
  assert len(sources.make_source(d, 'train[-1:]')) == 1
  assert len(sources.make_source(d, 'train[:-1]')) == 2


def test_list_file(tmp_path):
  masks = _camvid_like(tmp_path, 'val')
  (tmp_path / 'val.txt').write_text(
      '# comment\nval/img2.png valannot/img2.png\n\nval/img0.png valannot/img0.png\n')
  d = _data(tmp_path, list_file='{split}.txt', num_classes=11, label_map='11:255')
  src = sources.make_source(d, 'val')
  assert len(src) == 2
  assert src[0]['name'] == 'val/img0.png' and src[1]['name'] == 'val/img2.png'
  np.testing.assert_array_equal(src[1]['label'], np.where(masks[2] == 11, 255, masks[2]))
  assert sources.make_source(d, 'val[1:]')[0]['name'] == 'val/img2.png'


def test_isbi_style_binary_with_natural_sort(tmp_path):
  for i in range(12):
    img = np.full((8, 8), 10 * i, np.uint8)
    _save(tmp_path / 'train' / 'image' / f'{i}.png', img)
    _save(tmp_path / 'train' / 'label' / f'{i}.png',
          np.where(np.eye(8, dtype=bool), 0, 255).astype(np.uint8))
  d = _data(tmp_path, image_dir='{split}/image', mask_dir='{split}/label', num_classes=2,
            label_map='0:0,255:1')
  src = sources.make_source(d, 'train[10:]')
  assert [src[i]['name'] for i in range(2)] == ['train/image/10.png', 'train/image/11.png']
  r = src[0]
  assert r['image'].shape == (8, 8, 3) and (r['image'] == 100).all()
  np.testing.assert_array_equal(r['label'], 1 - np.eye(8, dtype=np.uint8))


def test_mask_suffix_in_same_folder(tmp_path):
  _save(tmp_path / 'images' / 'a.jpg', _rgb(8, 8))
  _save(tmp_path / 'images' / 'a_mask.png', np.ones((8, 8), np.uint8))
  d = _data(tmp_path, image_dir='images', mask_dir='images', mask_suffix='_mask.png',
            num_classes=2)
  src = sources.make_source(d, 'train')
  assert len(src) == 1 and src[0]['name'] == 'images/a.jpg'
  assert (src[0]['label'] == 1).all()


def test_palette_masks(tmp_path):
  palette = ((0, 0, 0), (255, 0, 0), (0, 255, 0))
  idx = np.random.default_rng(0).integers(0, 3, (6, 7))
  _save(tmp_path / 'train' / 'a.png', _rgb(6, 7))
  _save(tmp_path / 'trainannot' / 'a.png', np.asarray(palette, np.uint8)[idx])
  d = _data(tmp_path, mask_format='palette', palette=palette, num_classes=3)
  np.testing.assert_array_equal(sources.make_source(d, 'train')[0]['label'], idx)
  bad = np.asarray(palette, np.uint8)[idx]
  bad[2, 3] = (1, 2, 3)
  _save(tmp_path / 'trainannot' / 'a.png', bad)
  with pytest.raises(ValueError, match=r'a\.png.*\(1, 2, 3\)'):
    sources.make_source(d, 'train')[0]
  # A void colour maps to the ignore label; other unknown colours stay errors.
  void = np.asarray(palette, np.uint8)[idx]
  void[1, 1] = void[4, 5] = (9, 9, 9)
  _save(tmp_path / 'trainannot' / 'a.png', void)
  d.void_color = (9, 9, 9)
  want = idx.copy()
  want[1, 1] = want[4, 5] = 255
  np.testing.assert_array_equal(sources.make_source(d, 'train')[0]['label'], want)


def test_p_mode_mask_gives_indices_not_colours(tmp_path):
  idx = np.random.default_rng(0).integers(0, 4, (6, 7)).astype(np.uint8)
  mask = Image.fromarray(idx, mode='P')
  mask.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200, 90, 90, 90] + [0] * 756)
  _save(tmp_path / 'train' / 'a.png', _rgb(6, 7))
  _save(tmp_path / 'trainannot' / 'a.png', mask)
  assert Image.open(tmp_path / 'trainannot' / 'a.png').mode == 'P'
  r = sources.make_source(_data(tmp_path, num_classes=4), 'train')[0]
  np.testing.assert_array_equal(r['label'], idx)


def test_rgb_mask_with_index_format(tmp_path):
  idx = np.random.default_rng(0).integers(0, 4, (6, 7)).astype(np.uint8)
  _save(tmp_path / 'train' / 'a.png', _rgb(6, 7))
  _save(tmp_path / 'trainannot' / 'a.png', np.repeat(idx[..., None], 3, -1))
  src = sources.make_source(_data(tmp_path, num_classes=4), 'train')
  np.testing.assert_array_equal(src[0]['label'], idx)
  colour = np.repeat(idx[..., None], 3, -1)
  colour[0, 0] = (1, 2, 3)
  _save(tmp_path / 'trainannot' / 'a.png', colour)
  with pytest.raises(ValueError, match=r"trainannot/a\.png.*mask_format='palette'"):
    src[0]


def test_16_bit_mask_and_large_ignore(tmp_path):
  raw = np.array([[0, 1], [1000, 2]], np.uint16)
  _save(tmp_path / 'train' / 'a.png', _rgb(2, 2))
  _save(tmp_path / 'trainannot' / 'a.png', raw)
  d = _data(tmp_path, num_classes=3, ignore_label=1000)
  label = sources.make_source(d, 'train')[0]['label']
  assert label.dtype == np.int32
  np.testing.assert_array_equal(label, raw.astype(np.int32))


def test_image_decoding_rules(tmp_path):
  gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
  rgb = _rgb(6, 8)
  cases = {
      'gray.png': (Image.fromarray(gray), np.repeat(gray[..., None], 3, -1)),
      'rgba.png': (Image.fromarray(np.dstack([rgb, np.full((6, 8), 7, np.uint8)])), rgb),
      'la.png': (Image.fromarray(gray).convert('LA'), np.repeat(gray[..., None], 3, -1)),
      'g16.png': (Image.fromarray(gray.astype(np.uint16) * 257),
                  np.repeat(gray[..., None], 3, -1)),
      'pal.png': (Image.fromarray(rgb).convert('P', palette=Image.Palette.ADAPTIVE), None),
      'cmyk.tif': (Image.fromarray(rgb).convert('CMYK'), None),
      'float.tif': (Image.fromarray(gray.astype(np.float32) / 255), np.repeat(
          gray[..., None], 3, -1)),
  }
  for fname, (img, want) in cases.items():
    _save(tmp_path / 'train' / fname, img)
    _save(tmp_path / 'trainannot' / (Path(fname).stem + '.png'), np.zeros((6, 8), np.uint8))
  src = sources.make_source(_data(tmp_path), 'train')
  out = {Path(src[i]['name']).name: src[i]['image'] for i in range(len(src))}
  assert set(out) == set(cases)
  for fname, (img, want) in cases.items():
    assert out[fname].shape == (6, 8, 3) and out[fname].dtype == np.uint8, fname
    if want is None:  # Palette / CMYK: same as PIL's own RGB conversion.
      want = np.asarray(img.convert('RGB'))
    np.testing.assert_array_equal(out[fname], want, err_msg=fname)
  assert Image.open(tmp_path / 'train' / 'g16.png').mode.startswith('I')


def test_jpeg_images(tmp_path):
  _save(tmp_path / 'train' / 'a.jpg', _rgb(16, 16), quality=90)
  _save(tmp_path / 'trainannot' / 'a.png', np.zeros((16, 16), np.uint8))
  r = sources.make_source(_data(tmp_path), 'train')[0]
  assert r['image'].shape == (16, 16, 3) and r['image'].dtype == np.uint8


# --------------------------------------------------------------------------- errors


def test_missing_mask(tmp_path):
  _camvid_like(tmp_path)
  (tmp_path / 'trainannot' / 'img1.png').unlink()
  with pytest.raises(ValueError, match=r'train/img1\.png.*no mask.*trainannot/img1\.png'):
    sources.make_source(_data(tmp_path, num_classes=12), 'train')


def test_size_mismatch(tmp_path):
  _save(tmp_path / 'train' / 'a.png', _rgb(10, 12))
  _save(tmp_path / 'trainannot' / 'a.png', np.zeros((10, 11), np.uint8))
  src = sources.make_source(_data(tmp_path), 'train')
  with pytest.raises(ValueError, match=r'train/a\.png.*12x10.*trainannot/a\.png.*11x10'):
    src[0]


def test_corrupt_and_truncated_images(tmp_path):
  _camvid_like(tmp_path, n=2, h=64, w=64)
  (tmp_path / 'train' / 'img0.png').write_bytes(b'not a png at all')
  data = (tmp_path / 'train' / 'img1.png').read_bytes()
  (tmp_path / 'train' / 'img1.png').write_bytes(data[:len(data) // 2])
  src = sources.make_source(_data(tmp_path, num_classes=12), 'train')
  with pytest.raises(ValueError, match=r'train/img0\.png: cannot read image'):
    src[0]
  with pytest.raises(ValueError, match=r'train/img1\.png: cannot read image'):
    src[1]


def test_mask_values_out_of_range(tmp_path):
  _save(tmp_path / 'train' / 'a.png', _rgb(4, 4))
  m = np.zeros((4, 4), np.uint8)
  m[1, 1] = 7
  _save(tmp_path / 'trainannot' / 'a.png', m)
  src = sources.make_source(_data(tmp_path, num_classes=4), 'train')
  with pytest.raises(ValueError, match=r'trainannot/a\.png: mask values \[7\]'):
    src[0]


def test_empty_split(tmp_path):
  (tmp_path / 'train').mkdir()
  (tmp_path / 'trainannot').mkdir()
  with pytest.raises(ValueError, match=r"'train'.*no image/mask pairs.*train"):
    sources.make_source(_data(tmp_path), 'train')
  (tmp_path / 'train.txt').write_text('# nothing\n')
  with pytest.raises(ValueError, match=r"'train'.*no image/mask pairs.*train\.txt"):
    sources.make_source(_data(tmp_path, list_file='{split}.txt'), 'train')
  _camvid_like(tmp_path, n=2)
  with pytest.raises(ValueError, match=r"'train\[5:\]'.*selects none of the 2"):
    sources.make_source(_data(tmp_path, num_classes=12), 'train[5:]')


def test_list_file_rejects_absolute_and_escaping_paths(tmp_path):
  root = tmp_path / 'root'
  _camvid_like(root, n=1)
  _save(tmp_path / 'outside.png', _rgb(12, 16))
  d = _data(root, list_file='{split}.txt', num_classes=12)
  (root / 'train.txt').write_text(f'{tmp_path / "outside.png"} trainannot/img0.png\n')
  with pytest.raises(ValueError, match=r'train\.txt:1: path .*outside\.png.* is absolute'):
    sources.make_source(d, 'train')
  (root / 'train.txt').write_text('train/../../outside.png trainannot/img0.png\n')
  with pytest.raises(ValueError, match=r'train\.txt:1: path .*outside\.png.* escapes'):
    sources.make_source(d, 'train')
  (root / 'train.txt').write_text('train/img0.png trainannot/nope.png\n')
  with pytest.raises(ValueError, match=r'train\.txt:1: file .*nope\.png.* does not exist'):
    sources.make_source(d, 'train')
  (root / 'train.txt').write_text('train/img0.png trainannot/img0.png x\n')
  with pytest.raises(ValueError, match=r'train\.txt:1: expected'):
    sources.make_source(d, 'train')
  # One field is an image id under data.image_dir (Pascal VOC's lists); '..' is refused.
  (root / 'train.txt').write_text('../train/img0\n')
  with pytest.raises(ValueError, match=r"train\.txt:1: expected one image id.*contains '\.\.'"):
    sources.make_source(d, 'train')


def test_missing_root_and_folders(tmp_path):
  with pytest.raises(ValueError, match=r'data\.root .*nope.* does not exist'):
    sources.make_source(_data(tmp_path / 'nope'), 'train')
  with pytest.raises(ValueError, match=r'data\.image_dir folder .*train.* does not exist'):
    sources.make_source(_data(tmp_path), 'train')
  with pytest.raises(ValueError, match=r'list file .*train\.txt.* does not exist'):
    sources.make_source(_data(tmp_path, list_file='{split}.txt'), 'train')


def test_bad_split_string():
  with pytest.raises(ValueError, match='split'):
    sources.parse_split('train[a:b]')
  assert sources.parse_split('val[10:20]') == ('val', slice(10, 20))
  assert sources.parse_split('train[-5:]') == ('train', slice(-5, None))


def test_label_spec_wrapper():
  d = config_lib.base_config().data
  assert sources.label_spec(d) == labels_lib.spec_from_config(d)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_valid():
  a = synthetic.SyntheticShapes(12, (32, 40), num_classes=4, split='train')
  b = synthetic.SyntheticShapes(12, (32, 40), num_classes=4, split='train')
  for i in (0, 5):
    np.testing.assert_array_equal(a[i]['image'], b[i]['image'])
    np.testing.assert_array_equal(a[i]['label'], b[i]['label'])
  assert not np.array_equal(a[0]['image'], a[1]['image'])
  seen = set()
  for i in range(12):
    r = a[i]
    assert r['image'].shape == (32, 40, 3) and r['image'].dtype == np.uint8
    assert r['label'].shape == (32, 40) and r['label'].dtype == np.uint8
    assert r['label'].max() < 4
    seen |= set(np.unique(r['label']).tolist())
  assert seen == {0, 1, 2, 3}


def test_synthetic_splits_and_seeds_differ():
  tr = synthetic.SyntheticShapes(2, (32, 32), num_classes=4, split='train')
  va = synthetic.SyntheticShapes(2, (32, 32), num_classes=4, split='val')
  s1 = synthetic.SyntheticShapes(2, (32, 32), num_classes=4, split='train', seed=1)
  assert not np.array_equal(tr[0]['image'], va[0]['image'])
  assert not np.array_equal(tr[0]['image'], s1[0]['image'])


def test_synthetic_many_classes_and_boundary_ignore():
  src = synthetic.SyntheticShapes(20, (48, 48), num_classes=12, split='train',
                                  ignore_label=255, ignore_boundary=True)
  labels = np.stack([src[i]['label'] for i in range(20)])
  values = set(np.unique(labels).tolist())
  assert 255 in values and values - {255} <= set(range(12))
  assert len(values - {255}) >= 8
  plain = synthetic.SyntheticShapes(20, (48, 48), num_classes=12, split='train')
  ref = np.stack([plain[i]['label'] for i in range(20)])
  # The band only replaces boundary pixels; elsewhere labels are unchanged.
  np.testing.assert_array_equal(labels[labels != 255], ref[labels != 255])
  assert (labels == 255).mean() < 0.15


def test_synthetic_via_make_source():
  d = config_lib.base_config().data
  d.synthetic_size = (16, 16)
  d.synthetic_train_examples = 10
  d.synthetic_val_examples = 4
  assert len(sources.make_source(d, 'train')) == 10
  assert len(sources.make_source(d, 'val')) == 4
  assert len(sources.make_source(d, 'test')) == 4
  tail = sources.make_source(d, 'train[7:]')
  assert len(tail) == 3
  full = sources.make_source(d, 'train')
  np.testing.assert_array_equal(tail[0]['image'], full[7]['image'])
  assert tail[0]['name'] == full[7]['name']


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (SHARED / 'camvid').is_dir(),
                    reason=f'CamVid not found at {SHARED / "camvid"}')
def test_camvid_real():
  d = _data(SHARED / 'camvid', num_classes=11, label_map='11:255')
  train = sources.make_source(d, 'train')
  val = sources.make_source(d, 'val')
  assert (len(train), len(val)) == (367, 101)
  for src in (train, val):
    for i in (0, len(src) - 1):
      r = src[i]
      assert r['image'].shape == (360, 480, 3) and r['label'].shape == (360, 480)
    # Every mask (masks only: decoding all images would be slow).
    values = set()
    for _, mask_path in src.pairs:
      raw = sources.decode_mask(Image.open(mask_path), name=str(mask_path))
      values |= set(np.unique(src.mapper(raw, name=str(mask_path))).tolist())
    assert values <= set(range(11)) | {255} and 255 in values
  listed = sources.make_source(_data(SHARED / 'camvid', list_file='{split}.txt',
                                     num_classes=11, label_map='11:255'), 'val')
  assert len(listed) == 101 and listed[0]['name'] == val[0]['name']


@pytest.mark.skipif(not (SHARED / 'isbi_membrane').is_dir(),
                    reason=f'ISBI membrane data not found at {SHARED / "isbi_membrane"}')
def test_isbi_real():
  d = _data(SHARED / 'isbi_membrane', image_dir='{split}/image', mask_dir='{split}/label',
            num_classes=2, label_map='0:0,255:1')
  val = sources.make_source(d, 'train[25:]')
  assert len(val) == 5
  assert [val[i]['name'] for i in range(5)] == [f'train/image/{i}.png' for i in range(25, 30)]
  for i in range(5):
    r = val[i]
    assert r['image'].shape == (512, 512, 3)
    assert set(np.unique(r['label']).tolist()) <= {0, 1}
  assert len(sources.make_source(d, 'train[:25]')) == 25


def test_joined_splits_concatenate_their_parts():
  sources_lib = sources
  c = config_lib.base_config()
  c.data.synthetic_train_examples, c.data.synthetic_val_examples = 6, 4
  train = sources_lib.make_source(c.data, 'train')
  val = sources_lib.make_source(c.data, 'val')
  joined = sources_lib.make_source(c.data, 'train[:3]+val[1:]')
  assert len(joined) == 3 + 3
  expected = [train[0], train[1], train[2], val[1], val[2], val[3]]
  for got, want in zip([joined[i] for i in range(len(joined))], expected):
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])
  with pytest.raises(IndexError):
    joined[6]
  with pytest.raises(ValueError, match='empty part'):
    sources_lib.make_source(c.data, 'train+')
