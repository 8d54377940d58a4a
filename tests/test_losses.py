"""Losses against hand-written NumPy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import losses


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_cross_entropy_ignore_and_weights():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(2, 5, 7))
  labels[rng.random(labels.shape) < 0.3] = 255
  weights = np.array([0.5, 2.0, 1.0, 3.0], np.float32)
  nll = -np.take_along_axis(np_log_softmax(logits.astype(np.float64)),
                            np.where(labels == 255, 0, labels)[..., None], -1)[..., 0]
  valid = labels != 255
  want = nll[valid].mean()
  w = weights[np.where(valid, labels, 0)] * valid
  want_w = (nll * w).sum() / w.sum()  # torch CrossEntropyLoss(weight, ignore_index) semantics.
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  got_w = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), class_weights=weights)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got_w, want_w, rtol=1e-5)


def test_ignored_pixels_get_no_gradient():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(1, 2, 2, 3)), jnp.float32)
  labels = jnp.array([[[0, 255], [2, 255]]])
  grad = jax.grad(lambda l: losses.cross_entropy(l, labels))(logits)
  assert np.all(np.asarray(grad)[0, :, 1] == 0)
  assert np.all(np.abs(np.asarray(grad)[0, :, 0]).sum(-1) > 0)


def test_all_ignored_is_zero_not_nan():
  logits = jnp.ones((1, 3, 3, 2))
  labels = jnp.full((1, 3, 3), 255)
  assert float(losses.cross_entropy(logits, labels)) == 0.0
  assert float(losses.dice_loss(logits, labels)) == 0.0


def test_label_smoothing():
  logits = np.array([[[[2.0, 0.0, -1.0]]]], np.float32)
  labels = np.array([[[0]]])
  eps = 0.1
  lsm = np_log_softmax(logits.astype(np.float64))[0, 0, 0]
  target = np.array([1 - eps + eps / 3, eps / 3, eps / 3])
  want = -(target * lsm).sum()
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=eps)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_dice_by_hand():
  # Two pixels, two classes, probabilities chosen through logits.
  p = np.array([[0.8, 0.2], [0.3, 0.7]])
  logits = np.log(p)[None, None]  # (1, 1, 2, 2)
  labels = np.array([[[0, 1]]])
  smooth = 1.0
  d0 = (2 * 0.8 + smooth) / (0.8 + 0.3 + 1 + smooth)
  d1 = (2 * 0.7 + smooth) / (0.2 + 0.7 + 1 + smooth)
  want = ((1 - d0) + (1 - d1)) / 2
  got = losses.dice_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), smooth=smooth)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # A class absent from the ground truth is left out of the mean.
  only0 = np.array([[[0, 0]]])
  d0b = (2 * (0.8 + 0.3) + smooth) / (0.8 + 0.3 + 2 + smooth)
  np.testing.assert_allclose(
      losses.dice_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(only0), smooth=smooth),
      1 - d0b, rtol=1e-5)


def test_make_loss_dice_ce_is_sum():
  rng = np.random.default_rng(3)
  logits = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, size=(2, 4, 4)))
  combo = losses.make_loss('dice_ce', dice_weight=0.5)(logits, labels)
  want = losses.cross_entropy(logits, labels) + 0.5 * losses.dice_loss(logits, labels)
  np.testing.assert_allclose(combo, want, rtol=1e-6)
  with pytest.raises(ValueError, match='focal'):
    losses.make_loss('focal')


def np_dice_loss(logits, labels, weights=None, smooth=1.0):
  """1 - weighted mean Dice over classes present in the valid ground truth, in float64."""
  c = logits.shape[-1]
  valid = (labels >= 0) & (labels < c)
  p = np.exp(np_log_softmax(logits.astype(np.float64)))[valid]  # (N, C) valid pixels only.
  g = np.eye(c)[labels[valid]]
  dice = (2 * (p * g).sum(0) + smooth) / (p.sum(0) + g.sum(0) + smooth)
  w = (g.sum(0) > 0) * (np.ones(c) if weights is None else np.asarray(weights, np.float64))
  return float(((1 - dice) * w).sum() / w.sum())


def test_dice_with_ignored_pixels_by_hand():
  """Ignored pixels carry no probability mass: 3 pixels, the middle one ignored."""
  p = np.array([[0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
  logits = jnp.asarray(np.log(p)[None, None], jnp.float32)  # (1, 1, 3, 2)
  labels = jnp.asarray([[[0, 255, 1]]])
  d0 = (2 * 0.8 + 1) / (0.8 + 0.3 + 1 + 1)  # The ignored pixel's 0.1 and 0.9 do not count.
  d1 = (2 * 0.7 + 1) / (0.2 + 0.7 + 1 + 1)
  np.testing.assert_allclose(losses.dice_loss(logits, labels), ((1 - d0) + (1 - d1)) / 2,
                             rtol=1e-6)
  # Class weights (2, 1) weight the per-class terms; -1 (eval padding) is ignored too.
  np.testing.assert_allclose(
      losses.dice_loss(logits, jnp.asarray([[[0, -1, 1]]]), class_weights=jnp.asarray([2., 1.])),
      (2 * (1 - d0) + (1 - d1)) / 3, rtol=1e-6)


def test_dice_random_with_ignore_and_weights_matches_numpy():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(2, 6, 5))
  labels[rng.random(labels.shape) < 0.3] = 255
  labels[0, 0, :2] = -1
  labels[labels == 2] = 255  # Class 2 absent: out of the mean.
  weights = np.array([0.5, 2.0, 1.0, 3.0], np.float32)
  np.testing.assert_allclose(losses.dice_loss(jnp.asarray(logits), jnp.asarray(labels)),
                             np_dice_loss(logits, labels), rtol=1e-5)
  np.testing.assert_allclose(
      losses.dice_loss(jnp.asarray(logits), jnp.asarray(labels), class_weights=weights),
      np_dice_loss(logits, labels, weights), rtol=1e-5)


def test_make_loss_dice_ce_applies_class_weights_to_both_parts():
  rng = np.random.default_rng(6)
  logits = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=(2, 5, 5))
  labels[rng.random(labels.shape) < 0.2] = 255
  weights = (0.2, 1.0, 4.0)
  valid = labels != 255
  nll = -np.take_along_axis(np_log_softmax(logits.astype(np.float64)),
                            np.where(valid, labels, 0)[..., None], -1)[..., 0]
  w = np.asarray(weights)[np.where(valid, labels, 0)] * valid
  want = (nll * w).sum() / w.sum() + 0.5 * np_dice_loss(logits, labels, weights)
  got = losses.make_loss('dice_ce', class_weights=weights, dice_weight=0.5)(
      jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  got_dice = losses.make_loss('dice', class_weights=weights)(jnp.asarray(logits),
                                                              jnp.asarray(labels))
  np.testing.assert_allclose(got_dice, np_dice_loss(logits, labels, weights), rtol=1e-5)
