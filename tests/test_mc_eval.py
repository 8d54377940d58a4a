"""Bayesian SegNet's Monte Carlo dropout evaluation: averaged softmax over
stochastic passes, predictive entropy, and the images --mode=eval writes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from segjax import evaluate
from segjax import writers
from segjax.tools import evaluate as evaluate_tool
from segjax import models
from segjax import train
from tests.test_train import tiny_config


def _tiny_bayesian():
  return models.get_model('bayesian_segnet', num_classes=3, width_multiplier=0.125)


def test_mc_log_probs_are_the_mean_of_independent_passes():
  model = _tiny_bayesian()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x,
                         train=False)
  mc = evaluate.mc_model(model, 5)
  rng = jax.random.key(7)
  got = evaluate.predict_log_probs(mc, variables, x, rng, mc_samples=5)
  # Independently: five passes with keys fold_in(rng, i), softmax, mean, log.
  probs = [jax.nn.softmax(mc.apply(variables, x, train=False,
                                   rngs={'dropout': jax.random.fold_in(rng, i)}), axis=-1)
           for i in range(5)]
  want = np.log(np.mean(np.stack(probs), axis=0))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # The passes really differ (dropout on at inference), the plain model's don't.
  assert not np.allclose(probs[0], probs[1])
  plain = [model.apply(variables, x, train=False, rngs={'dropout': jax.random.key(i)})
           for i in range(2)]
  np.testing.assert_array_equal(plain[0], plain[1])
  # Entropy: -sum p log p, between 0 and log C.
  ent = evaluate.predictive_entropy(got)
  p = np.exp(np.asarray(got))
  np.testing.assert_allclose(ent, -np.sum(p * np.log(p), -1), rtol=1e-5, atol=1e-6)
  assert np.all(ent >= -1e-6) and np.all(ent <= np.log(3) + 1e-5)


def test_mc_samples_needs_a_model_with_mc_dropout():
  with pytest.raises(ValueError, match=r"mc_samples=4.*bayesian_segnet.*DeepLabV3Plus"):
    evaluate.mc_model(models.get_model('deeplabv3plus', num_classes=3), 4)
  with pytest.raises(ValueError, match=r"mc_samples=2.*SegNet has none"):
    evaluate.mc_model(models.get_model('segnet', num_classes=3), 2)  # No dropout layers.


def test_eval_mode_writes_prediction_and_uncertainty_images(tmp_path):
  c = tiny_config()
  c.model.name = 'bayesian_segnet'
  c.model.backbone = 'vgg16_bn'
  c.model.output_stride = 32
  c.model.width_multiplier = 0.125
  c.model.kwargs = {}
  c.total_steps = 2
  c.eval_every = c.checkpoint_every = 2
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(c, workdir)
  result = evaluate_tool.run(workdir, {'eval.mc_samples': 4, 'eval.num_panel_images': 2})
  out = os.path.join(workdir, 'eval', 'val_00000002')
  names = sorted(os.listdir(out))
  # The 2 panel examples: the first and the last of the 8 (np.linspace(0, 7, 2)).
  assert names == ['0000_pred.png', '0000_uncertainty.png', '0007_pred.png',
                   '0007_uncertainty.png', 'panel.png']
  unc = np.asarray(Image.open(os.path.join(out, '0000_uncertainty.png')))
  assert unc.shape == (32, 32, 3)
  assert np.array_equal(unc[..., 0], unc[..., 1]) and np.array_equal(unc[..., 0], unc[..., 2])
  pred = np.asarray(Image.open(os.path.join(out, '0000_pred.png')))
  assert pred.shape == (32, 32, 3)
  mc_panel_width = Image.open(os.path.join(out, 'panel.png')).size[0]
  assert 0.0 <= result['mIoU'] <= 1.0 and result['num_examples'] == 8
  # Without Monte Carlo sampling: predictions only.
  evaluate_tool.run(workdir, {'eval.mc_samples': 1, 'eval.num_panel_images': 2,
                             'eval.checkpoint': '2', 'eval.split': 'train'})
  train_out = os.path.join(workdir, 'eval', 'train_00000002')
  assert sorted(os.listdir(train_out)) == ['0000_pred.png', '0063_pred.png', 'panel.png']
  # image | truth | prediction | entropy is wider than image | truth | prediction.
  assert mc_panel_width > Image.open(os.path.join(train_out, 'panel.png')).size[0]


def test_uncertainty_image_scale():
  ent = np.array([[0.0, np.log(4) / 2, np.log(4), 5.0]])
  img = writers.uncertainty_image(ent, num_classes=4)
  assert img.shape == (1, 4, 3) and img.dtype == np.uint8
  np.testing.assert_array_equal(img[0, :, 0], [0, 128, 255, 255])
