"""Confusion-matrix accumulation (on device) and the metrics derived from it.

The confusion matrix `cm[t, p]` counts valid pixels with ground truth t and
prediction p over a whole split. Every metric comes from that one matrix:

  aAcc   = sum_c cm[c, c] / sum cm                      (pixel accuracy)
  Acc_c  = cm[c, c] / sum_p cm[c, p]                    (recall of class c)
  IoU_c  = cm[c, c] / (sum_p cm[c, p] + sum_t cm[t, c] - cm[c, c])
  Dice_c = 2 cm[c, c] / (sum_p cm[c, p] + sum_t cm[t, c])
  mAcc, mIoU, mDice = means over classes where the value is defined
  fwIoU  = sum_c freq_c IoU_c with freq_c = sum_p cm[c, p] / sum cm

Convention (as mmsegmentation): a class with no ground-truth pixels has NaN
accuracy; a class absent from both ground truth and prediction has NaN IoU and
Dice. NaN values are excluded from the means. A class predicted but never
present has IoU 0 and counts in mIoU.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels: jax.Array, preds: jax.Array, num_classes: int) -> jax.Array:
  """(C, C) int32 counts of (label, prediction) over pixels with a valid label.

  Labels outside [0, C) (ignore label, padding) are not counted. Runs under jit;
  on sharded inputs the sum is over the global batch.
  """
  labels = labels.reshape(-1).astype(jnp.int32)
  preds = preds.reshape(-1).astype(jnp.int32)
  valid = (labels >= 0) & (labels < num_classes)
  index = jnp.where(valid, labels * num_classes + preds, 0)
  counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[index].add(
      valid.astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


class ConfusionAccumulator:
  """Sums per-batch confusion matrices on device; flushes to int64 on the host.

  int32 on device holds up to 2^31 pixels per cell; we move the running sum to
  the host before the number of pixels added could reach that, so arbitrarily
  large splits are counted exactly without per-batch host syncs.
  """

  def __init__(self, num_classes: int, flush_pixels: int = 2**30):
    self.num_classes = num_classes
    self.flush_pixels = flush_pixels
    self._host = np.zeros((num_classes, num_classes), np.int64)
    self._device = None
    self._pending = 0

  def add(self, cm: jax.Array, num_pixels: int):
    if self._pending + num_pixels >= self.flush_pixels:
      self._flush()
    self._device = cm if self._device is None else self._device + cm
    self._pending += num_pixels

  def _flush(self):
    if self._device is not None:
      self._host += np.asarray(jax.device_get(self._device), np.int64)
    self._device, self._pending = None, 0

  def result(self) -> np.ndarray:
    self._flush()
    return self._host.copy()


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  out = np.full(np.broadcast(num, den).shape, np.nan)
  np.divide(num, den, out=out, where=den > 0)
  return out


def _nanmean(x: np.ndarray) -> float:
  x = np.asarray(x, np.float64)
  return float(np.mean(x[~np.isnan(x)])) if np.any(~np.isnan(x)) else float('nan')


def compute_metrics(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
  """All metrics from a confusion matrix; per-class values keyed by class name."""
  cm = np.asarray(cm, np.float64)
  num_classes = cm.shape[0]
  names = list(class_names) if class_names else [f'class_{i}' for i in range(num_classes)]
  tp = np.diag(cm)
  gt = cm.sum(axis=1)
  pred = cm.sum(axis=0)
  total = cm.sum()
  acc = _safe_div(tp, gt)
  iou = _safe_div(tp, gt + pred - tp)
  dice = _safe_div(2 * tp, gt + pred)
  freq = _safe_div(gt, np.full_like(gt, total))
  fw_terms = freq * iou
  fwiou = float(np.nansum(fw_terms[gt > 0])) if total > 0 else float('nan')
  return {
      'aAcc': float(tp.sum() / total) if total > 0 else float('nan'),
      'mAcc': _nanmean(acc),
      'mIoU': _nanmean(iou),
      'fwIoU': fwiou,
      'mDice': _nanmean(dice),
      'num_pixels': int(total),
      'IoU': dict(zip(names, iou.tolist())),
      'Acc': dict(zip(names, acc.tolist())),
      'Dice': dict(zip(names, dice.tolist())),
  }


def format_table(metrics: dict, title: str = '') -> str:
  """A plain-text table: the summary line, then one row per class."""
  names = list(metrics['IoU'])
  width = max([len(n) for n in names] + [5])

  def pct(x):
    return '   nan' if x is None or np.isnan(x) else f'{100 * x:6.2f}'

  lines = []
  if title:
    lines.append(title)
  lines.append('  '.join(f'{k} {pct(metrics[k])}'
                         for k in ('aAcc', 'mAcc', 'mIoU', 'fwIoU', 'mDice')))
  lines.append(f"{'class':<{width}}     IoU     Acc    Dice")
  for n in names:
    lines.append(f"{n:<{width}}  {pct(metrics['IoU'][n])}  {pct(metrics['Acc'][n])}  "
                 f"{pct(metrics['Dice'][n])}")
  return '\n'.join(lines)


def format_markdown(metrics: dict, title: str = '') -> str:
  """A Markdown report: the summary row, then IoU / Acc / Dice per class (in %).

  'n/a' marks NaN: accuracy of a class absent from the ground truth, IoU and
  Dice of a class absent from both ground truth and prediction; those are
  left out of the means (the mmsegmentation convention).
  """
  def pct(x):
    return 'n/a' if x is None or np.isnan(x) else f'{100 * x:.2f}'

  keys = ('aAcc', 'mAcc', 'mIoU', 'fwIoU', 'mDice')
  lines = [f'## {title}', ''] if title else []
  lines += ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys),
            '| ' + ' | '.join(pct(metrics[k]) for k in keys) + ' |', '',
            '| class | IoU | Acc | Dice |', '|---|---|---|---|']
  for name in metrics['IoU']:
    lines.append(f"| {name} | {pct(metrics['IoU'][name])} | {pct(metrics['Acc'][name])} | "
                 f"{pct(metrics['Dice'][name])} |")
  lines += ['', 'n/a: class absent from the ground truth (Acc) or from both ground truth '
            'and prediction (IoU, Dice); excluded from the means.']
  return '\n'.join(lines) + '\n'
