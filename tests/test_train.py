"""Train step and loop: sharding invariance, resume, non-finite loss handling, eval mode."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import checkpoint as ckpt_lib
from segjax.tools import evaluate as evaluate_tool
from segjax import train

ROOT = Path(__file__).resolve().parents[1]


def shrink_model(c):
  """The config's model family at test size (width 0.35, 16-channel heads)."""
  c.model.width_multiplier = 0.35
  if c.model.name == 'unet':
    c.model.kwargs.decoder_filters = (16, 16, 16, 16)
  else:
    c.model.kwargs.aspp_channels = 16
    c.model.kwargs.decoder_channels = 16
    c.model.kwargs.low_level_channels = 8
  return c


def tiny_config(model='deeplabv3plus', **overrides):
  """A few-second DeepLabV3+ run on 32x32 synthetic shapes.

  model='unet': U-Net with its MobileNetV2 encoder frozen (inference-mode
  BatchNorm there) instead, a network whose updates are insensitive to float
  rounding, for tests that compare runs across device layouts: at 32x32 the
  tiny DeepLabV3+ starts with gradient norms of ~100 (BatchNorm over nearly
  constant pooled features), and 1 vs 8 devices differ by ~50% in the
  parameter update after 3 SGD steps, against 1e-7 for this U-Net.
  """
  c = config_lib.base_config()
  if model == 'unet':
    c.model.name = 'unet'
    c.model.output_stride = 32
    c.model.freeze_encoder = True
    c.model.allow_random_frozen_encoder = True  # No pretrained weights in tests.
  elif model != 'deeplabv3plus':
    raise ValueError(f'tiny_config: unknown model {model!r}')
  c = shrink_model(c)
  c.data.synthetic_size = (32, 32)
  c.data.crop_size = (32, 32)
  c.data.synthetic_train_examples = 64
  c.data.synthetic_val_examples = 8
  c.batch_size = 8
  c.eval.batch_size = 8
  c.eval.num_panel_images = 2
  c.total_steps = 4
  c.log_every = 1
  c.eval_every = 2
  c.checkpoint_every = 2
  c.schedule.name = 'constant'
  c.checkpoint.async_save = False
  for k, v in overrides.items():
    section, _, leaf = k.rpartition('.')
    (c[section] if section else c)[leaf] = v
  return config_lib.validate(c)


def test_one_step_on_8_devices_equals_1_device():
  """Same global batch on a 1-device and an 8-device mesh: same loss and update.

  One SGD step of the tiny U-Net (frozen MobileNetV2 encoder), whose update is
  insensitive to float rounding: 1 vs 8 devices agree to ~1e-7 there, so the
  tolerances are tight (the tiny DeepLabV3+ amplifies rounding through
  BatchNorm over nearly constant pooled features: 8 vs 1 differ by 1e-4 after
  one step; see tiny_config). The compiled programs are U-Net's, the cheapest
  of the tiny configs. Real sharding bugs are O(1): per-device BatchNorm
  statistics change the loss itself, and gradients summed instead of averaged
  over devices make the update 8x larger. That the step itself is right is
  tests/test_train_oracle.py's job.
  """
  script = textwrap.dedent(f"""
    import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
    import jax, numpy as np
    from test_train import tiny_config
    from segjax import optim, sharding, train
    from segjax.data import pipeline
    assert jax.device_count() == 8, jax.devices()
    c = tiny_config(model='unet', **{{'optimizer.name': 'sgd', 'optimizer.lr': 0.05}})
    model = train.build_model(c)
    tx, schedule = optim.make_optimizer(c)
    batch = pipeline.train_dataset(c)[0]
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    out = {{}}
    for n in (1, 8):
      mesh = sharding.make_mesh(jax.devices()[:n])
      state = train.init_state(c, model, tx, mesh)
      before = flat(jax.device_get(state.params))
      step = train.jit_train_step(train.make_train_step(c, model, tx, schedule), mesh)
      state, metrics = step(state, sharding.to_global(batch, mesh), jax.random.key(0))
      assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == n
      out[n] = (float(metrics['loss']), flat(jax.device_get(state.params)) - before,
                flat(jax.device_get(state.batch_stats)))
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(a))
    np.testing.assert_allclose(out[1][0], out[8][0], rtol=1e-5)
    update, stats = rel(out[1][1], out[8][1]), rel(out[1][2], out[8][2])
    assert stats < 1e-5, stats
    assert update < 1e-5, update
    print('OK', out[1][0], out[8][0], update, stats)
  """)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       env=env, timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
  assert 'OK' in out.stdout


def _final_state(config, workdir):
  model = train.build_model(config)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False)
  step = ckpt.latest_step()
  state, _ = ckpt.restore(step, train.abstract_state(config, model, mesh))
  ckpt.close()
  return jax.device_get(state)


def test_stop_and_resume_equals_uninterrupted(tmp_path, capsys):
  full = tiny_config(total_steps=4)
  train.train_and_evaluate(full, str(tmp_path / 'full'))
  first = tiny_config(total_steps=2)
  train.train_and_evaluate(first, str(tmp_path / 'resumed'))
  half = _final_state(first, str(tmp_path / 'resumed'))
  assert int(half.step) == 2
  capsys.readouterr()
  result = train.train_and_evaluate(full, str(tmp_path / 'resumed'))  # Raised total_steps.
  assert 'Resuming from step 2' in capsys.readouterr().out
  a = _final_state(full, str(tmp_path / 'full'))
  b = _final_state(full, str(tmp_path / 'resumed'))
  assert int(a.step) == int(b.step) == 4
  # Parameters, BN statistics and optimizer state (Adam moments and count) carry over.
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # Bit for bit.
  assert not np.allclose(jax.tree.leaves(half.params)[0], jax.tree.leaves(b.params)[0])
  assert result['num_examples'] == 8
  written = json.load(open(tmp_path / 'resumed' / 'eval' / 'val_00000004.json'))
  assert written['mIoU'] == result['mIoU'] and written['confusion_matrix'] == result[
      'confusion_matrix']
  assert sum(map(sum, written['confusion_matrix'])) == 8 * 32 * 32
  # Same command once more: nothing left to train, it evaluates and reports.
  again = train.train_and_evaluate(full, str(tmp_path / 'resumed'))
  assert again['mIoU'] == pytest.approx(result['mIoU'])


def test_logs_panels_and_eval_mode(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  c = tiny_config(total_steps=4)
  train.train_and_evaluate(c, workdir)
  out = capsys.readouterr().out
  # No class_names in the config: the table uses the default names.
  assert all(f'class_{i}' in out for i in range(4)) and 'mIoU' in out
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2, 3, 4]
  assert [r['step'] for r in rows if 'val/mIoU' in r] == [2, 4]
  assert any(f.startswith('events') for f in os.listdir(os.path.join(workdir, 'tensorboard')))
  panels = sorted(os.listdir(os.path.join(workdir, 'images')))
  assert panels == ['val_predictions_00000002.png', 'val_predictions_00000004.png']
  from PIL import Image
  with Image.open(os.path.join(workdir, 'images', panels[0])) as im:
    assert im.format == 'PNG' and im.size[0] > im.size[1]  # 3 columns, 2 rows + legend.
  # Eval mode on the best checkpoint and on another split ('train').
  res = evaluate_tool.run(workdir, {'eval.checkpoint': 'best'})
  assert res['step'] in (2, 4) and res['split'] == 'val'
  res = evaluate_tool.run(workdir, {'eval.checkpoint': 'latest', 'eval.split': 'train[:16]'})
  assert res['step'] == 4 and res['num_examples'] == 16
  out = capsys.readouterr().out
  assert 'train[:16] @ step 4' in out and 'fwIoU' in out


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / 'nan')
  good = tiny_config(total_steps=2)
  train.train_and_evaluate(good, workdir)
  bad = tiny_config(total_steps=6, **{'optimizer.lr': 1e30})
  with pytest.raises(train.NonFiniteLossError, match=r'step [3-6].*step 2\)') as e:
    train.train_and_evaluate(bad, workdir)
  assert 'update was not applied' in str(e.value)
  # The error names the examples of the bad step's batch.
  step = int(str(e.value).split('non-finite loss or gradient at step ')[1].split()[0])
  from segjax.data import pipeline  # pylint: disable=g-import-not-at-top
  names = pipeline.batch_example_names(bad, step - 1)
  assert 'its examples: ' + ', '.join(names) in str(e.value)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False)
  assert ckpt.latest_step() == 2
  ckpt.close()
