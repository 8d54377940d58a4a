"""Run logs: TensorBoard events, metrics.jsonl, a progress line, prediction panels.

Only process 0 writes; the other processes get writers that do nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional

import jax
import numpy as np
from PIL import Image


class MetricWriter:
  """Scalars to TensorBoard (tensorboardX) and to `metrics.jsonl`; images to both TB and PNG."""

  def __init__(self, workdir: str, *, enabled: Optional[bool] = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir = workdir
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # Lazy: only process 0 needs it.
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write_scalars(self, step: int, scalars: dict, prefix: str = '') -> None:
    if not self.enabled:
      return
    row = {'step': int(step)}
    for k, v in scalars.items():
      v = float(v)
      name = f'{prefix}{k}'
      row[name] = v if math.isfinite(v) else str(v)
      self._tb.add_scalar(name, v, int(step))
    self._jsonl.write(json.dumps(row) + '\n')
    self._jsonl.flush()

  def write_image(self, step: int, name: str, image: np.ndarray) -> Optional[str]:
    """uint8 (H, W, 3) -> TensorBoard and <workdir>/images/<name>_<step>.png."""
    if not self.enabled:
      return None
    self._tb.add_image(name, image, int(step), dataformats='HWC')
    path = os.path.join(self.workdir, 'images', f'{name}_{int(step):08d}.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path)
    return path

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      self.enabled = False


def _fmt_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m:02d}:{s:02d}'


class Progress:
  """Step counter with images/s and ETA; redraws one line on a TTY, else prints lines."""

  def __init__(self, total_steps: int, start_step: int, batch_size: int, *,
               stream=None, enabled: Optional[bool] = None):
    self.total, self.start, self.batch_size = total_steps, start_step, batch_size
    self.stream = stream or sys.stdout
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self._t0 = None
    self._last_t = None
    self._last_step = start_step
    self.images_per_sec = float('nan')

  def update(self, step: int, **scalars) -> str:
    """Call after step `step` finished (1-based count of steps done)."""
    now = time.perf_counter()
    if self._t0 is None:
      # The first interval includes compilation; rate and ETA start after it.
      self._t0, self._last_t, self._last_step = now, now, step
      rate = float('nan')
    else:
      done = step - self._last_step
      rate = done * self.batch_size / max(now - self._last_t, 1e-9) if done else float('nan')
      self._last_t, self._last_step = now, step
      self.images_per_sec = rate
    steps_per_sec = rate / self.batch_size if math.isfinite(rate) else float('nan')
    eta = (self.total - step) / steps_per_sec if steps_per_sec and math.isfinite(steps_per_sec) else float('nan')
    pct = 100.0 * step / self.total
    parts = [f'step {step}/{self.total} ({pct:5.1f}%)']
    parts += [f'{k} {v:.4f}' for k, v in scalars.items()]
    parts += [f'{rate:.1f} img/s' if math.isfinite(rate) else '- img/s', f'ETA {_fmt_duration(eta)}']
    line = ' | '.join(parts)
    if self.enabled:
      if self.tty:
        self.stream.write('\r' + line + '\x1b[K')
      else:
        self.stream.write(line + '\n')
      self.stream.flush()
    return line

  def newline(self) -> None:
    if self.enabled and self.tty:
      self.stream.write('\n')
      self.stream.flush()


def uncertainty_image(entropy: np.ndarray, num_classes: int) -> np.ndarray:
  """Predictive entropy (H, W) in nats -> uint8 RGB, black = certain, white =
  maximal uncertainty (log num_classes)."""
  scale = np.log(max(num_classes, 2))
  level = np.clip(np.asarray(entropy, np.float64) / scale, 0.0, 1.0)
  gray = np.round(level * 255).astype(np.uint8)
  return np.repeat(gray[..., None], 3, axis=-1)


def prediction_panel(images: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                     colorize, uncertainty: np.ndarray | None = None,
                     num_classes: int | None = None) -> np.ndarray:
  """Rows of image | ground truth | prediction [| uncertainty], uint8.

  `colorize` maps a class-index map to RGB (LabelSpec.colorize); ignored ground
  truth pixels come out black. `uncertainty` (N, H, W) is predictive entropy,
  drawn with uncertainty_image (needs num_classes).
  """
  rows = []
  gap = 4
  for i, (img, lab, pred) in enumerate(zip(images, labels, preds)):
    h, w = lab.shape
    sep = np.full((h, gap, 3), 255, np.uint8)
    cols = [np.asarray(img, np.uint8)[:h, :w], sep, colorize(lab), sep, colorize(pred)]
    if uncertainty is not None:
      cols += [sep, uncertainty_image(uncertainty[i][:h, :w], num_classes)]
    rows.append(np.concatenate(cols, axis=1))
    rows.append(np.full((gap, rows[-1].shape[1], 3), 255, np.uint8))
  return np.concatenate(rows[:-1], axis=0)
