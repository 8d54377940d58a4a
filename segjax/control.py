"""Training control from validation metrics: early stopping and reduce-on-plateau.

Both follow Keras' EarlyStopping / ReduceLROnPlateau callbacks exactly, with
one validation evaluation (every `eval_every` steps) in the place of an epoch:

  improved  = value - min_delta > best ('max' mode) or value + min_delta < best
              ('min' mode); the first evaluation always improves on +-inf.
  EarlyStopping:      improved -> best = value, wait = 0; else wait += 1 and
                      stop once wait >= patience.
  ReduceLROnPlateau:  in cooldown -> cooldown -= 1, wait = 0; improved ->
                      best = value, wait = 0; else (out of cooldown) wait += 1
                      and once wait >= patience the learning-rate scale
                      becomes max(scale * factor, min_scale), cooldown starts
                      and wait = 0.

The learning-rate scale multiplies the optimizer's updates (TrainState.lr_scale),
which for every optax optimizer here equals multiplying its learning rate.
Their state is plain JSON, saved in each checkpoint's meta item and restored
with it, so a resumed run makes the same decisions as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Optional

# Evaluation scalars a controller can watch (evaluate.scalar_metrics), and the
# mode that 'auto' picks for each.
METRIC_MODES = {'mIoU': 'max', 'mAcc': 'max', 'aAcc': 'max', 'fwIoU': 'max', 'mDice': 'max',
                'loss': 'min'}


def resolve_mode(metric: str, mode: str, key: str) -> str:
  if metric not in METRIC_MODES:
    raise ValueError(f'{key}.metric={metric!r} is not one of {sorted(METRIC_MODES)} '
                     "(or '' for off)")
  if mode == 'auto':
    return METRIC_MODES[metric]
  if mode not in ('max', 'min'):
    raise ValueError(f"{key}.mode={mode!r} is not 'auto', 'max' or 'min'")
  return mode


class _Monitor:
  """Shared best/wait bookkeeping."""

  def __init__(self, metric: str, mode: str, min_delta: float, patience: int, key: str):
    self.metric = metric
    self.mode = resolve_mode(metric, mode, key)
    self.min_delta = abs(float(min_delta))
    self.patience = int(patience)
    if self.patience < 0:
      raise ValueError(f'{key}.patience={patience} must be >= 0')
    self.best = -math.inf if self.mode == 'max' else math.inf
    self.best_step: Optional[int] = None
    self.wait = 0

  def value_of(self, metrics: dict) -> float:
    if self.metric not in metrics:
      raise KeyError(f'metric {self.metric!r} is not among the evaluation results '
                     f'{sorted(metrics)}')
    return float(metrics[self.metric])

  def improved(self, value: float) -> bool:
    # Keras' MonitorCallback._is_improvement, rounding included.
    if math.isnan(value):
      return False
    if self.mode == 'max':
      return value - self.min_delta > self.best
    return value + self.min_delta < self.best

  def state_dict(self) -> dict:
    return {'best': _json_float(self.best), 'best_step': self.best_step, 'wait': self.wait}

  def load_state_dict(self, state: dict) -> None:
    self.best = float(state['best'])
    self.best_step = state['best_step']
    self.wait = int(state['wait'])


def _json_float(x: float):
  # JSON has no infinities; orbax's JSON writer would refuse them.
  return x if math.isfinite(x) else ('inf' if x > 0 else '-inf')


class EarlyStopping(_Monitor):
  """Stops training when `metric` has not improved for `patience` evaluations."""

  def __init__(self, metric: str, *, patience: int, min_delta: float = 0.0, mode: str = 'auto'):
    super().__init__(metric, mode, min_delta, patience, 'early_stopping')
    self.stopped_step: Optional[int] = None

  @property
  def stopped(self) -> bool:
    return self.stopped_step is not None

  def update(self, step: int, metrics: dict) -> bool:
    """Records an evaluation at `step`; True when training should stop."""
    value = self.value_of(metrics)
    if self.improved(value):
      self.best, self.best_step, self.wait = value, int(step), 0
    else:
      self.wait += 1
      if self.wait >= self.patience:
        self.stopped_step = int(step)
    return self.stopped

  def state_dict(self) -> dict:
    return dict(super().state_dict(), stopped_step=self.stopped_step)

  def load_state_dict(self, state: dict) -> None:
    super().load_state_dict(state)
    self.stopped_step = state['stopped_step']
    if self.stopped_step is not None and self.wait < self.patience:
      # Stopped under a smaller patience than this config's: the misses counted
      # so far no longer reach it, so the run trains on (and stops when they do).
      self.stopped_step = None


class ReduceLROnPlateau(_Monitor):
  """Multiplies the learning rate by `factor` when `metric` plateaus."""

  def __init__(self, metric: str, *, factor: float, patience: int, min_delta: float = 0.0,
               cooldown: int = 0, min_scale: float = 0.0, mode: str = 'auto'):
    super().__init__(metric, mode, min_delta, patience, 'reduce_on_plateau')
    if not 0.0 < float(factor) < 1.0:
      raise ValueError(f'reduce_on_plateau.factor={factor} must be in (0, 1)')
    if int(cooldown) < 0 or float(min_scale) < 0:
      raise ValueError('reduce_on_plateau.cooldown and min_scale must be >= 0')
    self.factor = float(factor)
    self.cooldown = int(cooldown)
    self.min_scale = float(min_scale)
    self.cooldown_counter = 0
    self.scale = 1.0
    self.reductions: list[tuple[int, float]] = []  # (step, new scale)

  def update(self, step: int, metrics: dict) -> float:
    """Records an evaluation at `step`; returns the learning-rate scale to use."""
    value = self.value_of(metrics)
    if self.cooldown_counter > 0:
      self.cooldown_counter -= 1
      self.wait = 0
    if self.improved(value):
      self.best, self.best_step, self.wait = value, int(step), 0
    elif self.cooldown_counter <= 0:
      self.wait += 1
      if self.wait >= self.patience:
        new = max(self.scale * self.factor, self.min_scale)
        if new < self.scale:
          self.scale = new
          self.reductions.append((int(step), new))
          self.cooldown_counter = self.cooldown
          self.wait = 0
    return self.scale

  def state_dict(self) -> dict:
    return dict(super().state_dict(), cooldown_counter=self.cooldown_counter, scale=self.scale,
                reductions=[list(r) for r in self.reductions])

  def load_state_dict(self, state: dict) -> None:
    super().load_state_dict(state)
    self.cooldown_counter = int(state['cooldown_counter'])
    self.scale = float(state['scale'])
    self.reductions = [(int(s), float(v)) for s, v in state['reductions']]


class Controller:
  """The controllers a config asks for, saved and restored together."""

  def __init__(self, config):
    es, rp = config.early_stopping, config.reduce_on_plateau
    self.early_stopping = (EarlyStopping(es.metric, patience=int(es.patience),
                                         min_delta=float(es.min_delta), mode=es.mode)
                           if es.metric else None)
    self.plateau = (ReduceLROnPlateau(rp.metric, factor=float(rp.factor),
                                      patience=int(rp.patience), min_delta=float(rp.min_delta),
                                      cooldown=int(rp.cooldown), min_scale=float(rp.min_scale),
                                      mode=rp.mode)
                    if rp.metric else None)

  @property
  def stopped(self) -> bool:
    return self.early_stopping is not None and self.early_stopping.stopped

  @property
  def lr_scale(self) -> float:
    return self.plateau.scale if self.plateau is not None else 1.0

  def update(self, step: int, metrics: dict) -> list[str]:
    """Feeds one evaluation; returns messages for what changed."""
    messages = []
    if self.plateau is not None:
      before = self.plateau.scale
      after = self.plateau.update(step, metrics)
      if after != before:
        messages.append(
            f'reduce_on_plateau: val {self.plateau.metric} has not improved on '
            f'{self.plateau.best:.4f} (step {self.plateau.best_step}) for '
            f'{self.plateau.patience} evaluations; learning-rate scale {before:g} -> {after:g}')
    if self.early_stopping is not None and not self.early_stopping.stopped:
      if self.early_stopping.update(step, metrics):
        e = self.early_stopping
        messages.append(
            f'early_stopping at step {step}: val {e.metric} has not improved by more than '
            f'{e.min_delta:g} for {e.patience} evaluations; best {e.best:.4f} at step '
            f'{e.best_step}')
    return messages

  def state_dict(self) -> dict:
    out = {}
    if self.early_stopping is not None:
      out['early_stopping'] = self.early_stopping.state_dict()
    if self.plateau is not None:
      out['reduce_on_plateau'] = self.plateau.state_dict()
    return out

  def load_state_dict(self, state: Optional[dict]) -> list[str]:
    """Restores what was saved; a controller the checkpoint lacks (turned on
    after it was written) starts fresh. Returns messages for what the config
    changed: a run that early stopping ended trains on when resumed with a
    patience above the evaluations it has missed."""
    state = state or {}
    messages = []
    if self.early_stopping is not None and 'early_stopping' in state:
      saved = state['early_stopping']
      self.early_stopping.load_state_dict(saved)
      e = self.early_stopping
      if saved.get('stopped_step') is not None and not e.stopped:
        messages.append(
            f"early_stopping: this run stopped at step {saved['stopped_step']} after {e.wait} "
            f'evaluations without improvement; early_stopping.patience is now {e.patience}, '
            f'so it trains on')
    if self.plateau is not None and 'reduce_on_plateau' in state:
      self.plateau.load_state_dict(state['reduce_on_plateau'])
    return messages
