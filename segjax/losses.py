"""Segmentation losses: pure functions of (logits, labels) with an explicit mask.

Pixels whose label is the ignore label (or any value outside [0, C)) get zero
weight. Nothing here branches on traced values, so all of it runs under jit.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax


def valid_mask(labels: jax.Array, num_classes: int) -> jax.Array:
  """True where the label is a class index (the ignore label and padding are not)."""
  return (labels >= 0) & (labels < num_classes)


def cross_entropy(logits: jax.Array, labels: jax.Array, *,
                  class_weights: Optional[jax.Array] = None,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross entropy over valid pixels.

  With class weights this is the weighted mean sum_i w[y_i] l_i / sum_i w[y_i],
  the semantics of torch.nn.CrossEntropyLoss(weight=..., ignore_index=...).
  Returns 0 when no pixel is valid.

  Args:
    logits: (..., C) float.
    labels: (...) int; values outside [0, C) are ignored.
    class_weights: optional (C,) weights.
    label_smoothing: mass spread uniformly over all classes.
  """
  num_classes = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  mask = valid_mask(labels, num_classes)
  safe = jnp.where(mask, labels, 0)
  if label_smoothing:
    onehot = jax.nn.one_hot(safe, num_classes, dtype=jnp.float32)
    targets = onehot * (1.0 - label_smoothing) + label_smoothing / num_classes
    per_pixel = optax.softmax_cross_entropy(logits, targets)
  else:
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  weights = mask.astype(jnp.float32)
  if class_weights is not None:
    weights = weights * jnp.asarray(class_weights, jnp.float32)[safe]
  return jnp.sum(per_pixel * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def _masked_probs_and_onehot(logits: jax.Array, labels: jax.Array):
  """(softmax, one-hot, summing axes), both zero at ignored pixels: the per-class
  sums of the overlap losses (Dice, F-beta) see valid pixels only."""
  num_classes = logits.shape[-1]
  mask = valid_mask(labels, num_classes).astype(jnp.float32)[..., None]
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * mask
  onehot = jax.nn.one_hot(jnp.where(mask[..., 0] > 0, labels, 0), num_classes,
                          dtype=jnp.float32) * mask
  return probs, onehot, tuple(range(logits.ndim - 1))


def dice_loss(logits: jax.Array, labels: jax.Array, *, smooth: float = 1.0,
              class_weights: Optional[jax.Array] = None) -> jax.Array:
  """Soft multi-class Dice loss over valid pixels, 1 - mean Dice over classes.

  Dice per class c: (2 sum p_c g_c + s) / (sum p_c + sum g_c + s), summed over
  all valid pixels of the batch. Classes absent from the ground truth of the
  batch are left out of the mean (as segmentation_models.pytorch does with its
  `mask` of present classes), so a batch without class c neither rewards nor
  punishes predicting it beyond what cross entropy does.
  """
  probs, onehot, axes = _masked_probs_and_onehot(logits, labels)
  intersection = jnp.sum(probs * onehot, axis=axes)
  cardinality = jnp.sum(probs + onehot, axis=axes)
  dice = (2.0 * intersection + smooth) / (cardinality + smooth)
  present = (jnp.sum(onehot, axis=axes) > 0).astype(jnp.float32)
  if class_weights is not None:
    present = present * jnp.asarray(class_weights, jnp.float32)
  return jnp.sum((1.0 - dice) * present) / jnp.maximum(jnp.sum(present), 1e-12)


def fbeta_loss(logits: jax.Array, labels: jax.Array, *, beta: float = 1.0,
               smooth: float = 1e-5,
               class_weights: Optional[jax.Array] = None) -> jax.Array:
  """1 - soft F-beta score, the score averaged over all classes.

  Per class c, over the valid pixels of the whole batch (p softmax, g one-hot):
    tp = sum p_c g_c,  fp = sum p_c - tp,  fn = sum g_c - tp,
    F = ((1 + b^2) tp + s) / ((1 + b^2) tp + b^2 fn + fp + s).
  beta = 1 gives Dice. Unlike dice_loss, classes absent from the batch stay in
  the mean (their F is s / (fp + s), pushing their probability down), as the
  DeepLab write-up's Keras loss does. Ignored pixels count in nothing (that
  loss counts their predictions as false positives). Class weights make the
  mean a weighted mean.
  """
  probs, onehot, axes = _masked_probs_and_onehot(logits, labels)
  tp = jnp.sum(probs * onehot, axis=axes)
  fp = jnp.sum(probs, axis=axes) - tp
  fn = jnp.sum(onehot, axis=axes) - tp
  b2 = float(beta) ** 2
  score = ((1 + b2) * tp + smooth) / ((1 + b2) * tp + b2 * fn + fp + smooth)
  if class_weights is None:
    return 1.0 - jnp.mean(score)
  w = jnp.asarray(class_weights, jnp.float32)
  return 1.0 - jnp.sum(w * score) / jnp.maximum(jnp.sum(w), 1e-12)


LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def make_loss(name: str, *, class_weights: Sequence[float] = (),
              dice_weight: float = 1.0, label_smoothing: float = 0.0,
              fbeta_beta: float = 1.0, fbeta_smooth: float = 1e-5) -> LossFn:
  """loss(logits, labels) -> scalar for the config's `loss` block."""
  cw = jnp.asarray(class_weights, jnp.float32) if len(class_weights) else None

  def ce(logits, labels):
    return cross_entropy(logits, labels, class_weights=cw, label_smoothing=label_smoothing)

  def dice(logits, labels):
    return dice_loss(logits, labels, class_weights=cw)

  if name == 'ce':
    return ce
  if name == 'dice':
    return dice
  if name == 'dice_ce':
    return lambda logits, labels: ce(logits, labels) + dice_weight * dice(logits, labels)
  if name == 'fbeta_ce':
    return lambda logits, labels: ce(logits, labels) + dice_weight * fbeta_loss(
        logits, labels, beta=fbeta_beta, smooth=fbeta_smooth, class_weights=cw)
  raise ValueError(f"loss.name={name!r} is not one of 'ce', 'dice', 'dice_ce', 'fbeta_ce'")
