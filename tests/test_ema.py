"""Exponential moving average of the weights."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import config as config_lib
from segjax.tools import evaluate as evaluate_tool
from segjax import optim
from segjax import sharding
from segjax import train
from segjax.data import pipeline
from tests.test_train import tiny_config


def test_update_ema_formula():
  ema = {'params': {'w': jnp.array([1.0, 2.0])}, 'batch_stats': {}}
  new = {'params': {'w': jnp.array([3.0, 6.0])}, 'batch_stats': {}}
  # t = 0: d = min(0.99, 1/10) = 0.1.
  out = train.update_ema(ema, new, jnp.array(0), 0.99)
  np.testing.assert_allclose(out['params']['w'], [0.1 * 1 + 0.9 * 3, 0.1 * 2 + 0.9 * 6], rtol=1e-6)
  # Late: d = decay.
  out = train.update_ema(ema, new, jnp.array(10_000), 0.99)
  np.testing.assert_allclose(out['params']['w'], [0.99 + 0.03, 1.98 + 0.06], rtol=1e-6)
  assert train.update_ema({}, new, jnp.array(3), 0.99) == {}


def test_ema_tracks_the_weights_of_every_step():
  """Three real steps: the state's EMA equals the recurrence applied by hand
  to the parameters and BN statistics after each step."""
  c = tiny_config(**{'ema.decay': 0.5})
  model = train.build_model(c)
  tx, schedule = optim.make_optimizer(c)
  mesh = sharding.make_mesh()
  state = train.init_state(c, model, tx, mesh)
  ema = jax.device_get(train.variables_of(state))
  step = train.jit_train_step(train.make_train_step(c, model, tx, schedule), mesh)
  batches = pipeline.train_iterator(c, 0)
  for t in range(3):
    state, _ = step(state, sharding.to_global(next(batches), mesh), jax.random.key(0))
    d = min(0.5, (1 + t) / (10 + t))
    ema = jax.tree.map(lambda e, n: d * e + (1 - d) * n, ema,
                       jax.device_get(train.variables_of(state)))
  got = jax.device_get(state.ema)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ema)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(jax.tree.leaves(got['params'])[0],
                         jax.tree.leaves(jax.device_get(state.params))[0])


def test_ema_is_evaluated_alongside_and_in_eval_mode(tmp_path):
  c = tiny_config(**{'ema.decay': 0.9})
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(c, workdir)
  assert set(result['ema']) >= {'mIoU', 'aAcc'}
  assert os.path.exists(os.path.join(workdir, 'eval', 'val_00000004_ema.json'))
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert any('val_ema/mIoU' in r for r in rows)
  out = evaluate_tool.run(workdir)
  with open(os.path.join(workdir, 'eval', 'val_00000004_ema.json')) as f:
    written = json.load(f)
  assert out['ema']['mIoU'] == pytest.approx(written['mIoU'])


def test_ema_decay_is_validated():
  c = tiny_config()
  c.ema.decay = 1.0
  with pytest.raises(config_lib.ConfigError, match=r"ema\.decay"):
    config_lib.validate(c)
