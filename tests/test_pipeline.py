"""Train/eval pipelines: process sharding, resume, reshuffle, eval coverage, workers."""

import itertools

import numpy as np
from PIL import Image
import pytest

from segjax import config as config_lib
from segjax.data import pipeline
from segjax.data import sources


def _config(**augment):
  c = config_lib.base_config()
  c.seed = 3
  c.batch_size = 4
  c.eval.batch_size = 4
  c.data.synthetic_size = (24, 24)
  c.data.crop_size = (16, 16)
  c.data.synthetic_train_examples = 10
  c.data.synthetic_val_examples = 7
  c.augment.scale_range = (0.8, 1.25)
  c.augment.rotate_degrees = 10.0
  c.augment.brightness = 0.2
  for k, v in augment.items():
    setattr(c.augment, k, v)
  return c


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_train_batch_format():
  b = pipeline.train_dataset(_config())[0]
  assert set(b) == {'image', 'label'}
  assert b['image'].shape == (4, 16, 16, 3) and b['image'].dtype == np.uint8
  assert b['label'].shape == (4, 16, 16) and b['label'].dtype == np.int32
  assert set(np.unique(b['label']).tolist()) <= {0, 1, 2, 3, 255}


def test_global_batch_independent_of_process_count():
  c = _config()
  one = pipeline.train_dataset(c)
  two = [pipeline.train_dataset(c, process_index=p, process_count=2) for p in range(2)]
  four = [pipeline.train_dataset(c, process_index=p, process_count=4) for p in range(4)]
  for step in (0, 1, 4):
    ref = one[step]
    for shards in (two, four):
      parts = [s[step] for s in shards]
      assert parts[0]['image'].shape[0] == 4 // len(shards)
      for k in ref:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), ref[k])
  with pytest.raises(ValueError, match='batch_size=4 is not divisible .* 3'):
    pipeline.train_dataset(c, process_index=0, process_count=3)


def test_resume_equals_uninterrupted_stream():
  c = _config()
  full = list(itertools.islice(pipeline.train_iterator(c), 5))
  resumed = list(itertools.islice(pipeline.train_iterator(c, start_step=3), 2))
  ds = pipeline.train_dataset(c)
  for step in range(5):
    assert _equal(full[step], ds[step])
  assert _equal(resumed[0], full[3]) and _equal(resumed[1], full[4])
  # Per process too.
  p1 = next(pipeline.train_iterator(c, 2, process_index=1, process_count=2))
  assert _equal(p1, pipeline.train_dataset(c, process_index=1, process_count=2)[2])
  # Another seed gives another stream.
  c.seed = 4
  assert not _equal(pipeline.train_dataset(c)[0], full[0])


def test_each_epoch_is_a_new_permutation():
  # No augmentation and a full-size crop: batch images are the source images.
  c = _config(hflip=False, scale_range=(1.0, 1.0), rotate_degrees=0.0, brightness=0.0)
  c.data.crop_size = (24, 24)
  c.batch_size = 5
  src = sources.make_source(c.data, 'train')
  keys = {src[i]['image'].tobytes(): i for i in range(len(src))}
  assert len(keys) == 10
  ds = pipeline.train_dataset(c)
  order = [keys[img.tobytes()] for step in range(6) for img in ds[step]['image']]
  epochs = [order[0:10], order[10:20], order[20:30]]
  for e in epochs:
    assert sorted(e) == list(range(10))
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
  assert epochs[0] != list(range(10))


def _eval_ids(batches, src):
  keys = {src[i]['image'].tobytes(): i for i in range(len(src))}
  ids, pads = [], 0
  for b in batches:
    assert b['image'].dtype == np.uint8 and b['label'].dtype == np.int32
    assert b['valid'].dtype == bool
    for img, lab, ok in zip(b['image'], b['label'], b['valid']):
      if ok:
        ids.append(keys[img.tobytes()])
      else:
        pads += 1
        assert (lab == 255).all() and (img == 0).all()
  return ids, pads


@pytest.mark.parametrize('process_count,limit', [(1, None), (2, None), (2, 5), (4, None)])
def test_eval_covers_each_example_once(process_count, limit):
  c = _config()
  c.eval.batch_size = 4
  src = sources.make_source(c.data, 'val')
  ids, pads, lengths = [], 0, set()
  for p in range(process_count):
    batches, n = pipeline.eval_batches(c, 'val', process_index=p,
                                       process_count=process_count, limit=limit)
    assert n == (7 if limit is None else limit)
    got = list(batches)
    lengths.add(len(got))
    assert len(got) == len(batches)
    assert all(b['image'].shape[0] == 4 // process_count for b in got)
    i, k = _eval_ids(got, src)
    ids += i
    pads += k
    assert _eval_ids(batches, src)[0] == i  # Re-iterable, same order.
  assert len(lengths) == 1  # Every process runs the same number of batches.
  assert sorted(ids) == list(range(n))
  assert pads == lengths.pop() * 4 - n
  if process_count == 1:
    assert ids == list(range(n))


def test_eval_pads_mixed_sizes_with_ignore(tmp_path):
  sizes = [(10, 12), (14, 9), (8, 8)]
  for i, (h, w) in enumerate(sizes):
    img = np.full((h, w, 3), 50 + i, np.uint8)
    Image.fromarray(img).save(_mk(tmp_path / 'val' / f'{i}.png'))
    Image.fromarray(np.full((h, w), i, np.uint8)).save(_mk(tmp_path / 'valannot' / f'{i}.png'))
  c = config_lib.base_config()
  c.data.name, c.data.root, c.data.num_classes = 'folder', str(tmp_path), 3
  c.eval.batch_size = 2
  batches, n = pipeline.eval_batches(c, 'val')
  got = list(batches)
  assert n == 3 and len(got) == 2
  b0, b1 = got
  assert b0['image'].shape == (2, 14, 12, 3) and b0['valid'].tolist() == [True, True]
  for j, (h, w) in enumerate(sizes[:2]):
    assert (b0['label'][j, :h, :w] == j).all() and (b0['image'][j, :h, :w] == 50 + j).all()
    mask = np.ones((14, 12), bool)
    mask[:h, :w] = False
    assert (b0['label'][j][mask] == 255).all() and (b0['image'][j][mask] == 0).all()
  assert b1['image'].shape == (2, 8, 8, 3) and b1['valid'].tolist() == [True, False]
  assert (b1['label'][0] == 2).all() and (b1['label'][1] == 255).all()
  # With a resize every batch has the resized shape.
  c.data.resize = (6, 6)
  assert {b['image'].shape for b in pipeline.eval_batches(c, 'val')[0]} == {(2, 6, 6, 3)}


def _mk(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  return path


def test_worker_processes_match_threads():
  c = _config()
  c.data.num_workers = 2
  try:
    it = pipeline.train_iterator(c, start_step=1)
    got = list(itertools.islice(it, 3))
  except (OSError, PermissionError, EOFError) as e:
    pytest.skip(f'multiprocessing unavailable in this sandbox: {e!r}')
  it.close()
  ds = pipeline.train_dataset(c)
  for i, b in enumerate(got):
    assert _equal(b, ds[1 + i])


def test_batch_example_names_are_the_examples_the_batch_holds():
  # Without augmentation (crop = image size, no flips or jitter) each training
  # image is a source image unchanged, so the names can be checked by content.
  c = _config(scale_range=(1.0, 1.0), rotate_degrees=0.0, brightness=0.0, hflip=False)
  c.data.crop_size = (24, 24)
  src = sources.make_source(c.data, 'train')
  by_name = {src[i]['name']: src[i]['image'] for i in range(len(src))}
  batches = pipeline.train_dataset(c)
  for step in (0, 2, 3, 7):  # Steps 2..3 straddle the first epoch end (10 examples).
    names = pipeline.batch_example_names(c, step)
    assert len(names) == 4
    for row, name in enumerate(names):
      assert np.array_equal(batches[step]['image'][row], by_name[name])
  assert set(pipeline.batch_example_names(c, 0)) | set(pipeline.batch_example_names(c, 1)) | set(
      pipeline.batch_example_names(c, 2)[:2]) == set(by_name)


@pytest.mark.parametrize('workers', [0, 2])
def test_iterator_state_restores_the_position(workers, tmp_path):
  """grain's iterator state (what checkpoints hold) resumes at the next batch, in
  thread and worker-process mode; a state from the other mode is refused, so
  the loop can fall back to the step-derived position."""
  from segjax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  c = _config()
  c.data.num_workers = workers
  it = pipeline.train_iterator(c, 0)
  for _ in range(3):
    next(it)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=2, keep_best=0, async_save=False)
  state = {'w': np.arange(3.0, dtype=np.float32)}
  ckpt.save(3, state, data_iterator=it)
  it.close()
  abstract = {'w': np.zeros(3, np.float32)}
  fresh = pipeline.train_iterator(c, 0)
  _, meta = ckpt.restore(3, abstract, data_iterator=fresh)
  assert meta['data_restored'] and 'data_error' not in meta
  assert _equal(next(fresh), pipeline.train_dataset(c)[3])
  fresh.close()
  other = _config()
  other.data.num_workers = 2 - workers
  mismatched = pipeline.train_iterator(other, 0)
  _, meta = ckpt.restore(3, abstract, data_iterator=mismatched)
  assert not meta['data_restored'] and 'KeyError' in meta['data_error']
  mismatched.close()
  ckpt.close()
