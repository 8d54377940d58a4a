"""Whole-image, sliding-window and multi-scale + flip inference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import evaluate
from segjax import models
from segjax.evaluate import Inference
from tests.test_train import tiny_config


class Pointwise(nn.Module):
  """Per-pixel 1x1 conv: translation- and flip-equivariant, so every inference
  mode must give exactly the whole-image result."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return nn.Conv(self.num_classes, (1, 1))(x)


class RowIndex(nn.Module):
  """Logits that depend on the absolute column inside the input: flipping or
  windowing changes them, so TTA and sliding must differ from whole."""
  @nn.compact
  def __call__(self, x, *, train):
    del train
    col = jnp.arange(x.shape[2], dtype=jnp.float32)[None, None, :, None]
    return jnp.concatenate([x[..., :1] + col, -col * jnp.ones_like(x[..., :1])], axis=-1)


def _images(shape=(2, 37, 53, 3), seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_window_starts_cover_the_image_flush_with_the_border():
  assert evaluate.window_starts(10, 4, 3) == [0, 3, 6]
  assert evaluate.window_starts(11, 4, 3) == [0, 3, 6, 7]
  assert evaluate.window_starts(4, 8, 3) == [0]
  for size, win, stride in [(37, 16, 10), (53, 24, 16), (100, 33, 7)]:
    starts = evaluate.window_starts(size, win, stride)
    covered = np.zeros(size, bool)
    for s in starts:
      covered[s:s + win] = True
    assert covered.all() and starts[-1] + win == size and starts[0] == 0


def test_slide_with_a_window_covering_the_image_equals_whole():
  model = models.get_model('deeplabv3plus', num_classes=3, width_multiplier=0.35,
                           aspp_channels=8, decoder_channels=8, low_level_channels=8)
  x = _images()
  variables = model.init({'params': jax.random.key(0)}, x, train=False)
  whole = evaluate.predict_log_probs(model, variables, x, jax.random.key(1))
  slide = evaluate.predict_log_probs(
      model, variables, x, jax.random.key(1),
      inference=Inference(mode='slide', crop=(64, 64), stride=(40, 40)))
  np.testing.assert_array_equal(slide, whole)


def test_slide_stitches_windows_exactly_for_a_pointwise_model():
  model = Pointwise()
  x = _images()
  variables = model.init(jax.random.key(0), x, train=False)
  whole = evaluate.predict_log_probs(model, variables, x, jax.random.key(1))
  slide = evaluate.predict_log_probs(
      model, variables, x, jax.random.key(1),
      inference=Inference(mode='slide', crop=(16, 24), stride=(10, 13)))
  np.testing.assert_allclose(slide, whole, rtol=1e-6, atol=1e-6)


def test_slide_averages_overlapping_logits():
  """RowIndex logits depend on the column inside the window: the stitched
  value at a column is the mean over the windows covering it."""
  model = RowIndex()
  x = jnp.zeros((1, 4, 10, 3), jnp.float32)
  logits = evaluate.slide_logits(model, {}, x, jax.random.key(0), crop=(4, 4), stride=(4, 3))
  starts = evaluate.window_starts(10, 4, 3)  # [0, 3, 6]
  want = np.zeros(10)
  for col in range(10):
    cover = [col - s for s in starts if s <= col < s + 4]
    want[col] = np.mean(cover)
  np.testing.assert_allclose(logits[0, 0, :, 0], want, rtol=1e-6)


def test_flip_tta_of_a_flip_equivariant_model_equals_single_pass():
  model = Pointwise()
  x = _images()
  variables = model.init(jax.random.key(0), x, train=False)
  single = evaluate.predict_log_probs(model, variables, x, jax.random.key(1))
  tta = evaluate.predict_log_probs(model, variables, x, jax.random.key(1),
                                   inference=Inference(flip=True))
  np.testing.assert_allclose(tta, single, rtol=1e-5, atol=1e-6)
  # A model that is not flip-equivariant gives a different, averaged result.
  rm = RowIndex()
  single = evaluate.predict_log_probs(rm, {}, x, jax.random.key(1))
  tta = evaluate.predict_log_probs(rm, {}, x, jax.random.key(1), inference=Inference(flip=True))
  assert not np.allclose(tta, single)
  logits = np.asarray(rm.apply({}, x, train=False))
  flipped = np.asarray(rm.apply({}, x[:, :, ::-1], train=False))[:, :, ::-1]
  want = np.log((jax.nn.softmax(logits) + jax.nn.softmax(flipped)) / 2)
  np.testing.assert_allclose(tta, want, rtol=1e-5, atol=1e-6)


def test_multiscale_averages_resized_views():
  """Scales (1.0, 0.5): the mean of the softmax at full size and of the
  half-size logits resized back, computed independently here."""
  model = Pointwise()
  x = _images((1, 32, 48, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  got = evaluate.predict_log_probs(model, variables, x, jax.random.key(1),
                                   inference=Inference(scales=(1.0, 0.5)))
  full = jax.nn.softmax(model.apply(variables, x, train=False))
  half_in = jax.image.resize(x, (1, 16, 24, 3), 'bilinear', antialias=False)
  half = jax.image.resize(model.apply(variables, half_in, train=False), (1, 32, 48, 3),
                          'bilinear', antialias=False)
  want = np.log((full + jax.nn.softmax(half)) / 2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_inference_from_config_defaults_and_validation():
  c = tiny_config()
  inf = Inference.from_config(c)
  assert inf == Inference(mode='whole', crop=(32, 32), stride=(21, 21), scales=(1.0,),
                          flip=False)
  c.eval.mode = 'slide'
  c.eval.crop_size = (16, 24)
  c.eval.stride = (8, 12)
  c.eval.scales = (0.75, 1.0, 1.25)
  c.eval.flip = True
  config_lib.validate(c)
  assert Inference.from_config(c) == Inference('slide', (16, 24), (8, 12), (0.75, 1.0, 1.25),
                                               True)
  c.eval.mode = 'sliding'
  with pytest.raises(config_lib.ConfigError, match="eval.mode.*'sliding'"):
    config_lib.validate(c)
  c.eval.mode = 'slide'
  c.eval.scales = (1.0, 0.0)
  with pytest.raises(config_lib.ConfigError, match='eval.scales'):
    config_lib.validate(c)


@pytest.mark.parametrize('mode, scales, flip', [('slide', (1.0,), False),
                                                ('whole', (0.5, 1.0), True)])
def test_evaluate_split_in_every_mode(mode, scales, flip):
  """The jitted, sharded evaluation runs each mode over a split; with a
  window covering the image, 'slide' reproduces 'whole' exactly."""
  from segjax import sharding, train
  c = tiny_config()
  model = train.build_model(c)
  mesh = sharding.make_mesh()
  variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)},
                         jnp.zeros((1, 32, 32, 3)), train=False)
  base, _ = evaluate.evaluate_split(evaluate.make_eval_step(model, c, mesh), variables, c,
                                    'val', mesh, limit=8)
  c.eval.mode, c.eval.scales, c.eval.flip = mode, scales, flip
  c.eval.crop_size = (32, 32)
  res, _ = evaluate.evaluate_split(evaluate.make_eval_step(model, c, mesh), variables, c,
                                   'val', mesh, limit=8)
  assert res['num_examples'] == 8
  if mode == 'slide':
    assert res['confusion_matrix'] == base['confusion_matrix']
  else:
    assert np.sum(res['confusion_matrix']) == np.sum(base['confusion_matrix'])
