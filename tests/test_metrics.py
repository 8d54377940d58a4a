"""Metrics against an independent per-pixel NumPy reference (no confusion matrix)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import metrics


def reference(labels, preds, num_classes, ignore=255):
  """Per-class counts straight from pixel sets, mmsegmentation conventions."""
  valid = labels != ignore
  lab, prd = labels[valid], preds[valid]
  iou, acc, dice = [], [], []
  for c in range(num_classes):
    inter = np.sum((lab == c) & (prd == c))
    union = np.sum((lab == c) | (prd == c))
    gt = np.sum(lab == c)
    pr = np.sum(prd == c)
    iou.append(inter / union if union else np.nan)
    acc.append(inter / gt if gt else np.nan)
    dice.append(2 * inter / (gt + pr) if gt + pr else np.nan)
  iou, acc, dice = map(np.array, (iou, acc, dice))
  freq = np.array([np.sum(lab == c) for c in range(num_classes)]) / lab.size
  return {
      'aAcc': np.mean(lab == prd), 'mIoU': np.nanmean(iou), 'mAcc': np.nanmean(acc),
      'mDice': np.nanmean(dice), 'fwIoU': np.nansum(freq * np.nan_to_num(iou)),
      'IoU': iou, 'Acc': acc, 'Dice': dice,
  }


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_with_ignore_matches_reference(seed):
  rng = np.random.default_rng(seed)
  c = 5
  labels = rng.integers(0, c, size=(3, 17, 23))
  labels[rng.random(labels.shape) < 0.2] = 255
  labels[labels == 4] = 255  # Class 4 never in ground truth...
  preds = rng.integers(0, c, size=labels.shape)
  preds[preds == 3] = 2  # ...and class 3 never predicted.
  cm = np.asarray(jax.jit(metrics.confusion_matrix, static_argnums=2)(
      jnp.asarray(labels), jnp.asarray(preds), c))
  got = metrics.compute_metrics(cm)
  want = reference(labels, preds, c)
  for k in ('aAcc', 'mIoU', 'mAcc', 'mDice', 'fwIoU'):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-12, err_msg=k)
  for k in ('IoU', 'Acc', 'Dice'):
    np.testing.assert_allclose(list(got[k].values()), want[k], rtol=1e-12, err_msg=k)
  assert np.isnan(got['Acc']['class_4'])  # Absent from ground truth.
  assert got['IoU']['class_4'] == 0.0     # ...but predicted: IoU 0, counted.
  assert cm.sum() == np.sum(labels != 255)


def test_hand_computed_case():
  labels = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
  preds = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
  cm = np.asarray(metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), 3))
  np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 3, 0], [1, 0, 1]])
  m = metrics.compute_metrics(cm, ['a', 'b', 'c'])
  assert m['aAcc'] == pytest.approx(5 / 7)
  assert m['IoU'] == pytest.approx({'a': 1 / 3, 'b': 3 / 4, 'c': 1 / 2})
  assert m['mIoU'] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
  assert m['fwIoU'] == pytest.approx(2 / 7 * 1 / 3 + 3 / 7 * 3 / 4 + 2 / 7 * 1 / 2)
  assert m['Dice']['a'] == pytest.approx(2 * 1 / (2 + 2))


def test_perfect_and_all_ignored():
  labels = np.array([[0, 1], [1, 255]])
  m = metrics.compute_metrics(np.asarray(metrics.confusion_matrix(
      jnp.asarray(labels), jnp.asarray(np.where(labels == 255, 0, labels)), 3)))
  assert m['mIoU'] == 1.0 and m['aAcc'] == 1.0
  assert np.isnan(m['IoU']['class_2'])  # Absent from both: excluded from the mean.
  empty = metrics.compute_metrics(np.zeros((3, 3), np.int64))
  assert np.isnan(empty['mIoU']) and np.isnan(empty['aAcc'])


def test_accumulator_flushes_exactly():
  rng = np.random.default_rng(0)
  acc = metrics.ConfusionAccumulator(4, flush_pixels=100)  # Forces many host flushes.
  total = np.zeros((4, 4), np.int64)
  for _ in range(7):
    labels = rng.integers(0, 4, size=(2, 6, 5))
    preds = rng.integers(0, 4, size=(2, 6, 5))
    cm = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), 4)
    acc.add(cm, labels.size)
    total += np.asarray(cm)
  np.testing.assert_array_equal(acc.result(), total)


def test_table_names_classes():
  cm = np.array([[3, 1], [0, 4]])
  text = metrics.format_table(metrics.compute_metrics(cm, ['road', 'sky']))
  assert 'road' in text and 'sky' in text and 'mIoU' in text
  assert f'{100 * 3 / 4:6.2f}' in text  # IoU of 'road' = 3 / (4 + 3 - 3).


def test_class_missing_from_truth_but_predicted():
  """Class 2 never in the ground truth but predicted twice: its IoU and Dice
  are 0 and count in the means, its accuracy is NaN and does not."""
  labels = np.array([[0, 0, 1, 1]])
  preds = np.array([[0, 2, 1, 2]])
  cm = np.asarray(metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), 3))
  m = metrics.compute_metrics(cm, ['a', 'b', 'c'])
  assert m['IoU'] == pytest.approx({'a': 1 / 2, 'b': 1 / 2, 'c': 0.0})
  assert m['mIoU'] == pytest.approx(1 / 3)
  assert np.isnan(m['Acc']['c']) and m['mAcc'] == pytest.approx(1 / 2)
  assert m['Dice']['c'] == 0.0
  md = metrics.format_markdown(m, title='val @ step 7')
  assert md.startswith('## val @ step 7')
  assert '| c | 0.00 | n/a | 0.00 |' in md
  assert '| 50.00 | 50.00 | 33.33 |' in md  # aAcc, mAcc, mIoU.


def test_padding_rows_with_label_minus_one_are_not_counted():
  """Evaluation pads the last batch of a split with rows of label -1 (a split of
  10 examples in batches of 4 has 2 padded rows): the confusion matrix of the
  padded batches equals the NumPy reference over the 10 real examples."""
  rng = np.random.default_rng(7)
  c, n, bs = 4, 10, 4
  labels = rng.integers(0, c, size=(n, 5, 6))
  labels[rng.random(labels.shape) < 0.1] = 255
  preds = rng.integers(0, c, size=labels.shape)
  pad = -n % bs
  padded_labels = np.concatenate([labels, np.full((pad, 5, 6), -1)])
  padded_preds = np.concatenate([preds, rng.integers(0, c, size=(pad, 5, 6))])
  acc = metrics.ConfusionAccumulator(c)
  cm_fn = jax.jit(metrics.confusion_matrix, static_argnums=2)
  for i in range(0, n + pad, bs):
    acc.add(cm_fn(jnp.asarray(padded_labels[i:i + bs]), jnp.asarray(padded_preds[i:i + bs]), c),
            bs * 30)
  cm = acc.result()
  valid = labels != 255
  want = np.zeros((c, c), np.int64)
  np.add.at(want, (labels[valid], preds[valid]), 1)
  np.testing.assert_array_equal(cm, want)
  got = metrics.compute_metrics(cm)
  ref = reference(labels, preds, c)
  for k in ('aAcc', 'mIoU', 'mAcc', 'mDice', 'fwIoU'):
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, err_msg=k)


def test_eval_split_not_divisible_by_the_batch_size():
  """evaluate_split over 10 examples in batches of 4 (the last one padded with
  2 rows of label -1) gives the confusion matrix of the 10 examples, each
  predicted on its own and counted in NumPy."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from segjax import evaluate, sharding  # pylint: disable=g-import-not-at-top
  from segjax.data import sources  # pylint: disable=g-import-not-at-top
  from tests.test_train import tiny_config  # pylint: disable=g-import-not-at-top

  class Pointwise(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, *, train):
      del train
      return nn.Conv(self.num_classes, (1, 1))(x)

  c = tiny_config(**{'data.synthetic_val_examples': 10, 'eval.batch_size': 4})
  k = int(c.data.num_classes)
  model = Pointwise(k)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  mesh = sharding.make_mesh(jax.devices()[:1])
  res, _ = evaluate.evaluate_split(evaluate.make_eval_step(model, c, mesh), variables, c,
                                   'val', mesh)
  assert res['num_examples'] == 10
  src = sources.make_source(c.data, 'val')
  want = np.zeros((k, k), np.int64)
  for i in range(10):
    x = (src[i]['image'].astype(np.float32) - np.asarray(c.data.mean, np.float32)) / (
        np.asarray(c.data.std, np.float32))
    pred = np.argmax(np.asarray(model.apply(variables, x[None], train=False))[0], -1)
    label = np.asarray(src[i]['label']).astype(np.int64)
    valid = (label >= 0) & (label < k)
    np.add.at(want, (label[valid], pred[valid]), 1)
  np.testing.assert_array_equal(res['confusion_matrix'], want)


def _numpy_confusion(labels, preds, num_classes):
  """cm[t, p] by counting pixel pairs in NumPy; labels outside [0, C) skipped."""
  lab, prd = np.asarray(labels).ravel(), np.asarray(preds).ravel()
  keep = (lab >= 0) & (lab < num_classes)
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (lab[keep], prd[keep]), 1)
  return cm


@pytest.mark.parametrize('flush_pixels', [2**30, 2500, 1])
def test_clu_confusion_metric_matches_numpy_with_ignored_rows(flush_pixels):
  """Batches merged through the clu Metric equal the NumPy count over all
  batches; label -1 (padding), 255 (ignore) and >= C rows are not counted,
  whichever way the host flush falls (never, every few batches, every batch)."""
  rng = np.random.default_rng(0)
  c = 5
  step = jax.jit(lambda l, p: metrics.ConfusionMatrix.from_model_output(l, p, c).device)
  acc = metrics.ConfusionMatrix.empty(c, flush_pixels)
  all_labels, all_preds = [], []
  for _ in range(6):
    labels = rng.integers(0, c, size=(3, 17, 23))
    labels[rng.random(labels.shape) < 0.2] = 255
    labels[0] = -1  # A padded example: a whole ignore row of the batch.
    labels[1, :2] = c + 3
    preds = rng.integers(0, c, size=labels.shape)
    counts = step(jnp.asarray(labels), jnp.asarray(preds))
    acc = acc.merge(metrics.ConfusionMatrix.from_counts(counts, labels.size, flush_pixels))
    all_labels.append(labels)
    all_preds.append(preds)
  got = acc.compute()
  want = _numpy_confusion(np.stack(all_labels), np.stack(all_preds), c)
  assert got.dtype == np.int64
  np.testing.assert_array_equal(got, want)
  assert got.sum() == sum(np.sum((l >= 0) & (l < c)) for l in all_labels)
  # The accumulator used by evaluation gives the same matrix.
  old = metrics.ConfusionAccumulator(c, flush_pixels)
  for l, p in zip(all_labels, all_preds):
    old.add(step(jnp.asarray(l), jnp.asarray(p)), l.size)
  np.testing.assert_array_equal(old.result(), want)
  # Two partial accumulations merged (clu's merge contract) give the same too.
  halves = [metrics.ConfusionMatrix.empty(c, flush_pixels) for _ in range(2)]
  for i, (l, p) in enumerate(zip(all_labels, all_preds)):
    halves[i % 2] = halves[i % 2].merge(metrics.ConfusionMatrix.from_counts(
        step(jnp.asarray(l), jnp.asarray(p)), l.size, flush_pixels))
  np.testing.assert_array_equal(halves[0].merge(halves[1]).compute(), want)


def test_clu_confusion_metric_flushes_before_int32_overflows():
  """Two batches whose cells each hold 2^31 - 1 (a count int32 cannot double):
  the host flush makes the sum exact in int64."""
  big = jnp.full((2, 2), 2**31 - 1, jnp.int32)
  a = metrics.ConfusionMatrix.from_counts(big, 2**30)
  b = metrics.ConfusionMatrix.from_counts(big, 2**30)
  total = a.merge(b).compute()
  np.testing.assert_array_equal(total, np.full((2, 2), 2 * (2**31 - 1), np.int64))
  # Small batches stay on device between flushes (no host sync per batch).
  small = metrics.ConfusionMatrix.from_counts(jnp.ones((2, 2), jnp.int32), 10)
  merged = small.merge(small)
  assert merged.pending == 20 and merged.device is not None
  np.testing.assert_array_equal(merged.compute(), np.full((2, 2), 2))
