"""Checkpointer: exact round trip, keep-N latest plus best-N by mIoU, step resolution,
damaged-step fallback, mismatch errors, fingerprints."""

import os
import shutil

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


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _files(step_dir, sub):
  return sorted(str(p) for p in (step_dir / sub).rglob('*') if p.is_file())


def _truncate(step_dir):
  for f in _files(step_dir, 'state'):
    if '/d/' in f:
      with open(f, 'r+b') as fh:
        fh.truncate(os.path.getsize(f) // 2)


def _flip_byte(step_dir):
  for f in _files(step_dir, 'state'):
    if '/d/' in f:
      data = bytearray(open(f, 'rb').read())
      data[len(data) // 2] ^= 0x40
      open(f, 'wb').write(bytes(data))


def _delete_array_files(step_dir):
  for f in _files(step_dir, 'state'):
    if '/d/' in f:
      os.remove(f)


def _garbage_meta(step_dir):
  for f in _files(step_dir, 'meta'):
    open(f, 'w').write('{"step": 2, "fingerpr')


def _swap_state(step_dir):
  # Readable, self-consistent arrays -- but step 1's, not the ones saved at
  # step 2: only the fingerprint can tell.
  shutil.rmtree(step_dir / 'state')
  shutil.copytree(step_dir.parent / '1' / 'state', step_dir / 'state')


@pytest.mark.parametrize('damage', [_truncate, _flip_byte, _delete_array_files, _garbage_meta,
                                    _swap_state])
def test_damaged_latest_step_is_moved_aside_and_the_previous_restored(tmp_path, damage, capsys):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ck'), keep=3, keep_best=0, async_save=False)
  ckpt.save(1, _state(1))
  ckpt.save(2, _state(2))
  ckpt.close()
  damage(tmp_path / 'ck' / '2')
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ck'), keep=3, keep_best=0, async_save=False)
  step, state, meta, _ = ckpt.restore_latest(_abstract(_state(0)))
  assert step == 1 and meta['step'] == 1
  jax.tree.map(np.testing.assert_array_equal, state, _state(1))
  out = capsys.readouterr().out
  assert f'WARNING: checkpoint step 2 in {tmp_path / "ck"}' in out
  if damage is _swap_state:
    assert 'arrays read back differ from what was saved' in out
  # Kept for inspection, and out of the way of the next save of step 2.
  moved = list((tmp_path / 'ck.corrupt').iterdir())
  assert len(moved) == 1 and moved[0].name.startswith('2-')
  assert ckpt.all_steps() == [1]
  ckpt.save(2, _state(2))
  ckpt.close()


def test_all_steps_damaged_gives_none(tmp_path, capsys):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, keep_best=0, async_save=False)
  ckpt.save(1, _state(1))
  ckpt.close()
  _truncate(tmp_path / '1')
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, keep_best=0, async_save=False)
  assert ckpt.restore_latest(_abstract(_state(0))) is None
  assert 'checkpoint step 1' in capsys.readouterr().out
  ckpt.close()


def test_mismatch_names_arrays_and_config_keys(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, keep_best=0, async_save=False)
  ckpt.save(1, _state(1), meta={'config': {'data': {'num_classes': 4}, 'model': {'name': 'a'}}})
  other = _state(1)
  other['params']['w'] = jnp.zeros((2, 5))
  other['params']['extra'] = jnp.zeros(3)
  del other['opt']
  with pytest.raises(checkpoint.CheckpointMismatchError) as e:
    ckpt.restore(1, _abstract(other),
                 config={'data': {'num_classes': 5}, 'model': {'name': 'a'}})
  msg = str(e.value)
  assert 'data.num_classes: checkpoint 4, this config 5' in msg and 'model.name' not in msg
  assert 'params/w (2, 3) float32 -> (2, 5) float32' in msg
  assert '1 arrays of this config are not in the checkpoint: params/extra' in msg
  assert '2 arrays of the checkpoint are not in this config: opt/0, opt/1' in msg
  # The shapes stored in meta agree with orbax's own metadata of the arrays.
  assert ckpt.saved_shapes(1) == checkpoint.leaf_shapes(_state(1))
  ckpt.close()


def test_fingerprint_is_exact_and_position_dependent():
  a = {'x': jnp.arange(8, dtype=jnp.float32), 'y': jnp.array([1, 2], jnp.int32)}
  fa = checkpoint.fingerprint(a)
  assert fa == checkpoint.fingerprint(jax.tree.map(jnp.array, a)) and len(fa) == 2
  # An independent reference: the same formula in Python integers.
  bits = np.arange(8, dtype=np.float32).view(np.uint32).astype(np.int64)
  ref = sum(int(b) * (2 * i + 1) * 2654435761 for i, b in enumerate(bits)) % 2**32
  assert fa[0] == ref
  swapped = dict(a, x=a['x'][::-1])  # Same values, other order.
  assert checkpoint.fingerprint(swapped)[0] != fa[0]
  one_bit = dict(a, x=a['x'].at[3].set(np.nextafter(np.float32(3), np.float32(4))))
  assert checkpoint.fingerprint(one_bit)[0] != fa[0]
