r"""Per-class #TP, #FP, #FN and IoU from a confusion matrix: the separable
residual FCN write-up's report, for any evaluation result.

  segjax iou_report --result=runs/x/eval/val_00001234.json

Counts are pixels: for class c, TP = cm[c, c], FP = the column sum minus TP
(pixels predicted c that are not c), FN = the row sum minus TP; IoU = TP /
(TP + FP + FN). The mean is over classes with TP + FP + FN > 0 (a class absent
from both ground truth and prediction has no IoU), as segjax.metrics does.
"""

from __future__ import annotations

import json
from typing import Sequence

from absl import flags
import numpy as np

from segjax import cli


def class_counts(cm) -> dict[str, np.ndarray]:
  """{'tp', 'fp', 'fn' (int64), 'iou' (float64, NaN where TP+FP+FN = 0)} per
  class of a (C, C) confusion matrix, rows ground truth, columns prediction."""
  cm = np.asarray(cm, np.int64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'confusion matrix must be square (C, C), got shape {cm.shape}')
  tp = np.diag(cm)
  fp = cm.sum(axis=0) - tp
  fn = cm.sum(axis=1) - tp
  den = (tp + fp + fn).astype(np.float64)
  iou = np.full(tp.shape, np.nan)
  np.divide(tp, den, out=iou, where=den > 0)
  return {'tp': tp, 'fp': fp, 'fn': fn, 'iou': iou}


def format_counts(cm, class_names: Sequence[str] | None = None) -> str:
  """A Markdown table: class, #TP, #FP, #FN, IoU per class, then the mean IoU."""
  c = class_counts(cm)
  n = len(c['tp'])
  names = list(class_names) if class_names else [f'class_{i}' for i in range(n)]
  if len(names) != n:
    raise ValueError(f'{len(names)} class names for a {n}-class confusion matrix')
  lines = ['| class | #TP | #FP | #FN | IoU |', '|---|---:|---:|---:|---:|']
  for i, name in enumerate(names):
    iou = 'n/a' if np.isnan(c['iou'][i]) else f"{c['iou'][i]:.3f}"
    lines.append(f"| {i:02d} {name} | {c['tp'][i]} | {c['fp'][i]} | {c['fn'][i]} | {iou} |")
  valid = c['iou'][~np.isnan(c['iou'])]
  mean = f'{valid.mean():.3f}' if valid.size else 'n/a'
  lines.append(f'| mean IoU | | | | {mean} |')
  return '\n'.join(lines) + '\n'


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  flags.DEFINE_string('result', None, 'An evaluation result: <workdir>/eval/<split>_<step>.json.',
                      required=True, flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  del argv
  path = fv.result
  try:
    with open(path) as f:
      result = json.load(f)
    cm = result['confusion_matrix']
    names = list(result.get('IoU', {})) or None
  except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f'{path}: not an evaluation result ({type(e).__name__}: {e})') from None
  print(format_counts(cm, names), end='')
  return 0


if __name__ == '__main__':
  cli.run(main, define_flags)
