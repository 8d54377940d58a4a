"""What a run writes: TensorBoard events, metrics.jsonl, train.log, progress bars.

Only process 0 writes; the other processes get writers that do nothing.

- `MetricWriter`: scalars to TensorBoard (tensorboardX) and to `metrics.jsonl`
  (every row carries `wall_time`, seconds since the epoch); images and
  matplotlib figures to TensorBoard and `images/`; text (the resolved
  config) and HParams (sweep points).
- `info(message)`: a console line (stdout, drawn above any progress bar) that
  `log_to_file` also appends, timestamped, to `<workdir>/train.log` together
  with absl's log records.
- `TrainProgress`: the training progress bar (tqdm, stderr, only on a TTY)
  and the periodic step line; images/s and ETA count training time only,
  because evaluation and checkpointing run inside `pause()`.
- `progress(iterable)`: a tqdm bar for evaluation, predict, check_data.

clu's metric_writers and periodic_actions import TensorFlow, hence
tensorboardX and tqdm here.
"""

from __future__ import annotations

import contextlib
import json
import logging as pylogging
import math
import os
import sys
import time
from typing import Any, Iterable, Iterator, Mapping, Optional

from absl import logging as absl_logging
import jax
import numpy as np
from PIL import Image
import tqdm

from segjax import figures

LOG_NAME = 'train.log'
LOG_FORMAT = '%(asctime)s.%(msecs)03d %(levelname).1s %(message)s'
LOG_DATEFMT = '%Y-%m-%d %H:%M:%S'
_LOGGER = pylogging.getLogger('segjax')


def is_main() -> bool:
  return jax.process_index() == 0


# ----------------------------------------------------------------------------
# Console and train.log.


def info(message: str) -> None:
  """Prints `message` on process 0 (above any progress bar) and, inside
  `log_to_file`, appends it to the log file with a timestamp."""
  if not is_main():
    return
  tqdm.tqdm.write(str(message), file=sys.stdout)
  sys.stdout.flush()
  if _LOGGER.handlers:
    for line in str(message).splitlines() or ['']:
      _LOGGER.info(line)


@contextlib.contextmanager
def log_to_file(workdir: str, name: str = LOG_NAME) -> Iterator[Optional[str]]:
  """Appends `info` lines and absl log records (at absl's verbosity) to
  `<workdir>/<name>`, each with a timestamp; process 0 only."""
  if not is_main():
    yield None
    return
  path = os.path.join(workdir, name)
  os.makedirs(workdir, exist_ok=True)
  handler = pylogging.FileHandler(path, mode='a', encoding='utf-8')
  handler.setFormatter(pylogging.Formatter(LOG_FORMAT, datefmt=LOG_DATEFMT))
  handler.setLevel(pylogging.INFO)
  absl_logger = absl_logging.get_absl_logger()
  saved = (_LOGGER.level, _LOGGER.propagate)
  _LOGGER.setLevel(pylogging.INFO)
  _LOGGER.propagate = False  # The console line is printed by info(), not by absl.
  _LOGGER.addHandler(handler)
  absl_logger.addHandler(handler)
  try:
    yield path
  finally:
    _LOGGER.removeHandler(handler)
    absl_logger.removeHandler(handler)
    _LOGGER.setLevel(saved[0])
    _LOGGER.propagate = saved[1]
    handler.close()


# ----------------------------------------------------------------------------
# Progress.


def progress(iterable: Iterable, *, total: Optional[int] = None, desc: str = '',
             unit: str = 'it', enabled: Optional[bool] = None, file=None) -> tqdm.tqdm:
  """A tqdm bar on `file` (stderr); shown on process 0 when it is a terminal."""
  if enabled is None:
    enabled = is_main()
  return tqdm.tqdm(iterable, total=total, desc=desc, unit=unit, file=file or sys.stderr,
                   disable=None if enabled else True, leave=False, dynamic_ncols=True)


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m:02d}:{s:02d}'


class TrainProgress:
  """Step bar (tqdm) plus the periodic step line, with images/s and ETA over
  training time only.

  `start(step, now)` after the first (compiling) step; `update(step, now)`
  at each log step returns (line, images/s); time spent inside `pause()`
  (evaluation, checkpointing) is left out of both rate and ETA.
  """

  def __init__(self, total_steps: int, start_step: int, batch_size: int, *,
               enabled: Optional[bool] = None):
    self.total, self.batch_size = int(total_steps), int(batch_size)
    self.enabled = is_main() if enabled is None else enabled
    self.bar = tqdm.tqdm(total=self.total, initial=int(start_step), unit='step', desc='train',
                         file=sys.stderr, disable=None if self.enabled else True,
                         dynamic_ncols=True,
                         bar_format='{desc} {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar}| '
                         '{postfix}')
    self._t = None            # Start of the current interval (clock of `now`).
    self._step = int(start_step)
    self._paused = 0.0        # Paused seconds inside the current interval.
    self._timed_steps = 0     # Totals over all intervals, for the ETA.
    self._timed_seconds = 0.0
    self.images_per_sec = float('nan')

  def start(self, step: int, now: float) -> None:
    self._t, self._step, self._paused = now, int(step), 0.0

  def advance(self, n: int = 1) -> None:
    self.bar.update(n)

  @contextlib.contextmanager
  def pause(self):
    t0 = time.time()
    try:
      yield
    finally:
      self._paused += time.time() - t0

  def update(self, step: int, now: float, **scalars: float) -> tuple[str, float]:
    rate = float('nan')
    if self._t is not None and step > self._step:
      active = max(now - self._t - self._paused, 1e-9)
      done = step - self._step
      rate = done * self.batch_size / active
      self._timed_steps += done
      self._timed_seconds += active
      self._t, self._step, self._paused = now, int(step), 0.0
    self.images_per_sec = rate
    steps_per_sec = (self._timed_steps / self._timed_seconds if self._timed_seconds > 0
                     else float('nan'))
    eta = (self.total - step) / steps_per_sec if steps_per_sec > 0 else float('nan')
    parts = [f'step {step}/{self.total} ({100.0 * step / self.total:5.1f}%)']
    parts += [f'{k} {v:.4g}' for k, v in scalars.items()]
    parts += [f'{rate:.1f} img/s' if math.isfinite(rate) else '- img/s',
              f'ETA {format_duration(eta)}']
    self.bar.set_postfix_str(' | '.join(parts[1:]), refresh=False)
    return ' | '.join(parts), rate

  def close(self) -> None:
    self.bar.close()


# ----------------------------------------------------------------------------
# Scalars, images, text, hparams.


def _json_value(v: float) -> Any:
  return v if math.isfinite(v) else str(v)


class MetricWriter:
  """Scalars to TensorBoard (tensorboardX) and `metrics.jsonl`; images and
  figures to TensorBoard and `images/<name>_<step>.png`."""

  def __init__(self, workdir: str, *, enabled: Optional[bool] = None):
    self.enabled = is_main() if enabled is None else enabled
    self.workdir = workdir
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top  (process 0 only)
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, float], prefix: str = '', *,
                    wall_time: Optional[float] = None) -> None:
    """One metrics.jsonl row {'step', 'wall_time', prefix+name: value, ...}."""
    if not self.enabled:
      return
    wall_time = time.time() if wall_time is None else float(wall_time)
    row = {'step': int(step), 'wall_time': wall_time}
    for k, v in scalars.items():
      v = float(v)
      name = f'{prefix}{k}'
      row[name] = _json_value(v)
      self._tb.add_scalar(name, v, int(step), walltime=wall_time)
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

  def write_figure(self, step: int, name: str, fig, *, png: bool = True) -> Optional[str]:
    """A matplotlib figure, as write_image (png=False: TensorBoard only)."""
    if not self.enabled:
      return None
    image = figures.to_rgb(fig)
    if png:
      return self.write_image(step, name, image)
    self._tb.add_image(name, image, int(step), dataformats='HWC')
    return None

  def write_text(self, tag: str, text: str, step: int = 0) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, int(step))

  def write_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """TensorBoard HParams: this run's hyperparameters (e.g. a sweep point's
    overrides) and its final metrics, for the HParams dashboard."""
    if not self.enabled:
      return
    hp = {k: (v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str))
          for k, v in hparams.items()}
    self._tb.add_hparams(hp, {k: float(v) for k, v in metrics.items()}, name='hparams')

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      self.enabled = False


def uncertainty_image(entropy: np.ndarray, num_classes: int) -> np.ndarray:
  """Predictive entropy (H, W) in nats -> uint8 RGB, black = certain, white =
  maximal uncertainty (log num_classes)."""
  scale = np.log(max(num_classes, 2))
  level = np.clip(np.asarray(entropy, np.float64) / scale, 0.0, 1.0)
  gray = np.round(level * 255).astype(np.uint8)
  return np.repeat(gray[..., None], 3, axis=-1)
