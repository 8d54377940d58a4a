"""Tests for segjax.crf: the mean-field dense CRF against a brute-force NumPy
mean field (full N x N kernel matrices, the Potts matrix applied as written,
float64), hand-checked properties, and its wiring into evaluation
(config eval.crf -> evaluate.Inference -> predict_log_probs)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import crf as crf_lib
from segjax import evaluate
from segjax.models import sepres_fcn


def _brute_force(logits, rgb, *, iterations, w_app, xy_a, rgb_b, w_smooth, xy_g,
                 source_stride=1):
  """Krähenbühl & Koltun's mean field for one image, spelled out: pairwise
  energy of label l at pixel i = sum_l' mu(l, l') sum_{j != i} k(i, j) Q_j(l')
  with mu = 1 - identity (Potts), Q_i = softmax(-unary - pairwise). With
  source_stride s, j runs over every s-th row/column, weighted s^2."""
  h, w, c = logits.shape
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  pos = np.stack([rows, cols], -1).reshape(-1, 2).astype(np.float64)
  col = rgb.reshape(-1, 3).astype(np.float64)
  dpos = np.sum((pos[:, None] - pos[None]) ** 2, -1)
  dcol = np.sum((col[:, None] - col[None]) ** 2, -1)
  appearance = w_app * np.exp(-dpos / (2 * xy_a ** 2) - dcol / (2 * rgb_b ** 2))
  smoothness = w_smooth * np.exp(-dpos / (2 * xy_g ** 2))
  source = ((rows % source_stride == 0) & (cols % source_stride == 0)).reshape(-1)
  # The smoothness kernel is always summed over all pixels.
  k = appearance * source[None, :] * source_stride ** 2 + smoothness
  np.fill_diagonal(k, 0.0)  # j != i.
  mu = 1.0 - np.eye(c)
  x = logits.reshape(-1, c).astype(np.float64)
  unary = -(x - np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1, keepdims=True))
            - x.max(-1, keepdims=True))

  def softmax(e):
    e = e - e.max(-1, keepdims=True)
    p = np.exp(e)
    return p / p.sum(-1, keepdims=True)

  q = softmax(-unary)
  for _ in range(iterations):
    pairwise = (k @ q) @ mu.T  # sum_j k(i, j) sum_l' mu(l, l') Q_j(l').
    q = softmax(-unary - pairwise)
  return q.reshape(h, w, c)


def _case(h=12, w=12, c=3, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(h, w, c)).astype(np.float32)
  # Two colour regions plus noise, so the appearance kernel matters.
  rgb = np.where((np.arange(w) < w // 2)[None, :, None], 60.0, 180.0) + rng.normal(
      0, 8, (h, w, 3))
  return logits, rgb.astype(np.float32)


PARAMS = dict(w_app=4.0, xy_a=5.0, rgb_b=30.0, w_smooth=3.0, xy_g=2.0)


def _crf(iterations, source_stride=1, **over):
  p = {**PARAMS, **over}
  return crf_lib.DenseCRF(iterations=iterations, appearance_weight=p['w_app'],
                          appearance_xy_std=p['xy_a'], appearance_rgb_std=p['rgb_b'],
                          smoothness_weight=p['w_smooth'], smoothness_xy_std=p['xy_g'],
                          source_stride=source_stride)


@pytest.mark.parametrize('iterations', [1, 5])
def test_mean_field_matches_brute_force_numpy(iterations):
  logits, rgb = _case()
  got = np.exp(np.asarray(crf_lib.mean_field(jnp.asarray(logits), jnp.asarray(rgb),
                                             _crf(iterations))))
  want = _brute_force(logits, rgb, iterations=iterations, **PARAMS)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # The CRF changed something (the comparison is not of two softmaxes).
  assert np.max(np.abs(want - _brute_force(logits, rgb, iterations=0, **PARAMS))) > 0.05


def test_subsampled_appearance_matches_brute_force_and_blocks():
  """source_stride 2 on a 13x11 image (odd: the grid does not tile it), and
  a 47x50 image whose 2350 pixels span two blocks of the appearance sum."""
  logits, rgb = _case(13, 11, 4, seed=1)
  got = np.exp(np.asarray(crf_lib.mean_field(jnp.asarray(logits), jnp.asarray(rgb),
                                             _crf(3, source_stride=2))))
  want = _brute_force(logits, rgb, iterations=3, source_stride=2, **PARAMS)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  logits, rgb = _case(47, 50, 2, seed=2)
  assert 47 * 50 > crf_lib._BLOCK  # pylint: disable=protected-access
  got = np.exp(np.asarray(crf_lib.mean_field(jnp.asarray(logits), jnp.asarray(rgb), _crf(1))))
  want = _brute_force(logits, rgb, iterations=1, **PARAMS)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_zero_pairwise_weights_give_the_softmax_of_the_unaries():
  logits, rgb = _case()
  crf = _crf(5, w_app=0.0, w_smooth=0.0)
  got = np.asarray(crf_lib.mean_field(jnp.asarray(logits), jnp.asarray(rgb), crf))
  e = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(np.exp(got), e / e.sum(-1, keepdims=True), rtol=1e-6, atol=1e-7)
  zero_iter = crf_lib.mean_field(jnp.asarray(logits), jnp.asarray(rgb), _crf(0))
  np.testing.assert_allclose(np.exp(zero_iter), e / e.sum(-1, keepdims=True), rtol=1e-6)


def test_crf_cleans_label_noise_along_colour_edges():
  """Left half dark, right half bright; the unaries prefer the right class by
  log 2 but a fifth of the pixels (random) prefer the wrong one: after the
  CRF every pixel takes its region's class."""
  rng = np.random.default_rng(3)
  h = w = 16
  truth = (np.arange(w)[None, :] >= w // 2).astype(int).repeat(h, 0)
  flip = rng.random((h, w)) < 0.2
  noisy = np.where(flip, 1 - truth, truth)
  logits = np.log(np.where(np.eye(2)[noisy] > 0, 2.0, 1.0)).astype(np.float32)
  rgb = np.where(truth[..., None] > 0, 200.0, 40.0).repeat(3, -1).astype(np.float32)
  crf = crf_lib.DenseCRF(iterations=5, appearance_weight=4.0, appearance_xy_std=20.0,
                         appearance_rgb_std=10.0, smoothness_weight=3.0, smoothness_xy_std=1.0)
  out = np.asarray(crf_lib.mean_field(jnp.asarray(logits), jnp.asarray(rgb), crf))
  assert np.mean(noisy == truth) < 0.9
  np.testing.assert_array_equal(np.argmax(out, -1), truth)


def test_refine_undoes_the_input_normalisation():
  logits, rgb = _case(8, 9, 3, seed=4)
  mean, std = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
  crf = crf_lib.DenseCRF(iterations=2, mean=mean, std=std)
  images = (rgb - np.asarray(mean)) / np.asarray(std)
  got = crf.refine(jnp.asarray(logits)[None], jnp.asarray(images, jnp.float32)[None])[0]
  want = crf_lib.mean_field(jnp.asarray(logits), jnp.asarray(rgb), crf)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_config_block_and_errors():
  c = config_lib.base_config()
  assert not c.eval.crf.enabled and crf_lib.DenseCRF.from_config(c) is None
  c.eval.crf.enabled = True
  c.eval.crf.iterations = 3
  config_lib.validate(c)
  crf = crf_lib.DenseCRF.from_config(c)
  assert crf.iterations == 3 and crf.mean == tuple(c.data.mean)
  assert set(crf_lib.crf_config_keys()) | {'enabled'} == set(c.eval.crf)
  for key, value in (('iterations', -1), ('appearance_rgb_std', 0.0),
                     ('smoothness_weight', -1.0), ('source_stride', 0)):
    bad = config_lib.base_config()
    bad.eval.crf.enabled = True
    bad.eval.crf[key] = value
    with pytest.raises(config_lib.ConfigError, match=f"eval.crf.*{key}"):
      config_lib.validate(bad)


def test_predict_log_probs_applies_the_crf():
  """Inference.from_config(eval.crf on) -> predict_log_probs = the CRF's
  refinement of the plain log-probabilities of a (small, real) model."""
  model = sepres_fcn.SepResFCN(num_classes=3, stage_channels=(4, 4, 4, 4, 4), head_channels=4)
  images = jnp.asarray(np.random.default_rng(5).normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), images, train=False)
  c = config_lib.base_config()
  c.eval.crf.enabled = True
  c.eval.crf.iterations = 2
  inference = evaluate.Inference.from_config(c)
  assert inference.crf == crf_lib.DenseCRF.from_config(c)
  got = evaluate.predict_log_probs(model, variables, images, jax.random.key(1), 1, inference)
  plain = evaluate.predict_log_probs(model, variables, images, jax.random.key(1), 1,
                                     evaluate.Inference())
  np.testing.assert_allclose(got, inference.crf.refine(plain, images), rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(np.asarray(got) - np.asarray(plain))) > 1e-3
