"""Early stopping and reduce-on-plateau against Keras' callbacks on random metric curves."""

from __future__ import annotations

import numpy as np
import pytest

from segjax import control
from tests.parity import util

keras = pytest.importorskip('keras', reason=util.PEERS)


def _curve(rng: np.random.Generator, n: int) -> list[float]:
  """A noisy rising curve with plateaus (exact repeats) and dips."""
  values, v = [], float(rng.uniform(0, 0.3))
  for _ in range(n):
    r = rng.uniform()
    if r < 0.3:
      pass  # Plateau: the same value again.
    elif r < 0.8:
      v += float(rng.normal(0.01, 0.02))
    else:
      v -= float(rng.uniform(0, 0.05))
    values.append(v)
  return values


def _keras_model(lr: float):
  model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
  model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss='mse')
  return model


@pytest.mark.parametrize('seed', range(4))
def test_reduce_on_plateau_matches_keras(seed):
  rng = np.random.default_rng(seed)
  for case in range(25):
    mode = ['max', 'min'][case % 2]
    kw = dict(factor=float(rng.choice([0.5, 0.25])), patience=int(rng.integers(0, 4)),
              min_delta=float(rng.choice([0.0, 0.004, 0.02])), cooldown=int(rng.integers(0, 3)),
              min_scale=float(rng.choice([0.0, 0.125])))
    values = _curve(rng, 40)
    if mode == 'min':
      values = [-v for v in values]
    ours = control.ReduceLROnPlateau('mIoU', mode=mode, **kw)
    model = _keras_model(1.0)
    cb = keras.callbacks.ReduceLROnPlateau(monitor='m', mode=mode, factor=kw['factor'],
                                           patience=kw['patience'], min_delta=kw['min_delta'],
                                           cooldown=kw['cooldown'], min_lr=kw['min_scale'])
    cb.set_model(model)
    cb.on_train_begin()
    ours_lr, keras_lr = [], []
    for epoch, v in enumerate(values):
      ours_lr.append(ours.update(epoch, {'mIoU': v}))
      cb.on_epoch_end(epoch, {'m': v})
      keras_lr.append(float(np.asarray(model.optimizer.learning_rate)))
    assert ours_lr == pytest.approx(keras_lr, rel=1e-6), (kw, mode, values)
    assert len(ours.reductions) == sum(b < a for a, b in zip([1.0] + keras_lr, keras_lr))


@pytest.mark.parametrize('seed', range(4))
def test_early_stopping_matches_keras(seed):
  rng = np.random.default_rng(100 + seed)
  stops = 0
  for case in range(25):
    mode = ['max', 'min'][case % 2]
    patience = int(rng.integers(1, 6))
    min_delta = float(rng.choice([0.0, 0.004, 0.02]))
    values = _curve(rng, 40)
    if mode == 'min':
      values = [-v for v in values]
    ours = control.EarlyStopping('mIoU', mode=mode, patience=patience, min_delta=min_delta)
    model = _keras_model(0.1)
    cb = keras.callbacks.EarlyStopping(monitor='m', mode=mode, patience=patience,
                                       min_delta=min_delta)
    cb.set_model(model)
    cb.on_train_begin()
    ours_stop = keras_stop = None
    for epoch, v in enumerate(values):
      if ours_stop is None and ours.update(epoch, {'mIoU': v}):
        ours_stop = epoch
      cb.on_epoch_end(epoch, {'m': v})
      if keras_stop is None and model.stop_training:
        keras_stop = epoch
      if ours_stop is not None and keras_stop is not None:
        break
    assert ours_stop == keras_stop, (patience, min_delta, mode, values)
    stops += ours_stop is not None
  assert stops >= 5  # The curves do trigger stops, so the comparison is not vacuous.
