"""Augmentation on the device (segjax/data/device_augment.py) against the host
path (segjax/data/transforms.py), and the reader threads of the pipeline."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import config as config_lib
from segjax.data import device_augment
from segjax.data import pipeline
from segjax.data import transforms

H, W, CROP, N = 40, 48, (24, 24), 300
IGNORE = 255


def _config(**aug):
  c = config_lib.base_config()
  c.data.crop_size = CROP
  c.data.augment_on = 'device'
  c.augment.scale_range = aug.pop('scale_range', (0.75, 1.5))
  c.augment.hflip = aug.pop('hflip', True)
  c.augment.vflip = aug.pop('vflip', False)
  for k, v in aug.items():
    c.augment[k] = v
  return config_lib.validate(c)


def _coordinate_example():
  """R = 5 * row, G = 5 * column, B = 255 on real pixels (0 on padding);
  labels: the row index and the column index."""
  rows, cols = np.mgrid[:H, :W]
  image = np.stack([5 * rows, 5 * cols, np.full_like(rows, 255)], -1).astype(np.uint8)
  return image, rows.astype(np.uint8), cols.astype(np.uint8)


@pytest.fixture(scope='module')
def device_outputs():
  """N device-augmented copies of the coordinate example, with both labels."""
  config = _config(scale_range=(0.5, 1.5), vflip=True)
  p = device_augment.params_from_config(config)
  image, row_label, col_label = _coordinate_example()
  keys = device_augment.example_keys(0, jnp.int32(3), N)
  fn = jax.jit(lambda b, k: device_augment.augment_batch(b, k, p))
  size = np.tile(np.asarray([[H, W]], np.int32), (N, 1))
  out_r = fn({'image': np.tile(image[None], (N, 1, 1, 1)),
              'label': np.tile(row_label[None], (N, 1, 1)), 'size': size}, keys)
  out_c = fn({'image': np.tile(image[None], (N, 1, 1, 1)),
              'label': np.tile(col_label[None], (N, 1, 1)), 'size': size}, keys)
  return np.asarray(out_r['image']), np.asarray(out_r['label']), np.asarray(out_c['label'])


def test_image_and_mask_stay_aligned(device_outputs):
  images, row_labels, col_labels = device_outputs
  assert images.shape == (N, *CROP, 3) and row_labels.shape == (N, *CROP)
  real = images[..., 2] == 255
  # Padding is ignore in the mask and 0 in the image, nowhere else.
  assert np.array_equal(real, row_labels != IGNORE)
  assert np.array_equal(real, col_labels != IGNORE)
  assert not real.all(axis=(1, 2)).all() and real.any()  # Both cases occur (scale < 1).
  # The mask's source pixel (nearest) is within one pixel of the image's
  # (bilinear) source coordinate, through scale, crop and both flips.
  r = images[..., 0].astype(np.float32) / 5
  c = images[..., 1].astype(np.float32) / 5
  assert np.abs(r - row_labels)[real].max() <= 1.0
  assert np.abs(c - col_labels)[real].max() <= 1.0


def _statistics(images):
  """Per output: (horizontal flip, pixels per source column, first source
  column) read from the G channel of real pixels."""
  flips, scales, starts = [], [], []
  for img in images:
    real = img[..., 2] == 255
    row = int(np.argmax(real.any(1)))
    g = img[row, real[row], 1].astype(np.float64) / 5
    n = g.size
    if n < 6:
      continue
    slope = np.polyfit(np.arange(1, n - 1), g[1:-1], 1)[0]  # Interior pixels.
    flips.append(slope < 0)
    scales.append(1 / abs(slope))
    starts.append(g.max() if slope < 0 else g.min())
  return np.asarray(flips), np.asarray(scales), np.asarray(starts)


def _ks(a, b):
  grid = np.sort(np.concatenate([a, b]))
  fa = np.searchsorted(np.sort(a), grid, side='right') / a.size
  fb = np.searchsorted(np.sort(b), grid, side='right') / b.size
  return np.max(np.abs(fa - fb))


def test_random_draws_follow_the_host_distributions():
  config = _config(scale_range=(0.75, 1.5))
  image, row_label, _ = _coordinate_example()
  host = transforms.TrainTransform(config)
  host_out = np.stack([host.random_map({'image': image, 'label': row_label},
                                       np.random.default_rng(i))['image'] for i in range(N)])
  p = device_augment.params_from_config(config)
  keys = device_augment.example_keys(1, jnp.int32(0), N)
  dev_out = np.asarray(jax.jit(lambda b, k: device_augment.augment_batch(b, k, p))(
      {'image': np.tile(image[None], (N, 1, 1, 1)), 'label': np.tile(row_label[None], (N, 1, 1)),
       'size': np.tile(np.asarray([[H, W]], np.int32), (N, 1))}, keys)['image'])
  hf, hs, h0 = _statistics(host_out)
  df, ds, d0 = _statistics(dev_out)
  n = min(hf.size, df.size)
  assert n > 0.9 * N
  # Flip probability 1/2: within 4 binomial standard deviations.
  for f in (hf, df):
    assert abs(f.mean() - 0.5) < 4 * np.sqrt(0.25 / f.size)
  # Scale ~ U(0.75, 1.5): means within 4 standard errors, and the two samples
  # of scale and crop position pass a two-sample KS test at alpha = 0.001
  # (critical value 1.95 * sqrt(2 / n)).
  se = np.sqrt((0.75 ** 2 / 12) / n)
  assert abs(hs.mean() - 1.125) < 4 * se + 0.01 and abs(ds.mean() - 1.125) < 4 * se + 0.01
  crit = 1.95 * np.sqrt(2 / n)
  assert _ks(hs, ds) < crit, (_ks(hs, ds), crit)
  assert _ks(h0, d0) < crit, (_ks(h0, d0), crit)


def test_colour_jitter_matches_the_host_formulas():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (6, 7, 3)).astype(np.float32)
  p = device_augment.params_from_config(_config(brightness=0.4, contrast=0.4, saturation=0.4,
                                                hue=0.0))
  d = device_augment.Draws(None, None, None, None, jnp.asarray([1.3, 0.7, 1.2]), jnp.zeros(()))
  got = np.asarray(device_augment.jitter(jnp.asarray(image), d, p))
  want = transforms.adjust_saturation(transforms.adjust_contrast(
      transforms.adjust_brightness(image, 1.3), 0.7), 1.2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
  # Hue: a float HSV rotation, checked against Python's colorsys.
  p = device_augment.params_from_config(_config(hue=0.3))
  d = device_augment.Draws(None, None, None, None, jnp.ones(3), jnp.asarray(0.2))
  got = np.asarray(device_augment.jitter(jnp.asarray(image), d, p))
  for y, x in [(0, 0), (2, 3), (5, 6)]:
    h, s, v = colorsys.rgb_to_hsv(*(image[y, x] / 255))
    want = np.asarray(colorsys.hsv_to_rgb((h + 0.2) % 1.0, s, v)) * 255
    np.testing.assert_allclose(got[y, x], want, atol=1e-3)


def test_rotation_is_refused_on_the_device():
  with pytest.raises(ValueError, match='rotate_degrees'):
    device_augment.params_from_config(_config(rotate_degrees=10.0))


def test_pipeline_hands_the_device_padded_canvases():
  c = _config()
  c.data.synthetic_size = (40, 48)
  c.batch_size = 4
  batch = pipeline.train_dataset(c)[0]
  assert batch['image'].shape == (4, 40, 48, 3) and batch['label'].shape == (4, 40, 48)
  np.testing.assert_array_equal(batch['size'], [[40, 48]] * 4)


def test_reader_threads_follow_the_core_count(monkeypatch):
  monkeypatch.setattr(pipeline.os, 'sched_getaffinity', lambda pid: set(range(48)),
                      raising=False)
  assert pipeline._num_threads() == 48  # pylint: disable=protected-access


def test_train_step_augments_on_the_device():
  """The train step takes canvases (with 'size') and trains on crops; the
  augmentation is keyed by (seed, step, row), so a rerun of a step repeats it."""
  from segjax import optim, sharding, train  # pylint: disable=g-import-not-at-top
  from tests.test_accel import TinyNet  # pylint: disable=g-import-not-at-top
  c = _config(brightness=0.2)
  c.data.num_classes = 3
  c.batch_size = 2
  c.data.synthetic_size = (40, 48)
  batch = pipeline.train_dataset(c)[0]
  batch['label'] = np.where(batch['label'] < 3, batch['label'], 0).astype(np.int32)
  model = TinyNet()
  tx, schedule = optim.make_optimizer(c)
  state = train.init_state(c, model, tx, sharding.make_mesh())
  step = jax.jit(train.make_train_step(c, model, tx, schedule))
  _, m1 = step(state, batch, jax.random.key(0))
  _, m2 = step(state, batch, jax.random.key(0))
  assert np.isfinite(float(m1['loss'])) and float(m1['loss']) == float(m2['loss'])
