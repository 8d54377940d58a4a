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
  with pytest.raises(ValueError, match='tversky'):
    losses.make_loss('tversky')


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


# --------------------------------------------------------------------------- focal, Lovasz, OHEM


def np_ce_per_pixel(logits, labels):
  c = logits.shape[-1]
  valid = (labels >= 0) & (labels < c)
  lsm = np_log_softmax(logits.astype(np.float64))
  return -np.take_along_axis(lsm, np.where(valid, labels, 0)[..., None], -1)[..., 0], valid


def test_focal_by_hand_and_gamma_zero_is_cross_entropy():
  # One valid pixel with p_t = 0.8 and one ignored pixel: FL = -a (1 - p_t)^g log p_t.
  p = np.array([[0.8, 0.15, 0.05], [0.01, 0.01, 0.98]])
  logits = jnp.asarray(np.log(p)[None, None], jnp.float32)  # (1, 1, 2, 3)
  labels = jnp.asarray([[[0, 255]]])
  np.testing.assert_allclose(losses.focal_loss(logits, labels, gamma=2.0, alpha=0.25),
                             0.25 * 0.2 ** 2 * -np.log(0.8), rtol=1e-5)
  # gamma = 0, alpha = 1 is cross entropy, unweighted and class-weighted.
  rng = np.random.default_rng(7)
  logits = jnp.asarray(rng.normal(size=(2, 5, 6, 4)), jnp.float32)
  y = rng.integers(0, 4, size=(2, 5, 6))
  y[rng.random(y.shape) < 0.3] = 255
  y[0, 0, :3] = -1
  w = jnp.asarray([0.5, 2.0, 1.0, 3.0])
  for cw in (None, w):
    np.testing.assert_allclose(losses.focal_loss(logits, jnp.asarray(y), gamma=0.0,
                                                 class_weights=cw),
                               losses.cross_entropy(logits, jnp.asarray(y), class_weights=cw),
                               rtol=1e-6)


def test_focal_random_with_ignore_and_weights_matches_numpy():
  rng = np.random.default_rng(8)
  logits = rng.normal(size=(2, 4, 5, 3)).astype(np.float32) * 2
  labels = rng.integers(0, 3, size=(2, 4, 5))
  labels[rng.random(labels.shape) < 0.25] = 255
  weights = np.array([0.2, 1.0, 4.0])
  nll, valid = np_ce_per_pixel(logits, labels)
  fl = 0.5 * (1 - np.exp(-nll)) ** 1.5 * nll
  w = weights[np.where(valid, labels, 0)] * valid
  np.testing.assert_allclose(
      losses.focal_loss(jnp.asarray(logits), jnp.asarray(labels), gamma=1.5, alpha=0.5),
      fl[valid].mean(), rtol=1e-5)
  np.testing.assert_allclose(
      losses.focal_loss(jnp.asarray(logits), jnp.asarray(labels), gamma=1.5, alpha=0.5,
                        class_weights=weights),
      (fl * w).sum() / w.sum(), rtol=1e-5)


def _lovasz_case():
  """4 valid pixels of 2 classes (p(class 1) = .9 .6 .3 .2, labels 1 0 1 0) and
  a fifth, ignored pixel with a confident wrong prediction."""
  p1 = np.array([0.9, 0.6, 0.3, 0.2, 0.99])
  logits = np.log(np.stack([1 - p1, p1], -1))[None, None]  # (1, 1, 5, 2)
  return jnp.asarray(logits, jnp.float32), jnp.asarray([[[1, 0, 1, 0, 255]]])


# Worked by hand. Class 1: errors |g - p| = .1 .6 .7 .2, sorted .7 .6 .2 .1 with
# g = 1 0 0 1; |G| = 2, J(k) = 1 - |G n S_k| / |G u S_k| = 1/2, 2/3, 3/4, 1, so
# the Lovasz gradient is 1/2, 1/6, 1/12, 1/4 and the loss .35 + .1 + 1/60 + .025.
# Class 0: the same errors, sorted with g = 0 1 1 0: J = 1/3, 2/3, 1, 1, gradient
# 1/3, 1/3, 1/3, 0, loss (.7 + .6 + .2) / 3 = .5.
LOVASZ_C1 = 0.35 + 0.1 + 1 / 60 + 0.025
LOVASZ_C0 = 0.5


def test_lovasz_softmax_by_hand():
  logits, labels = _lovasz_case()
  np.testing.assert_allclose(losses.lovasz_softmax(logits, labels),
                             (LOVASZ_C0 + LOVASZ_C1) / 2, rtol=1e-5)
  # Class weights (3, 1): the weighted mean over classes.
  np.testing.assert_allclose(
      losses.lovasz_softmax(logits, labels, class_weights=jnp.asarray([3.0, 1.0])),
      (3 * LOVASZ_C0 + LOVASZ_C1) / 4, rtol=1e-5)
  # per_image: a second image with every pixel ignored counts as 0 in the mean.
  two = jnp.concatenate([logits, logits]), jnp.concatenate([labels, jnp.full_like(labels, 255)])
  np.testing.assert_allclose(losses.lovasz_softmax(*two, per_image=True),
                             (LOVASZ_C0 + LOVASZ_C1) / 4, rtol=1e-5)
  np.testing.assert_allclose(losses.lovasz_softmax(*two), (LOVASZ_C0 + LOVASZ_C1) / 2,
                             rtol=1e-5)


def test_lovasz_present_versus_all_classes_by_hand():
  # Only class 1 in the ground truth (labels 1 1 1 1). Class 1: errors 1 - p1 =
  # .1 .4 .7 .8, all foreground: J(k) = k / 4, the loss the mean error .5.
  # Class 0 (absent, 'all' only): errors p0 = .1 .4 .7 .8, no foreground:
  # J(k) = 1 from k = 1, so the loss is the largest error .8.
  logits, _ = _lovasz_case()
  labels = jnp.asarray([[[1, 1, 1, 1, 255]]])
  np.testing.assert_allclose(losses.lovasz_softmax(logits, labels), 0.5, rtol=1e-5)
  np.testing.assert_allclose(losses.lovasz_softmax(logits, labels, classes='all'),
                             (0.5 + 0.8) / 2, rtol=1e-5)
  with pytest.raises(ValueError, match='classes'):
    losses.lovasz_softmax(logits, labels, classes='some')


def test_ohem_top_k_by_hand():
  # Per-pixel CE = -log p_t, chosen through logits log(p). Two images of 2 x 4
  # pixels; top_k_percent 0.25 keeps k = round(0.25 * 8) = 2 pixels per image.
  p_true = np.array([[0.9, 0.5, 0.1, 0.8, 0.6, 0.7, 0.95, 0.3],
                     [0.4, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]])
  labels = np.array([[0, 0, 255, 0, 0, 0, 0, 0],      # The hardest pixel (.1) is ignored.
                     [0, 255, 255, 255, 255, 255, 255, 255]])  # One valid pixel.
  probs = np.stack([p_true, 1 - p_true], -1).reshape(2, 2, 4, 2)
  logits = jnp.asarray(np.log(probs), jnp.float32)
  labels = jnp.asarray(labels.reshape(2, 2, 4))
  img0 = (-np.log(0.3) - np.log(0.5)) / 2  # The two hardest valid pixels.
  img1 = -np.log(0.4)  # k = 2 takes one valid pixel and one ignored 0: the mean is over 1.
  np.testing.assert_allclose(losses.ohem_cross_entropy(logits, labels, top_k_percent=0.25),
                             (img0 + img1) / 2, rtol=1e-5)
  # Class weights scale the losses before the selection: class 0 pixels keep
  # their CE x 1, but pixel 7 of image 0 (p .3) is relabelled class 1 (p .7,
  # weight 10): image 0 keeps 10 * -log .7 and -log .5.
  labels2 = labels.at[0, 1, 3].set(1)
  w = jnp.asarray([1.0, 10.0])
  img0w = (10 * -np.log(0.7) - np.log(0.5)) / 2
  np.testing.assert_allclose(
      losses.ohem_cross_entropy(logits, labels2, top_k_percent=0.25, class_weights=w),
      (img0w + img1) / 2, rtol=1e-5)
  # top_k_percent 1: the per-image mean CE over valid pixels.
  nll, valid = np_ce_per_pixel(np.asarray(logits), np.asarray(labels))
  want = np.mean([nll[i][valid[i]].mean() for i in range(2)])
  np.testing.assert_allclose(losses.ohem_cross_entropy(logits, labels, top_k_percent=1.0),
                             want, rtol=1e-5)
  with pytest.raises(ValueError, match='top_k'):
    losses.ohem_cross_entropy(logits, labels, top_k_percent=0.0)


def test_ohem_threshold_mmseg_form_by_hand():
  # One image of 2 x 4 pixels, true-class probabilities p (CE = -log p), one
  # ignored; the valid p sorted: .3 .5 .6 .75 .8 .9 .95 (0-based indices).
  p_true = np.array([0.9, 0.5, 0.1, 0.8, 0.6, 0.75, 0.95, 0.3])
  labels = jnp.asarray(np.array([0, 0, 255, 0, 0, 0, 0, 0]).reshape(1, 2, 4))
  logits = jnp.asarray(np.log(np.stack([p_true, 1 - p_true], -1)).reshape(1, 2, 4, 2),
                       jnp.float32)
  ce = lambda *ps: -np.log(ps).sum()

  def ohem(**kw):
    return losses.ohem_threshold_cross_entropy(logits, labels, **kw)

  # min_kept 2: the 2nd-index probability .6 < thresh .7, so threshold .7 keeps
  # .3 .5 .6; the sum is divided by all 8 pixels, the ignored one included.
  np.testing.assert_allclose(ohem(thresh=0.7, min_kept=2), ce(0.3, 0.5, 0.6) / 8, rtol=1e-5)
  # min_kept 4: the threshold rises to the 4th-index probability .8 (strictly below).
  np.testing.assert_allclose(ohem(thresh=0.7, min_kept=4), ce(0.3, 0.5, 0.6, 0.75) / 8,
                             rtol=1e-5)
  # min_kept beyond the valid pixels: the index clips to the largest, .95.
  np.testing.assert_allclose(ohem(thresh=0.7, min_kept=100),
                             ce(0.3, 0.5, 0.6, 0.75, 0.8, 0.9) / 8, rtol=1e-5)
  # Class weights scale the kept losses, not the selection: pixel 1 (p .5) as
  # class 1 (p .5 too) with weight 3.
  w = jnp.asarray([1.0, 3.0])
  np.testing.assert_allclose(
      losses.ohem_threshold_cross_entropy(logits, labels.at[0, 0, 1].set(1), thresh=0.7,
                                          min_kept=2, class_weights=w),
      (ce(0.3, 0.6) + 3 * ce(0.5)) / 8, rtol=1e-5)
  # Two images (the second all ignored): min_kept counts per image (2 x 2 = 4
  # -> threshold .8) and the divisor is the 16 pixels of the batch.
  two = (jnp.concatenate([logits, logits]),
         jnp.concatenate([labels, jnp.full_like(labels, 255)]))
  np.testing.assert_allclose(
      losses.ohem_threshold_cross_entropy(*two, thresh=0.7, min_kept=2),
      ce(0.3, 0.5, 0.6, 0.75) / 16, rtol=1e-5)
  # Through make_loss: 'ohem' with ohem_thresh > 0 is this form.
  np.testing.assert_allclose(
      losses.make_loss('ohem', ohem_thresh=0.7, ohem_min_kept=2)(logits, labels),
      ce(0.3, 0.5, 0.6) / 8, rtol=1e-5)


@pytest.mark.parametrize('name,thresh', [('focal', 0.0), ('lovasz', 0.0), ('ohem', 0.0),
                                         ('ohem', 0.7)])
def test_new_losses_have_finite_gradients_and_none_at_ignored_pixels(name, thresh):
  """Ties (equal logits), confident pixels (p_t = 1 in float32, gamma < 1) and
  an all-ignored image: the gradient is finite and 0 at every ignored pixel."""
  rng = np.random.default_rng(9)
  logits = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  logits[0, 0] = 0.0  # A row of exact ties.
  logits[0, 1, :, 0] = 60.0  # p = 1 exactly for class 0.
  labels = rng.integers(0, 3, size=(2, 4, 4))
  labels[0, 1] = 0
  labels[0, 2, :2] = 255
  labels[1] = 255
  fn = losses.make_loss(name, focal_gamma=0.5, lovasz_per_image=True, ohem_top_k=0.5,
                        ohem_thresh=thresh, ohem_min_kept=4)
  loss, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(logits), jnp.asarray(labels))
  grad = np.asarray(grad)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
  assert np.all(grad[0, 2, :2] == 0) and np.all(grad[1] == 0)
  assert np.abs(grad[0, 3]).sum() > 0


def test_terms_are_the_weighted_sum_of_the_named_losses():
  rng = np.random.default_rng(10)
  logits = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  y = rng.integers(0, 3, size=(2, 4, 4))
  y[0, 0] = 255
  labels = jnp.asarray(y)
  w = (1.0, 2.0, 0.5)
  got = jax.jit(losses.make_loss('ce', class_weights=w, terms='ce:1.0, lovasz:0.5,focal:2',
                                 focal_gamma=1.0))(logits, labels)
  cw = jnp.asarray(w)
  want = (losses.cross_entropy(logits, labels, class_weights=cw)
          + 0.5 * losses.lovasz_softmax(logits, labels, class_weights=cw)
          + 2 * losses.focal_loss(logits, labels, gamma=1.0, class_weights=cw))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # One line naming the bad part.
  for bad, match in (('ce:1,lovas:1', "'lovas' is not one of"), ('ce:1,ce:2', 'twice'),
                     ('ce', 'after a colon'), ('ce:-1', '>= 0'), ('ce:0', 'every weight')):
    with pytest.raises(ValueError, match=match):
      losses.parse_terms(bad)
