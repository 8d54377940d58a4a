"""Early stopping and reduce-on-plateau bookkeeping, against hand-worked sequences."""

import json
import math

import pytest

from segjax import config as config_lib
from segjax import control


def _run_es(values, **kw):
  es = control.EarlyStopping('mIoU', **kw)
  for step, v in enumerate(values, 1):
    if es.update(step, {'mIoU': v}):
      break
  return es


def test_early_stopping_hand_worked():
  # best 0.5 at eval 2; evals 3, 4, 5 miss (0.505 is not > 0.5 + 0.01); patience 3 -> stop at 5.
  es = _run_es([0.3, 0.5, 0.505, 0.4, 0.45, 0.9], patience=3, min_delta=0.01)
  assert (es.stopped_step, es.best, es.best_step, es.wait) == (5, 0.5, 2, 3)
  # An improvement resets the count.
  es = _run_es([0.3, 0.2, 0.4, 0.3, 0.3], patience=2)
  assert (es.stopped_step, es.best_step) == (5, 3)
  # Never stops while improving; patience 0 stops at the first miss.
  assert not _run_es([0.1, 0.2, 0.3], patience=1).stopped
  assert _run_es([0.1, 0.1], patience=0).stopped_step == 2


def test_early_stopping_min_mode_and_auto():
  es = control.EarlyStopping('loss', patience=1)
  assert es.mode == 'min'
  assert not es.update(1, {'loss': 2.0}) and not es.update(2, {'loss': 1.0})
  assert es.update(3, {'loss': 1.5}) and es.best == 1.0
  nan = control.EarlyStopping('mIoU', patience=1)
  nan.update(1, {'mIoU': 0.2})
  assert nan.update(2, {'mIoU': math.nan})  # NaN never improves.


def test_reduce_on_plateau_hand_worked():
  rp = control.ReduceLROnPlateau('mIoU', factor=0.5, patience=2, cooldown=1, min_scale=0.2)
  scales = [rp.update(s, {'mIoU': v}) for s, v in enumerate(
      [0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3], 1)]
  # Eval 4 is the 2nd miss -> 0.5 (cooldown 1); 5 ends the cooldown, then is a
  # miss (wait 1); 6 -> 0.25; 7 as 5; 8 improves; 9, 10 miss -> 0.2 (floored:
  # 0.125 < min_scale); at the floor there are no more reductions.
  assert scales == [1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2]
  assert rp.reductions == [(4, 0.5), (6, 0.25), (10, 0.2)]


def test_state_round_trips_through_json():
  es = _run_es([0.3, 0.2], patience=5)
  rp = control.ReduceLROnPlateau('loss', factor=0.1, patience=1)
  for s, v in enumerate([1.0, 1.2, 1.3], 1):
    rp.update(s, {'loss': v})
  es2 = control.EarlyStopping('mIoU', patience=5)
  es2.load_state_dict(json.loads(json.dumps(es.state_dict())))
  rp2 = control.ReduceLROnPlateau('loss', factor=0.1, patience=1)
  rp2.load_state_dict(json.loads(json.dumps(rp.state_dict())))
  assert es2.state_dict() == es.state_dict() and rp2.state_dict() == rp.state_dict()
  # The restored controllers decide as the originals do.
  for s, v in [(4, 0.25), (5, 0.31), (6, 0.1)]:
    assert es.update(s, {'mIoU': v}) == es2.update(s, {'mIoU': v})
    assert rp.update(s, {'loss': v}) == rp2.update(s, {'loss': v})
  # A fresh controller stores infinities as strings (JSON has none).
  assert control.EarlyStopping('loss', patience=1).state_dict()['best'] == 'inf'


def test_a_stopped_run_trains_on_under_a_larger_patience():
  # Stopped at eval 4 under patience 2 (best at 2, misses at 3 and 4).
  es = _run_es([0.3, 0.5, 0.4, 0.4], patience=2)
  assert (es.stopped_step, es.wait) == (4, 2)
  saved = json.loads(json.dumps(es.state_dict()))
  c = config_lib.base_config()
  c.early_stopping.metric = 'mIoU'
  c.early_stopping.patience = 2
  same = control.Controller(c)
  assert same.load_state_dict({'early_stopping': saved}) == [] and same.stopped
  c.early_stopping.patience = 4
  more = control.Controller(c)
  (message,) = more.load_state_dict({'early_stopping': saved})
  assert 'stopped at step 4 after 2 evaluations' in message and 'patience is now 4' in message
  assert not more.stopped and more.early_stopping.best_step == 2
  # The misses already counted still count: two more stop it at eval 6.
  assert not more.update(5, {'mIoU': 0.45}) and more.update(6, {'mIoU': 0.5})
  assert more.early_stopping.stopped_step == 6
  # A run that has not stopped is not told anything.
  running = control.Controller(c)
  assert running.load_state_dict({'early_stopping': _run_es([0.3], patience=2).state_dict()}) == []


def test_controller_from_config_and_validation():
  c = config_lib.base_config()
  assert control.Controller(c).state_dict() == {} and control.Controller(c).lr_scale == 1.0
  c.early_stopping.metric = 'mIoU'
  c.reduce_on_plateau.metric = 'loss'
  ctl = control.Controller(c)
  assert ctl.plateau.mode == 'min' and ctl.early_stopping.mode == 'max'
  c.early_stopping.metric = 'miou'
  with pytest.raises(config_lib.ConfigError, match=r"early_stopping.metric='miou' is not one of"):
    config_lib.validate(c)
  c.early_stopping.metric = 'mIoU'
  c.reduce_on_plateau.factor = 1.5
  with pytest.raises(config_lib.ConfigError, match='reduce_on_plateau.factor'):
    config_lib.validate(c)
