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

from typing import Any, Sequence

from clu import metrics as clu_metrics
import flax
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


FLUSH_PIXELS = 2**30


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """A clu Metric: the confusion matrix of a split, counted exactly.

  `from_model_output` makes one batch's int32 (C, C) counts (under jit, on
  device). `merge` adds on device while that is exact: int32 holds 2^31 - 1
  per cell, so before the pixels added since the last flush could reach
  `flush_pixels` (2^30) the device sum moves into the int64 host total. No
  host sync per batch, and arbitrarily large splits stay exact. `compute`
  returns the int64 (C, C) matrix.

  Merge on the host (`acc = acc.merge(batch)`), not inside jit: the flush is a
  host decision. `pending` (pixels in `device`) is static metadata.
  """
  host: Any                 # int64 (C, C) numpy array.
  device: Any               # int32 (C, C) jax array, or None after a flush.
  pending: int = flax.struct.field(pytree_node=False, default=0)
  flush_pixels: int = flax.struct.field(pytree_node=False, default=FLUSH_PIXELS)

  @classmethod
  def empty(cls, num_classes: int = 0, flush_pixels: int = FLUSH_PIXELS) -> 'ConfusionMatrix':
    return cls(host=np.zeros((num_classes, num_classes), np.int64), device=None, pending=0,
               flush_pixels=flush_pixels)

  @classmethod
  def from_counts(cls, counts: jax.Array, num_pixels: int,
                  flush_pixels: int = FLUSH_PIXELS) -> 'ConfusionMatrix':
    """One batch's int32 counts (e.g. from a jitted eval step) over
    `num_pixels` pixels (valid or not: the bound on what a cell can gain)."""
    c = counts.shape[0]
    return cls(host=np.zeros((c, c), np.int64), device=counts, pending=int(num_pixels),
               flush_pixels=flush_pixels)

  @classmethod
  def from_model_output(cls, labels: jax.Array, preds: jax.Array, num_classes: int,
                        **_) -> 'ConfusionMatrix':
    return cls.from_counts(confusion_matrix(labels, preds, num_classes), int(np.prod(labels.shape)))

  def _flushed(self) -> 'ConfusionMatrix':
    if self.device is None:
      return self
    return self.replace(host=self.host + np.asarray(jax.device_get(self.device), np.int64),
                        device=None, pending=0)

  def merge(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
    if self.host.shape != other.host.shape:
      raise ValueError(f'confusion matrices of shape {self.host.shape} and {other.host.shape}')
    a = self
    if a.pending + other.pending >= self.flush_pixels:
      a = a._flushed()
      if other.pending >= self.flush_pixels:  # Too large to ever add on device.
        return a.replace(host=a.host + other._flushed().host)
    host = a.host + other.host
    if other.device is None:
      return a.replace(host=host)
    device = other.device if a.device is None else a.device + other.device
    return a.replace(host=host, device=device, pending=a.pending + other.pending)

  def compute(self) -> np.ndarray:
    return self._flushed().host.copy()


class ConfusionAccumulator:
  """Sums per-batch confusion matrices (a ConfusionMatrix metric underneath):
  int32 on device, flushed to int64 on the host before a cell could overflow."""

  def __init__(self, num_classes: int, flush_pixels: int = FLUSH_PIXELS):
    self.num_classes = num_classes
    self.flush_pixels = flush_pixels
    self.metric = ConfusionMatrix.empty(num_classes, flush_pixels)

  def add(self, cm: jax.Array, num_pixels: int):
    self.metric = self.metric.merge(ConfusionMatrix.from_counts(cm, num_pixels,
                                                                self.flush_pixels))

  def result(self) -> np.ndarray:
    return self.metric.compute()


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
