"""Checkpointer: exact round trip, keep-N latest plus best-N by mIoU, step resolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import checkpoint


def _state(step):
  return {'step': jnp.asarray(step, jnp.int32),
          'params': {'w': jnp.arange(6, dtype=jnp.float32).reshape(2, 3) * step},
          'opt': (jnp.ones(3) * step, jnp.zeros((), jnp.int32) + step)}


def test_round_trip_and_retention(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, keep_best=1, async_save=True)
  mious = {10: 0.5, 20: 0.9, 30: 0.6, 40: None, 50: 0.7}
  for step, miou in mious.items():
    ckpt.save(step, _state(step), metrics=None if miou is None else {'mIoU': miou, 'loss': 1.0},
              meta={'note': f'at {step}'})
  ckpt.wait()
  # Latest 2 (40, 50) plus the best evaluated one (20).
  assert ckpt.all_steps() == [20, 40, 50]
  assert ckpt.best_step() == 20
  assert ckpt.resolve('latest') == 50 and ckpt.resolve('best') == 20 and ckpt.resolve('40') == 40
  with pytest.raises(FileNotFoundError, match='kept steps'):
    ckpt.resolve('30')
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))
  restored, meta = ckpt.restore(20, abstract)
  jax.tree.map(np.testing.assert_array_equal, restored, _state(20))
  assert meta['step'] == 20 and meta['note'] == 'at 20' and meta['metrics']['mIoU'] == 0.9
  ckpt.close()
  # A new manager on the same directory sees the same checkpoints (resume).
  again = checkpoint.Checkpointer(str(tmp_path), keep=2, keep_best=1)
  assert again.latest_step() == 50
  again.close()


def test_empty_directory_errors(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'none'), async_save=False)
  assert ckpt.latest_step() is None
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    ckpt.resolve('latest')
  ckpt.save(5, _state(5))
  ckpt.wait()
  with pytest.raises(FileNotFoundError, match='no evaluated checkpoint'):
    ckpt.resolve('best')
  ckpt.close()
