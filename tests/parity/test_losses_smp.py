"""Focal and Lovasz-softmax losses against segmentation_models.pytorch's.

smp's softmax focal loss (losses._functional.softmax_focal_loss_with_logits,
the mean over the pixels it is given) and its Lovasz-softmax (LovaszLoss in
multiclass mode, and _lovasz_softmax for classes='all'), on random logits
with ignored pixels (smp drops the ignore_index pixels, we mask them): the
values and, for Lovasz, the gradients with respect to the logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import losses
from tests.parity import util

torch = pytest.importorskip('torch', reason=util.PEERS)
smp_losses = pytest.importorskip('segmentation_models_pytorch.losses', reason=util.PEERS)
from segmentation_models_pytorch.losses import _functional as smp_functional  # noqa: E402
from segmentation_models_pytorch.losses import lovasz as smp_lovasz  # noqa: E402


def _case(seed: int, batch=2, h=6, w=7, c=4):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(batch, h, w, c)) * 2).astype(np.float32)
  labels = rng.integers(0, c, size=(batch, h, w))
  labels[rng.random(labels.shape) < 0.25] = 255
  labels[labels == c - 1] = 0  # The last class absent: 'present' and 'all' differ.
  labels[:, 0, 0] = 1  # Every image has a valid pixel (smp's per-image mean needs one).
  return logits, labels


def _nchw(logits, requires_grad=False):
  return torch.tensor(np.moveaxis(logits, -1, 1), dtype=torch.float32,
                      requires_grad=requires_grad)


@pytest.mark.parametrize('gamma', [0.0, 0.5, 2.0])
def test_focal_matches_smp_softmax_focal(gamma):
  logits, labels = _case(0)
  valid = labels != 255
  peer = smp_functional.softmax_focal_loss_with_logits(
      torch.tensor(logits[valid]), torch.tensor(labels[valid]),
      gamma=gamma, reduction='mean')
  ours = losses.focal_loss(jnp.asarray(logits), jnp.asarray(labels), gamma=gamma)
  util.check(f'focal loss gamma={gamma} vs smp', [float(ours)], [float(peer)], tol=1e-5)


@pytest.mark.parametrize('per_image', [False, True])
def test_lovasz_matches_smp_value_and_gradient(per_image):
  logits, labels = _case(1)
  x = _nchw(logits, requires_grad=True)
  peer = smp_losses.LovaszLoss('multiclass', per_image=per_image, ignore_index=255)(
      x, torch.tensor(labels))
  peer.backward()
  peer_grad = np.moveaxis(x.grad.numpy(), 1, -1)
  fn = lambda l: losses.lovasz_softmax(l, jnp.asarray(labels), per_image=per_image)
  ours, grad = jax.value_and_grad(fn)(jnp.asarray(logits))
  name = f'lovasz per_image={per_image} vs smp'
  util.check(name, [float(ours)], [float(peer.detach())], tol=1e-5)
  util.check(name + ' (gradient)', grad, peer_grad, tol=1e-5)


def test_lovasz_all_classes_matches_smp():
  logits, labels = _case(2)
  probs = torch.softmax(_nchw(logits), dim=1)
  peer = smp_lovasz._lovasz_softmax(probs, torch.tensor(labels), classes='all', ignore=255)
  ours = losses.lovasz_softmax(jnp.asarray(logits), jnp.asarray(labels), classes='all')
  util.check("lovasz classes='all' vs smp", [float(ours)], [float(peer)], tol=1e-5)
