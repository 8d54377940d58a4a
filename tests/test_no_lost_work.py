"""No training is lost: evaluation failures after a save, the val split checked before
step 1, failed checkpoint saves surfaced at once, orphan temporary checkpoints removed,
damaged data-iterator positions rebuilt from the step (issue 15, items 2, 5 and 7)."""

import errno
import glob
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from segjax import checkpoint as ckpt_lib
from segjax import evaluate
from segjax import preflight
from segjax import train
from segjax.data import pipeline
from segjax.data import sources
from tests import kill_resume
from tests.test_resilience import _same_bits
from tests.test_train import _final_state
from tests.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted 4-step run of tiny_config (synthetic data): the bits
  every interrupted run below must reach."""
  config = tiny_config(total_steps=4)
  workdir = str(tmp_path_factory.mktemp('reference'))
  train.train_and_evaluate(config, workdir)
  return _final_state(config, workdir)


def _png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def _folder_dataset(root, n_train=8, n_val=2, size=32):
  rng = np.random.default_rng(0)
  for split, n in (('train', n_train), ('val', n_val)):
    for i in range(n):
      _png(root / split / f'{i}.png', rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
      _png(root / f'{split}annot' / f'{i}.png', rng.integers(0, 4, (size, size), dtype=np.uint8))
  return root


def _folder_config(root, **overrides):
  return tiny_config(**{'data.name': 'folder', 'data.root': str(root),
                        'eval.num_panel_images': 0, **overrides})


# --------------------------------------------------------------------------- item 2: evaluation


def test_eval_failure_after_training_keeps_the_steps_and_a_rerun_resumes(tmp_path, capsys):
  data = _folder_dataset(tmp_path / 'data')
  bad = data / 'val' / '1.png'
  good_bytes = bad.read_bytes()
  bad.write_bytes(good_bytes[:len(good_bytes) // 2])  # Truncated: the header still reads.
  config = _folder_config(data, total_steps=4, eval_every=2, checkpoint_every=2)
  workdir = str(tmp_path / 'run')
  with pytest.raises(sources.DataError) as e:
    train.train_and_evaluate(config, workdir)
  assert str(bad) in str(e.value)  # The error names the file ...
  notes = ' '.join(getattr(e.value, '__notes__', []))
  assert 'state of step 2 was saved before this evaluation' in notes  # ... and what is kept.
  # The two trained steps are in a checkpoint, marked as not yet evaluated.
  assert kill_resume.checkpoint_steps(workdir) == [2]
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False)
  meta = ckpt.read_meta(2)
  ckpt.close()
  assert meta['eval_pending'] is True and 'metrics' not in meta

  # Repaired, the same command resumes from step 2, evaluates step 2 first, and ends
  # with the bits of a run that never failed.
  bad.write_bytes(good_bytes)
  capsys.readouterr()
  train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert 'Resuming from step 2' in out and 'step 2: val mIoU' in out
  assert os.path.isfile(os.path.join(workdir, 'eval', 'val_00000002.json'))
  clean = str(tmp_path / 'clean')
  train.train_and_evaluate(config, clean)
  assert _same_bits(_final_state(config, clean), _final_state(config, workdir)) == []
  # The resumed evaluation ranks step 2 like the clean run's did (best checkpoint).
  for w in (workdir, clean):
    ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(w), async_save=False)
    assert ckpt.read_meta(2)['metrics']['mIoU'] == json.load(
        open(os.path.join(w, 'eval', 'val_00000002.json')))['mIoU']
    ckpt.close()


def test_best_checkpoint_is_ranked_by_metrics_recorded_after_the_save(tmp_path):
  # Steps saved before their evaluation, recorded afterwards: keep 1 latest + 1 best.
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=1, keep_best=1, async_save=True)
  state = lambda s: {'w': jnp.full((3,), float(s))}
  for step, miou in ((1, 0.3), (2, 0.8), (3, 0.5), (4, 0.1)):
    ckpt.save(step, state(step), meta={'eval_pending': True, 'control': {'at': step}})
    ckpt.record_eval(step, {'mIoU': miou, 'loss': 1.0}, control={'after': step})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 4]  # 2 is the best by mIoU (0.8), 4 the latest.
  assert ckpt.best_step() == 2 and ckpt.resolve('best') == 2
  meta = ckpt.read_meta(2)
  assert meta['metrics']['mIoU'] == 0.8 and meta['control'] == {'after': 2}
  assert meta['eval_pending'] is False
  ckpt.close()
  again = ckpt_lib.Checkpointer(str(tmp_path), keep=1, keep_best=1)
  assert again.best_step() == 2  # The records outlive the process.
  # A record left by a step whose save failed is stale once that step is saved anew.
  again.record_eval(6, {'mIoU': 0.9})
  again.save(6, state(6), meta={'eval_pending': True})
  again.wait()
  assert again.read_meta(6)['eval_pending'] is True and 'metrics' not in again.read_meta(6)
  # A step moved aside as damaged takes its record with it.
  again.quarantine(2)
  assert again.best_step() is None and '2' not in json.load(
      open(tmp_path / ckpt_lib.EVAL_RECORDS))
  again.close()


def test_empty_val_split_fails_before_step_1(tmp_path):
  data = _folder_dataset(tmp_path / 'data', n_val=0)
  (data / 'val').mkdir()
  (data / 'valannot').mkdir()
  workdir = str(tmp_path / 'run')
  with pytest.raises(sources.DataError, match=r"split 'val': no image/mask pairs found"):
    train.train_and_evaluate(_folder_config(data, total_steps=2), workdir)
  assert kill_resume.checkpoint_steps(workdir) == []
  assert not os.path.exists(os.path.join(workdir, 'metrics.jsonl'))  # Not one step trained.


def test_eval_batch_not_divisible_by_devices_fails_before_step_1(tmp_path):
  script = textwrap.dedent(f"""
    import sys; sys.path.insert(0, {str(ROOT)!r})
    import jax
    from tests.test_train import tiny_config
    from segjax import preflight, sharding, train
    assert jax.device_count() == 2
    c = tiny_config(**{{'eval.batch_size': 3}})
    try:
      preflight.check_eval_data(c, sharding.make_mesh(), train.build_model(c))
    except ValueError as e:
      print('ERROR', e)
  """)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       env=env, timeout=300)
  assert 'ERROR eval.batch_size=3 must be divisible by the number of devices (2)' in out.stdout, (
      out.stdout + out.stderr[-3000:])


def _header_only_png(path, width, height):
  """A PNG whose header says width x height, with one row of pixels: Pillow reads
  the size without decoding, as the check does (decoding would fail)."""
  import struct
  import zlib
  ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  chunk = lambda kind, data: (struct.pack('>I', len(data)) + kind + data
                              + struct.pack('>I', zlib.crc32(kind + data)))
  path.parent.mkdir(parents=True, exist_ok=True)
  # The first row of pixels only: Pillow reads the header up to the image data.
  path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr)
                   + chunk(b'IDAT', zlib.compress(b'\0' * (1 + 3 * width))))
  return path


def test_huge_val_image_is_named_with_remedies_before_training(tmp_path, monkeypatch):
  data = _folder_dataset(tmp_path / 'data', n_val=1)
  big = _header_only_png(data / 'val' / 'big.png', 8000, 8000)
  _header_only_png(data / 'valannot' / 'big.png', 8000, 8000)
  config = _folder_config(data, total_steps=2)
  model = train.build_model(config)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  info = preflight.check_eval_data(config, mesh, model, memory_bytes=2**50)
  assert info['largest'] == str(big) and info['eval_hw'] == (8000, 8000)
  # At least the float32 logits and log-probabilities of 8 images of 8000x8000x4
  # classes (eval.batch_size 8 on one device).
  assert info['estimate_bytes'] >= 2 * 8 * 8000 * 8000 * 4 * 4
  with pytest.raises(preflight.EvalDataError) as e:
    preflight.check_eval_data(config, mesh, model, memory_bytes=info['estimate_bytes'] - 1)
  msg = str(e.value)
  assert str(big) in msg and '8000x8000' in msg
  assert '--config.data.resize=H,W' in msg and '--config.eval.mode=slide' in msg
  # Between a quarter and all of the memory: a warning only.
  warned = preflight.check_eval_data(config, mesh, model,
                                     memory_bytes=2 * info['estimate_bytes'])
  assert str(big) in warned['warning'] and 'may run out of memory' in warned['warning']
  # With data.resize the images are evaluated small: nothing to say.
  small = _folder_config(data, total_steps=2, **{'data.resize': (64, 64)})
  assert 'warning' not in preflight.check_eval_data(small, mesh, model,
                                                    memory_bytes=2**30)
  # In a run, the check comes before step 1: nothing is trained, nothing written.
  monkeypatch.setattr(preflight, 'device_memory_bytes', lambda: 2**30)
  workdir = str(tmp_path / 'run')
  with pytest.raises(preflight.EvalDataError, match='big.png'):
    train.train_and_evaluate(config, workdir)
  assert kill_resume.checkpoint_steps(workdir) == []


def test_memory_estimate_is_a_lower_bound_of_xlas_own_buffer_assignment():
  # XLA's buffer assignment of the compiled forward pass (an independent
  # computation) needs at least what the estimate says, at two sizes.
  config = tiny_config()
  model = train.build_model(config)
  variables = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(0)},
      jnp.zeros((1, 32, 32, 3)), train=False))
  for hw in ((64, 64), (96, 128)):
    x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
    fwd = jax.jit(lambda v, x: jax.nn.log_softmax(model.apply(v, x, train=False), -1))
    stats = fwd.lower(variables, x).compile().memory_analysis()
    xla = (stats.argument_size_in_bytes + stats.output_size_in_bytes
           + stats.temp_size_in_bytes)
    estimate = preflight.eval_memory_bytes(config, model, *hw, per_device_batch=2)
    # Lower bound, but not a vacuous one.
    assert xla / 4 <= estimate - 2 * 2 * hw[0] * hw[1] * 4 * 4 <= xla, (hw, estimate, xla)


def test_eval_out_of_memory_is_one_error_naming_size_and_remedies():
  config = tiny_config()
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))

  def exhausted(variables, batch, rng):
    # What XLA raises when an allocation fails (injected: a real one would need
    # a device to be filled).
    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '
                                     'allocate 8589934592 bytes.')

  with pytest.raises(evaluate.EvalOutOfMemoryError) as e:
    evaluate.evaluate_split(exhausted, {}, config, 'val', mesh)
  msg = str(e.value)
  assert "out of memory evaluating 'val': a batch of 8 image(s) of 32x32" in msg
  assert '--config.data.resize=H,W' in msg and '--config.eval.mode=slide' in msg
  assert 'RESOURCE_EXHAUSTED' in msg and e.value.__cause__ is None  # One error, not a chain.

  def other(variables, batch, rng):
    raise jax.errors.JaxRuntimeError('INTERNAL: something else')

  with pytest.raises(jax.errors.JaxRuntimeError, match='INTERNAL'):  # Left alone.
    evaluate.evaluate_split(other, {}, config, 'val', mesh)


# --------------------------------------------------------------------------- item 5: saves


def test_failed_async_save_stops_at_the_next_step_and_its_orphan_is_removed(
    tmp_path, monkeypatch, capsys, reference):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as json_handler
  original = json_handler.JsonCheckpointHandler._save_fn

  async def disk_full_at_step_2(self, item, directory):
    if isinstance(item, dict) and item.get('step') == 2:
      raise OSError(errno.ENOSPC, 'No space left on device', str(directory))
    return await original(self, item, directory)

  monkeypatch.setattr(json_handler.JsonCheckpointHandler, '_save_fn', disk_full_at_step_2)
  config = tiny_config(total_steps=4, checkpoint_every=1, **{'checkpoint.async_save': True})
  workdir = str(tmp_path / 'run')
  with pytest.raises(ckpt_lib.CheckpointSaveError) as e:
    train.train_and_evaluate(config, workdir)
  msg = str(e.value)
  step_dir = os.path.join(workdir, 'checkpoints', '2')
  assert f'saving checkpoint step 2 to {step_dir} failed (OSError: [Errno 28] No space' in msg
  assert 'the last good checkpoint is step 1' in msg
  # Stopped at the next step (3, or 4 if the background write was still running
  # then): nothing saved after step 1, step 4 not trained.
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert max(r['step'] for r in rows if 'train/loss' in r) <= 3
  assert kill_resume.checkpoint_steps(workdir) == [1]
  orphans = glob.glob(os.path.join(workdir, 'checkpoints', '*orbax-checkpoint-tmp*'))
  assert len(orphans) == 1 and '2.orbax-checkpoint-tmp' in orphans[0]

  # Another run's temporary folder is not ours to remove.
  foreign = tmp_path / 'other' / 'checkpoints' / '7.orbax-checkpoint-tmp'
  foreign.mkdir(parents=True)
  monkeypatch.setattr(json_handler.JsonCheckpointHandler, '_save_fn', original)
  capsys.readouterr()
  train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert f'Removed an unfinished checkpoint save: {orphans[0]}' in out
  assert 'Resuming from step 1' in out
  assert not glob.glob(os.path.join(workdir, 'checkpoints', '*tmp*')) and foreign.is_dir()
  assert _same_bits(reference, _final_state(config, workdir)) == []


def test_failed_synchronous_save_is_one_error(tmp_path, monkeypatch):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as json_handler
  original = json_handler.JsonCheckpointHandler._save_fn

  async def disk_full(self, item, directory):
    if isinstance(item, dict) and item.get('step') == 2:
      raise OSError(errno.ENOSPC, 'No space left on device', str(directory))
    return await original(self, item, directory)

  monkeypatch.setattr(json_handler.JsonCheckpointHandler, '_save_fn', disk_full)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / 'ck'), async_save=False)
  ckpt.save(1, {'w': jnp.ones(2)})
  with pytest.raises(ckpt_lib.CheckpointSaveError, match=r'step 2 .* No space left'):
    ckpt.save(2, {'w': jnp.ones(2)})
  ckpt.close()


# --------------------------------------------------------------------------- item 7: iterator


@pytest.mark.parametrize('workers', [0, 2])
def test_expected_iterator_state_is_grains_own(workers):
  # grain's reported state after k batches, and the batch a restored iterator then
  # yields, against the batch of that step computed directly.
  config = tiny_config(**{'data.num_workers': workers})
  it = pipeline.train_iterator(config, 0)
  for k in range(1, 4):
    next(it)
    assert pipeline.check_iterator_state(config, k, it.get_state()) is None
  assert pipeline.check_iterator_state(config, 2, it.get_state()) is not None
  fresh = pipeline.train_iterator(config, 0)
  fresh.set_state(it.get_state())
  assert pipeline.check_iterator_state(config, 3, fresh.get_state()) is None  # As restored.
  direct = pipeline.train_dataset(config)[3]
  batch = next(fresh)
  np.testing.assert_array_equal(batch['image'], direct['image'])
  np.testing.assert_array_equal(batch['label'], direct['label'])


def test_damaged_iterator_position_is_rebuilt_from_the_step(tmp_path, capsys, reference):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(total_steps=2), workdir)
  state_file = os.path.join(workdir, 'checkpoints', '2', 'data', 'process_0-of-1.json')
  assert json.load(open(state_file)) == {'next_index': 16}
  with open(state_file, 'w') as f:
    json.dump({'next_index': 3}, f)  # Damaged, but parseable.
  capsys.readouterr()
  config = tiny_config(total_steps=4)
  train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert ('WARNING: the data iterator state of checkpoint 2 is damaged (next_index is 3, '
          'step 2 needs 16)') in out
  assert _same_bits(reference, _final_state(config, workdir)) == []
