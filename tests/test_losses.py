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
