"""A tiny model memorises one fixed synthetic batch: the whole train step learns.

The oracle (test_train_oracle.py) checks one or two steps exactly; this checks
the other end: 80 Adam steps through train.make_train_step on the same four
32x32 images of the synthetic shapes (discs, squares, triangles on clutter)
must fit them. The score is computed here, not by segjax.metrics: a NumPy
confusion matrix of argmax(logits) against the labels, IoU = TP / (TP + FP +
FN) per class present, mean over classes. The forward pass is in training mode
(batch statistics), the state the steps optimised; eval-mode BatchNorm would
measure how far the running averages lag after 80 steps instead.

Measured on a 2-core CPU (Adam lr 1e-2, tiny DeepLabV3+ of tests/test_train.py):
loss 1.39 -> ~0.07 and train mIoU ~0.9 after 80 steps; a chance-level or
constant predictor scores <= 0.25. A step that does not learn (gradients of
the wrong sign, labels not aligned with images, updates dropped) stays near
the start.
"""

import jax
import jax.numpy as jnp
import numpy as np

from segjax import sharding
from segjax import optim
from segjax import train
from segjax.data import pipeline
from segjax.data import transforms
from tests.test_train import tiny_config

STEPS = 80
MIN_MIOU = 0.8


def numpy_miou(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
  valid = (labels >= 0) & (labels < num_classes)
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels[valid], pred[valid]), 1)
  tp = np.diag(cm).astype(float)
  union = cm.sum(0) + cm.sum(1) - tp
  present = cm.sum(1) > 0
  return float(np.mean(tp[present] / union[present]))


def test_a_tiny_model_overfits_one_fixed_batch():
  c = tiny_config(**{
      'optimizer.name': 'adam', 'optimizer.lr': 1e-2, 'optimizer.weight_decay': 0.0,
      'batch_size': 4, 'augment.hflip': False, 'augment.scale_range': (1.0, 1.0),
      'total_steps': STEPS})
  model = train.build_model(c)
  tx, schedule = optim.make_optimizer(c)
  mesh = sharding.make_mesh()
  state = train.init_state(c, model, tx, mesh)
  step = train.jit_train_step(train.make_train_step(c, model, tx, schedule), mesh)
  batch = pipeline.train_dataset(c)[0]
  labels = np.asarray(batch['label'])
  num_classes = int(c.data.num_classes)
  assert len(np.unique(labels[labels < num_classes])) >= 3  # Background and two shapes at least.
  global_batch = sharding.to_global(batch, mesh)
  rng = jax.random.key(0)

  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, global_batch, rng)
    losses.append(float(metrics['loss']))

  outputs, _ = model.apply(
      train.variables_of(state), transforms.normalize(
          jnp.asarray(batch['image']), tuple(c.data.mean), tuple(c.data.std)),
      train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(1)})
  logits, _ = train.split_outputs(outputs)
  pred = np.asarray(jnp.argmax(logits, -1))
  miou = numpy_miou(labels, pred, num_classes)
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
  assert miou >= MIN_MIOU, f'train mIoU {miou:.3f} after {STEPS} steps (loss {losses[-1]:.3f})'
