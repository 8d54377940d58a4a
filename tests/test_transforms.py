"""Joint image/label transforms: alignment, seeding, padding, photometric, normalize."""

import pickle

import numpy as np
import pytest

from segjax import config as config_lib
from segjax.data import transforms as T

IGNORE = 255
H, W = 72, 96  # Ramp values 2 * coordinate stay below 256.


def _ramp():
  """Image whose R, G encode 2x, 2y; labels that encode x and y exactly."""
  yy, xx = np.mgrid[0:H, 0:W]
  image = np.stack([2 * xx, 2 * yy, np.full_like(xx, 128)], -1).astype(np.uint8)
  return image, xx.astype(np.uint8), yy.astype(np.uint8)


def _apply_both(fn, seed=0):
  """Runs fn(image, label, rng) for the x- and y-labels with the same randomness."""
  image, lx, ly = _ramp()
  img_a, out_x = fn(image, lx, np.random.default_rng(seed))
  img_b, out_y = fn(image, ly, np.random.default_rng(seed))
  np.testing.assert_array_equal(img_a, img_b)
  return img_a, out_x, out_y


def _check_aligned(image, lx, ly, *, exact=False, resamplings=1):
  """label == coordinate decoded from the image, wherever the label is valid.

  Excludes 2 px next to ignore pixels and the border, where bilinear sampling
  mixes in fill values. Nearest vs bilinear sampling of the same point differ
  by at most 0.5 px (+0.25 for uint8 rounding of the ramp) per resampling; a
  1 px shift would make the mean error ~1.
  """
  assert image.shape[:2] == lx.shape == ly.shape
  np.testing.assert_array_equal(lx == IGNORE, ly == IGNORE)
  bad = np.pad(lx == IGNORE, 1, constant_values=True)
  for _ in range(2):  # Dilate the invalid zone by 2 px (border included).
    bad = bad | np.roll(bad, 1, 0) | np.roll(bad, -1, 0) | np.roll(bad, 1, 1) | np.roll(bad, -1, 1)
  ok = ~bad[1:-1, 1:-1]
  assert ok.sum() > 0.2 * ok.size, 'too few pixels left to check'
  ex = np.abs(image[..., 0].astype(float) / 2 - lx)[ok]
  ey = np.abs(image[..., 1].astype(float) / 2 - ly)[ok]
  if exact:
    assert ex.max() == 0 and ey.max() == 0
  else:
    tol = 0.8 * resamplings
    assert ex.max() <= tol and ey.max() <= tol, (ex.max(), ey.max())
    mean_tol = 0.4 if resamplings == 1 else 0.6
    assert ex.mean() <= mean_tol and ey.mean() <= mean_tol, (ex.mean(), ey.mean())


@pytest.mark.parametrize('name,fn,exact', [
    ('hflip', lambda i, l, r: T.hflip(i, l), True),
    ('vflip', lambda i, l, r: T.vflip(i, l), True),
    ('crop', lambda i, l, r: T.random_crop(i, l, r, (40, 50), IGNORE), True),
    ('crop_pad', lambda i, l, r: T.random_crop(i, l, r, (80, 120), IGNORE), True),
    ('upscale', lambda i, l, r: T.resize(i, l, (100, 130)), False),
    ('downscale', lambda i, l, r: T.resize(i, l, (50, 61)), False),
    ('random_scale', lambda i, l, r: T.random_scale(i, l, r, (0.7, 1.6)), False),
    ('rotate', lambda i, l, r: T.rotate(i, l, 17.0, IGNORE), False),
    ('random_rotate', lambda i, l, r: T.random_rotate(i, l, r, 30.0, IGNORE), False),
])
def test_geometric_ops_keep_alignment(name, fn, exact):
  del name
  _check_aligned(*_apply_both(fn), exact=exact)


@pytest.mark.parametrize('resamplings', [1, 2])
def test_alignment_check_catches_one_pixel_shift(resamplings):
  image, lx, ly = _apply_both(lambda i, l, r: T.rotate(i, l, 17.0, IGNORE))
  _check_aligned(image, lx, ly)
  with pytest.raises(AssertionError):
    _check_aligned(image, np.roll(lx, 1, 1), ly, resamplings=resamplings)
  with pytest.raises(AssertionError):
    _check_aligned(image, lx, np.roll(ly, 1, 0), resamplings=resamplings)


def _config(**augment):
  c = config_lib.base_config()
  c.data.crop_size = (48, 64)
  for k, v in augment.items():
    setattr(c.augment, k, v)
  return c


GEOMETRIC = dict(hflip=True, vflip=True, scale_range=(0.75, 1.5), rotate_degrees=20.0)
PHOTOMETRIC = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_train_transform_keeps_alignment(seed):
  t = T.TrainTransform(_config(**GEOMETRIC))

  def fn(image, label, rng):
    out = t.random_map({'image': image, 'label': label, 'name': 'x'}, rng)
    assert out['name'] == 'x'
    return out['image'], out['label']

  image, lx, ly = _apply_both(fn, seed)
  assert image.shape == (48, 64, 3) and image.dtype == np.uint8
  assert lx.shape == (48, 64) and lx.dtype == np.uint8
  _check_aligned(image, lx, ly, resamplings=2)  # Scale, then rotate.


def test_train_transform_seeding():
  t = T.TrainTransform(_config(**GEOMETRIC, **PHOTOMETRIC))
  image, lx, _ = _ramp()
  el = {'image': image, 'label': lx}
  a = t.random_map(el, np.random.default_rng(5))
  b = t.random_map(el, np.random.default_rng(5))
  c = t.random_map(el, np.random.default_rng(6))
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])
  assert not np.array_equal(a['image'], c['image'])
  # Picklable, for grain worker processes.
  t2 = pickle.loads(pickle.dumps(t))
  np.testing.assert_array_equal(t2.random_map(el, np.random.default_rng(5))['image'],
                                a['image'])


@pytest.mark.parametrize('dtype,ignore', [(np.uint8, 255), (np.int32, 1000)])
def test_crop_pads_with_ignore(dtype, ignore):
  rng = np.random.default_rng(0)
  image = rng.integers(1, 256, (20, 30, 3)).astype(np.uint8)
  label = rng.integers(0, 5, (20, 30)).astype(dtype)
  out_i, out_l = T.random_crop(image, label, rng, (40, 50), ignore)
  assert out_i.shape == (40, 50, 3) and out_l.shape == (40, 50) and out_l.dtype == dtype
  np.testing.assert_array_equal(out_i[:20, :30], image)
  np.testing.assert_array_equal(out_l[:20, :30], label)
  assert (out_l[20:] == ignore).all() and (out_l[:, 30:] == ignore).all()
  assert (out_i[20:] == 0).all() and (out_i[:, 30:] == 0).all()


def test_rotate_fills_ignore_and_keeps_large_labels():
  label = np.full((40, 40), 300, np.int32)
  image = np.full((40, 40, 3), 200, np.uint8)
  out_i, out_l = T.rotate(image, label, 45.0, 1000)
  assert out_l.dtype == np.int32
  assert set(np.unique(out_l).tolist()) == {300, 1000}
  assert out_l[0, 0] == 1000 and out_i[0, 0].tolist() == [0, 0, 0]
  assert out_l[20, 20] == 300 and out_i[20, 20].tolist() == [200, 200, 200]


def test_flips_twice_are_identity():
  image, lx, _ = _ramp()
  for flip in (T.hflip, T.vflip):
    i, l = flip(*flip(image, lx))
    np.testing.assert_array_equal(i, image)
    np.testing.assert_array_equal(l, lx)
  i, l = T.hflip(image, lx)
  np.testing.assert_array_equal(i, image[:, ::-1])
  np.testing.assert_array_equal(l, lx[:, ::-1])


def test_photometric_changes_image_not_label():
  t = T.TrainTransform(_config(hflip=False, **PHOTOMETRIC))
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
  label = rng.integers(0, 4, (48, 64)).astype(np.uint8)
  out = t.random_map({'image': image, 'label': label}, np.random.default_rng(1))
  np.testing.assert_array_equal(out['label'], label)
  assert out['image'].dtype == np.uint8 and out['image'].shape == image.shape
  assert not np.array_equal(out['image'], image)


def test_color_jitter_semantics():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(T.adjust_brightness(x, 0.5), x * 0.5)
  gray = x @ np.asarray([0.2989, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(T.adjust_saturation(x, 0.0),
                             np.repeat(gray[..., None], 3, -1), rtol=1e-5)
  np.testing.assert_allclose(T.adjust_contrast(x, 0.0), np.full_like(x, gray.mean()),
                             rtol=1e-5)
  # Hue: no shift is identity; half a turn makes red cyan and a third of a
  # turn makes red green (8-bit HSV, as torchvision's PIL path).
  img = x.astype(np.uint8)
  np.testing.assert_array_equal(T.adjust_hue(img, 0.0), img)
  red = np.asarray([[[255, 0, 0]]], np.uint8)
  np.testing.assert_allclose(T.adjust_hue(red, 0.5), [[[0, 255, 255]]], atol=3)
  np.testing.assert_allclose(T.adjust_hue(red, 1 / 3), [[[0, 255, 0]]], atol=3)
  # All strengths 0: unchanged, same object.
  assert T.color_jitter(img, rng) is img


def test_normalize_matches_numpy_reference():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 4, 5, 3)).astype(np.uint8)
  mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
  ref = (images.astype(np.float64) - np.asarray(mean)) / np.asarray(std)
  out = T.normalize(images, mean, std)
  assert isinstance(out, np.ndarray) and out.dtype == np.float32
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  out_j = jax.jit(lambda x: T.normalize(x, mean, std))(jnp.asarray(images))
  assert out_j.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out_j), ref, rtol=1e-5, atol=1e-5)


def test_eval_transform_resizes_deterministically():
  c = config_lib.base_config()
  image, lx, _ = _ramp()
  el = {'image': image, 'label': lx, 'name': 'a'}
  assert T.EvalTransform(c).map(el) is el  # No resize configured.
  c.data.resize = (36, 48)
  out = T.EvalTransform(c).map(el)
  assert out['image'].shape == (36, 48, 3) and out['label'].shape == (36, 48)
  assert out['name'] == 'a'
  # Nearest on labels: only existing values appear.
  assert set(np.unique(out['label']).tolist()) <= set(np.unique(lx).tolist())
  # Train transform with resize and crop of the same size is exactly the resize.
  c.data.crop_size = (36, 48)
  c.augment.hflip = False
  tr = T.TrainTransform(c).random_map(el, np.random.default_rng(0))
  np.testing.assert_array_equal(tr['image'], out['image'])
  np.testing.assert_array_equal(tr['label'], out['label'])


# ----------------------------------------------------------------------------- label resampling

IDS = np.array([0, 5, 9, 255], np.uint8)  # Non-adjacent: bilinear mixing invents 2, 3, 7, ...


def _blocky_label(seed=0):
  """A 40x52 label of 4x4 blocks with ids drawn from IDS, and a matching image."""
  rng = np.random.default_rng(seed)
  label = np.kron(IDS[rng.integers(0, 4, size=(10, 13))], np.ones((4, 4), np.uint8))
  image = rng.integers(0, 256, size=label.shape + (3,), dtype=np.uint8)
  return image, label


def _pil_nearest_resize(label, h, w):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.fromarray(label, mode='L').resize((w, h), Image.NEAREST))


def _pil_nearest_rotate(label, degrees, fill):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.fromarray(label, mode='L').rotate(
      degrees, resample=Image.NEAREST, fillcolor=fill))


@pytest.mark.parametrize('size', [(61, 77), (17, 23), (40, 80)])
def test_resize_label_is_pil_nearest(size):
  image, label = _blocky_label()
  _, out = T.resize(image, label, size)
  np.testing.assert_array_equal(out, _pil_nearest_resize(label, *size))
  assert set(np.unique(out)) <= set(IDS.tolist())


def test_random_scale_and_rotate_labels_are_pil_nearest():
  image, label = _blocky_label(1)
  for seed in range(3):
    _, out = T.random_scale(image, label, np.random.default_rng(seed), (0.6, 1.7))
    s = np.random.default_rng(seed).uniform(0.6, 1.7)
    want = _pil_nearest_resize(label, round(40 * s), round(52 * s))
    np.testing.assert_array_equal(out, want)
  for degrees in (13.0, -31.0, 90.0):
    _, out = T.rotate(image, label, degrees, IGNORE)
    np.testing.assert_array_equal(out, _pil_nearest_rotate(label, degrees, IGNORE))
    assert set(np.unique(out)) <= set(IDS.tolist())


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_train_transform_label_is_pil_nearest_replay(seed):
  """The full train transform's label equals a replay of its random draws
  (scale, crop offsets, flips, angle, in that order) with PIL NEAREST ops."""
  t = T.TrainTransform(_config(**GEOMETRIC, **PHOTOMETRIC))
  image, label = _blocky_label(seed)
  out = t.random_map({'image': image, 'label': label}, np.random.default_rng(seed))['label']
  rng = np.random.default_rng(seed)
  s = rng.uniform(0.75, 1.5)
  want = _pil_nearest_resize(label, round(40 * s), round(52 * s))
  want = np.pad(want, ((0, max(0, 48 - want.shape[0])), (0, max(0, 64 - want.shape[1]))),
                constant_values=IGNORE)
  y = int(rng.integers(0, want.shape[0] - 48 + 1))
  x = int(rng.integers(0, want.shape[1] - 64 + 1))
  want = want[y:y + 48, x:x + 64]
  if rng.uniform() < 0.5:
    want = want[:, ::-1]
  if rng.uniform() < 0.5:
    want = want[::-1]
  want = _pil_nearest_rotate(np.ascontiguousarray(want), rng.uniform(-20.0, 20.0), IGNORE)
  np.testing.assert_array_equal(out, want)
  assert set(np.unique(out)) <= set(IDS.tolist())
