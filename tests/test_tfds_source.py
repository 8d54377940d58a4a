"""TFDS source and preparation, on a tiny fake Oxford-IIIT Pet; no network, no TF."""

import functools
import http.server
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import threading

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from segjax import config as config_lib
from segjax.data import labels as labels_lib
from segjax.tools import prepare_tfds
from segjax.data import tfds_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (stem, class id, species id, split, (h, w), how the file is stored).
# beagle_116 is in TFDS' list of corrupt samples: always re-encoded.
SAMPLES = [
    ('Abyssinian_1', 1, 1, 'train', (24, 32), 'jpeg'),
    ('Abyssinian_2', 1, 1, 'train', (20, 28), 'cmyk'),
    ('beagle_1', 5, 2, 'train', (18, 22), 'gray'),
    ('beagle_116', 5, 2, 'train', (26, 20), 'jpeg'),
    ('Abyssinian_3', 1, 1, 'test', (16, 30), 'png'),
    ('beagle_2', 5, 2, 'test', (22, 18), 'rgba_png'),
    ('beagle_3', 5, 2, 'test', (30, 16), 'jpeg'),
]
REENCODED = {'Abyssinian_2', 'beagle_1', 'beagle_116', 'Abyssinian_3', 'beagle_2'}

_XML = ('<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>'
        '<object><name>cat</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>10</xmax>'
        '<ymax>12</ymax></bndbox></object></annotation>')
_LIST_HEADER = ('#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n'
                '#SPECIES: 1:Cat 2:Dog\n#BREED ID: 1-25:Cat 1:12:Dog\n'
                '#All images with 1st letter as captial are cat images\n'
                '#images with small first letter are dog images\n')


def _smooth_rgb(h, w, seed):
  # Smooth content keeps JPEG re-encoding error small and predictable.
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  chans = [40 + 150 * xx / w + 10 * seed, 60 + 120 * yy / h, 200 - 80 * (xx + yy) / (h + w)]
  return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)


def _write_fake_pet(root, samples=SAMPLES, broken=()):
  """Extracted layout: root/images/*.jpg, root/annotations/{trimaps,xmls,*.txt}."""
  rng = np.random.default_rng(0)
  os.makedirs(f'{root}/images')
  os.makedirs(f'{root}/annotations/trimaps')
  os.makedirs(f'{root}/annotations/xmls')
  trimaps = {}
  lines = {'train': [], 'test': []}
  for i, (stem, cls, species, split, (h, w), kind) in enumerate(samples):
    rgb = _smooth_rgb(h, w, i)
    path = f'{root}/images/{stem}.jpg'
    if kind == 'jpeg':
      Image.fromarray(rgb).save(path, format='JPEG', quality=90)
    elif kind == 'cmyk':
      Image.fromarray(rgb).convert('CMYK').save(path, format='JPEG', quality=90)
    elif kind == 'gray':
      Image.fromarray(rgb).convert('L').save(path, format='JPEG', quality=90)
    elif kind == 'png':  # PNG data under a .jpg name.
      Image.fromarray(rgb).save(path, format='PNG')
    elif kind == 'rgba_png':
      Image.fromarray(np.dstack([rgb, np.full((h, w), 128, np.uint8)])).save(path, format='PNG')
    if stem in broken:  # Cut the file: Pillow reports it as truncated.
      data = open(path, 'rb').read()
      open(path, 'wb').write(data[:len(data) // 2])
    trimap = rng.integers(1, 4, (h, w), dtype=np.uint8)
    Image.fromarray(trimap).save(f'{root}/annotations/trimaps/{stem}.png')
    trimaps[stem] = trimap
    if split == 'train':
      with open(f'{root}/annotations/xmls/{stem}.xml', 'w') as f:
        f.write(_XML.format(w=w, h=h))
    lines[split].append(f'{stem} {cls} {species} 1\n')
  a = f'{root}/annotations'
  with open(f'{a}/list.txt', 'w') as f:
    f.write(_LIST_HEADER + ''.join(lines['train'] + lines['test']))
  with open(f'{a}/trainval.txt', 'w') as f:
    f.write(''.join(lines['train']))
  with open(f'{a}/test.txt', 'w') as f:
    f.write(''.join(lines['test']) + '\n')
  return trimaps


def _pack(root, out_dir):
  """images.tar.gz / annotations.tar.gz as distributed (top folder inside)."""
  os.makedirs(out_dir, exist_ok=True)
  for name in ('images', 'annotations'):
    with tarfile.open(f'{out_dir}/{name}.tar.gz', 'w:gz') as tar:
      tar.add(f'{root}/{name}', arcname=name)


def _expected_rgb(raw_root, stem):
  with Image.open(f'{raw_root}/images/{stem}.jpg') as im:
    return np.asarray(im.convert('RGB'))


def _data_config(root):
  c = config_lib.base_config()
  c.data.name = 'tfds'
  c.data.tfds_name = 'oxford_iiit_pet'
  c.data.root = str(root)
  c.data.num_classes = 3
  c.data.label_map = '1:0,2:1,3:2'
  return c.data


def _mapper():
  return labels_lib.LabelMapper(labels_lib.LabelSpec(num_classes=3), '1:0,2:1,3:2')


@pytest.fixture(scope='module')
def pet(tmp_path_factory):
  """Fake pet packed as archives in a manual dir, prepared via `prepare()`."""
  tfds.disable_progress_bar()
  base = tmp_path_factory.mktemp('pet')
  raw, manual, data_dir = base / 'raw', base / 'manual', base / 'tfds'
  trimaps = _write_fake_pet(raw)
  _pack(raw, manual)
  result = prepare_tfds.prepare('oxford_iiit_pet', str(data_dir), manual_dir=str(manual))
  return {'raw': raw, 'manual': manual, 'data_dir': data_dir, 'trimaps': trimaps,
          'result': result}


def _check_split(source, split, pet):
  stems = {s[0] for s in SAMPLES if s[3] == split}
  assert len(source) == len(stems)
  seen = set()
  for i in range(len(source)):
    item = source[i]
    stem = item['name'][:-len('.jpg')]
    seen.add(stem)
    image, label = item['image'], item['label']
    assert image.dtype == np.uint8 and label.dtype == np.uint8
    expected = _expected_rgb(pet['raw'], stem)
    assert image.shape == expected.shape and image.ndim == 3
    if stem in REENCODED:
      assert np.abs(image.astype(int) - expected).mean() < 3, stem
    else:  # Stored byte for byte: decodes to exactly the original pixels.
      np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(label, pet['trimaps'][stem] - 1)
  assert seen == stems


def test_prepare_and_read_both_splits(pet):
  result = pet['result']
  assert result.split_sizes == {'train': 4, 'test': 3}
  assert set(result.reencoded) == REENCODED
  assert result.skipped == [] and not result.reused
  assert result.data_dir == str(pet['data_dir'])
  for split in ('train', 'test'):
    source = tfds_source.make_tfds_source(_data_config(pet['data_dir']), split, _mapper())
    _check_split(source, split, pet)


def test_prepare_again_reuses(pet):
  result = prepare_tfds.prepare('oxford_iiit_pet', str(pet['data_dir']),
                                manual_dir=str(pet['manual']))
  assert result.reused and result.split_sizes == {'train': 4, 'test': 3}


def test_tfrecord_only_dataset_needs_overwrite(pet, tmp_path):
  # As if prepared by stock TFDS with TF (tfrecord): no random access.
  data_dir = tmp_path / 'tfds'
  shutil.copytree(pet['data_dir'] / 'oxford_iiit_pet', data_dir / 'oxford_iiit_pet')
  info_path = data_dir / 'oxford_iiit_pet' / '4.0.0' / 'dataset_info.json'
  info = json.loads(info_path.read_text())
  info['fileFormat'] = 'tfrecord'
  info_path.write_text(json.dumps(info))
  with pytest.raises(tfds_source.TfdsNotPreparedError, match='--overwrite'):
    tfds_source.make_tfds_source(_data_config(data_dir), 'train', _mapper())
  with pytest.raises(ValueError, match='--overwrite'):
    prepare_tfds.prepare('oxford_iiit_pet', str(data_dir), manual_dir=str(pet['manual']))
  result = prepare_tfds.prepare('oxford_iiit_pet', str(data_dir), manual_dir=str(pet['manual']),
                                overwrite=True)
  assert not result.reused and result.split_sizes == {'train': 4, 'test': 3}
  assert len(tfds_source.make_tfds_source(_data_config(data_dir), 'test', _mapper())) == 3


def test_slices_pickle_and_plain_tfds_reader(pet):
  cfg = _data_config(pet['data_dir'])
  full = tfds_source.make_tfds_source(cfg, 'train', _mapper())
  head = tfds_source.make_tfds_source(cfg, 'train[:50%]', _mapper())
  tail = tfds_source.make_tfds_source(cfg, 'train[2:]', _mapper())
  assert (len(head), len(tail)) == (2, 2)
  assert [head[i]['name'] for i in range(2)] + [tail[i]['name'] for i in range(2)] == [
      full[i]['name'] for i in range(4)]
  clone = pickle.loads(pickle.dumps(full))
  np.testing.assert_array_equal(clone[1]['label'], full[1]['label'])
  with pytest.raises(IndexError):
    full[4]
  # Plain TFDS reads what segjax prepared, all stock features included.
  ds = tfds.data_source('oxford_iiit_pet', split='train', data_dir=str(pet['data_dir']),
                        download=False)
  ex = next(e for e in ds if e['file_name'] == b'Abyssinian_1.jpg')
  assert (ex['label'], ex['species']) == (0, 0)
  np.testing.assert_allclose(ex['head_bbox'], [3 / 24, 2 / 32, 12 / 24, 10 / 32], rtol=1e-6)
  assert ex['segmentation_mask'].shape == (24, 32, 1)


def test_grain_worker_process(pet):
  from absl import flags  # pylint: disable=g-import-not-at-top
  import grain  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; pytest parses none.
    flags.FLAGS.mark_as_parsed()
  source = tfds_source.make_tfds_source(_data_config(pet['data_dir']), 'test', _mapper())
  ds = grain.MapDataset.source(source).map(lambda x: x['name']).to_iter_dataset()
  ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=1))
  assert sorted(ds) == sorted(f'{s[0]}.jpg' for s in SAMPLES if s[3] == 'test')


def test_cli_from_extracted_folders_without_tensorflow(tmp_path):
  raw = tmp_path / 'raw'
  _write_fake_pet(raw)
  env = dict(os.environ, PYTHONPATH=REPO)
  cli = subprocess.run(
      [sys.executable, '-m', 'segjax.tools.prepare_tfds', '--name=oxford_iiit_pet',
       f'--data_dir={tmp_path / "tfds"}', f'--manual_dir={raw}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert cli.returncode == 0, cli.stderr
  assert 'test=3, train=4' in cli.stdout
  assert f'--config.data.root={tmp_path / "tfds"}' in cli.stdout
  read = (
      'import sys\n'
      'from segjax import config\n'
      'from segjax.data import labels, tfds_source\n'
      'c = config.base_config().data\n'
      f'c.root = {str(tmp_path / "tfds")!r}\n'
      'm = labels.LabelMapper(labels.LabelSpec(3), "1:0,2:1,3:2")\n'
      's = tfds_source.make_tfds_source(c, "test", m)\n'
      'print(len(s), s[0]["name"], s[0]["label"].max())\n'
      'assert "tensorflow" not in sys.modules, "TensorFlow was imported"\n')
  out = subprocess.run([sys.executable, '-c', read], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  n, name, max_label = out.stdout.split()
  assert n == '3' and name.endswith('.jpg') and int(max_label) <= 2


def test_bad_image_is_an_error_or_counted_skip(tmp_path):
  raw = tmp_path / 'raw'
  _write_fake_pet(raw, broken=('beagle_3',))
  with pytest.raises(prepare_tfds.BadImageError, match=r'beagle_3\.jpg.*\n.*--skip_bad_images'):
    prepare_tfds.prepare('oxford_iiit_pet', str(tmp_path / 'a'), manual_dir=str(raw))
  result = prepare_tfds.prepare('oxford_iiit_pet', str(tmp_path / 'b'), manual_dir=str(raw),
                                skip_bad_images=True)
  assert result.split_sizes == {'train': 4, 'test': 2}
  assert [os.path.basename(p) for p in result.skipped] == ['beagle_3.jpg']


def test_download_path_from_local_server(tmp_path, monkeypatch):
  raw, served = tmp_path / 'raw', tmp_path / 'served'
  _write_fake_pet(raw)
  _pack(raw, served)

  class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), functools.partial(Quiet, directory=str(served)))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    url = f'http://127.0.0.1:{server.server_address[1]}'
    monkeypatch.setattr(prepare_tfds.PetBuilder, 'URLS',
                        {a: f'{url}/{a}.tar.gz' for a in ('images', 'annotations')})
    result = prepare_tfds.prepare('oxford_iiit_pet', str(tmp_path / 'tfds'))
  finally:
    server.shutdown()
    server.server_close()
  assert result.split_sizes == {'train': 4, 'test': 3}


def test_missing_data_says_how_to_prepare(tmp_path):
  data_dir = str(tmp_path / 'nothing_here')
  with pytest.raises(tfds_source.TfdsNotPreparedError) as e:
    tfds_source.make_tfds_source(_data_config(data_dir), 'train[:80%]', _mapper())
  assert isinstance(e.value, FileNotFoundError)
  msg = str(e.value)
  for part in (data_dir, "'train[:80%]'",
               f'python -m segjax.tools.prepare_tfds --name=oxford_iiit_pet --data_dir={data_dir}\n',
               f'--data_dir={data_dir} --manual_dir=MANUAL_DIR',
               'images.tar.gz', 'annotations.tar.gz', f'--config.data.root={data_dir}'):
    assert part in msg
  assert not os.path.exists(data_dir) or not os.listdir(data_dir)  # Nothing downloaded.


def test_unknown_and_unpreparable_datasets(tmp_path):
  cfg = _data_config(tmp_path)
  cfg.tfds_name = 'mnist'
  with pytest.raises(ValueError, match="supported: .*'oxford_iiit_pet'"):
    tfds_source.make_tfds_source(cfg, 'train', _mapper())
  with pytest.raises(ValueError, match='tfds build scene_parse150 .*--file_format=array_record'):
    prepare_tfds.prepare('scene_parse150', str(tmp_path))
  with pytest.raises(FileNotFoundError, match='neither images.tar.gz'):
    prepare_tfds.prepare('oxford_iiit_pet', str(tmp_path / 'x'), manual_dir=str(tmp_path))


def test_tfds_mock_data(tmp_path):
  # tfds.testing.mock_data works without TF for data sources: it fakes
  # `as_data_source` with random examples. It draws every image feature's
  # height and width independently, so image and mask never line up and the
  # source reports that (its shape check) instead of returning misaligned data.
  cfg = _data_config(tmp_path)
  with tfds.testing.mock_data(num_examples=5, max_value=4,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    source = tfds_source.make_tfds_source(cfg, 'train', _mapper())
    assert len(source) == 5
    with pytest.raises(ValueError, match=r'oxford_iiit_pet/train\[0\]: image is'):
      source[0]
