"""Reliability in the training loop: same bits from the same seed, corrupt-checkpoint
fallback, incompatible-checkpoint errors, non-finite policies, early stopping and
reduce-on-plateau. (SIGKILL / SIGTERM and resume: test_kill_resume.py.)"""

import glob
import json
import os

import jax
import numpy as np
import pytest

from segjax import checkpoint as ckpt_lib
from segjax import config as config_lib
from segjax.tools import evaluate as evaluate_tool
from segjax import train
from tests import kill_resume
from tests.test_train import _final_state
from tests.test_train import tiny_config

def _leaves(state) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


def _same_bits(a, b) -> list[str]:
  return kill_resume.compare(_leaves(a), _leaves(b))


# --------------------------------------------------------------------------- determinism, damage


def test_same_seed_same_bits_and_a_corrupt_latest_checkpoint_falls_back(tmp_path, capsys):
  # Two runs of one config and seed: bit-identical (across processes, with EMA
  # and restarts: test_kill_resume.py).
  config = tiny_config(total_steps=4)
  train.train_and_evaluate(config, str(tmp_path / 'a'))
  workdir = str(tmp_path / 'b')
  train.train_and_evaluate(config, workdir)
  a = _final_state(config, str(tmp_path / 'a'))
  clean = _final_state(config, workdir)
  assert int(a.step) == 4
  assert _same_bits(a, clean) == []
  # The comparison can fail: the trained parameters are not the initial ones.
  model = train.build_model(config)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  tx, _ = train.optim.make_optimizer(config)
  assert any(k.startswith('.params') for k in _same_bits(a, train.init_state(config, model, tx,
                                                                            mesh)))

  # Truncate every data file of the newest checkpoint (a disk filled mid-write).
  files = [f for f in glob.glob(os.path.join(workdir, 'checkpoints', '4', 'state', '**'),
                                recursive=True) if os.path.isfile(f) and '/d/' in f]
  assert files
  for f in files:
    with open(f, 'r+b') as fh:
      fh.truncate(os.path.getsize(f) // 2)
  capsys.readouterr()
  train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert 'WARNING: checkpoint step 4 in' in out and 'falling back' in out
  assert 'Resuming from step 2' in out
  moved = glob.glob(os.path.join(workdir, 'checkpoints.corrupt', '4-*'))
  assert len(moved) == 1 and os.path.isdir(os.path.join(moved[0], 'state'))  # Kept, not deleted.
  # Steps 3 and 4 trained again from step 2: the same bits as before the damage.
  assert _same_bits(clean, _final_state(config, workdir)) == []


def test_incompatible_checkpoint_is_named_not_a_shape_traceback(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config(total_steps=2)
  train.train_and_evaluate(config, workdir)
  before = open(os.path.join(workdir, 'config.json')).read()

  with pytest.raises(ckpt_lib.CheckpointMismatchError) as e:
    train.train_and_evaluate(tiny_config(total_steps=4, **{'data.num_classes': 5}), workdir)
  msg = str(e.value)
  assert 'checkpoint step 2' in msg and 'data.num_classes: checkpoint 4, this config 5' in msg
  assert '(1, 1, 16, 4) float32 -> (1, 1, 16, 5) float32' in msg and 'new --workdir' in msg

  unet = tiny_config(total_steps=4, **{'model.name': 'unet', 'model.output_stride': 32})
  unet.model.kwargs = {'decoder_filters': (16, 16, 16, 16)}
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="model.name: checkpoint "
                     "'deeplabv3plus', this config 'unet'"):
    train.train_and_evaluate(unet, workdir)

  # A checkpoint without EMA weights (ema.decay=0, or written before segjax had EMA).
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match='has no EMA weights'):
    train.train_and_evaluate(tiny_config(total_steps=4, **{'ema.decay': 0.99}), workdir)
  # --mode=eval uses the run's own config; a key that would not fit is refused by name.
  with pytest.raises(config_lib.ConfigError, match="'data.num_classes' cannot be overridden"):
    evaluate_tool.run(workdir, {'data.num_classes': 5})
  # The refused configs did not overwrite the run's own, nor any checkpoint.
  assert open(os.path.join(workdir, 'config.json')).read() == before
  assert kill_resume.checkpoint_steps(workdir) == [2]


# --------------------------------------------------------------------------- non-finite


def test_skip_nonfinite_skips_and_counts(tmp_path, capsys):
  config = tiny_config(total_steps=4, skip_nonfinite=True, **{'optimizer.lr': 1e30})
  result = train.train_and_evaluate(config, str(tmp_path / 'skip'))
  out = capsys.readouterr().out
  state = _final_state(config, str(tmp_path / 'skip'))
  skipped = int(state.num_nonfinite)
  assert 1 <= skipped <= 3 and int(state.step) == 4
  first = int(state.first_nonfinite_step)
  assert f'skip_nonfinite: steps [{first + 1}' in out
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  assert result['num_examples'] == 8  # Evaluated at the end as usual.


# --------------------------------------------------------------------------- control


def test_early_stopping_stops_saves_and_stays_stopped(tmp_path, capsys):
  # min_delta 1.0: no mIoU can improve by more than 1, so after the first
  # evaluation every one is a miss; patience 2 stops at the third (step 3).
  config = tiny_config(total_steps=8, eval_every=1, checkpoint_every=8, **{
      'early_stopping.metric': 'mIoU', 'early_stopping.patience': 2,
      'early_stopping.min_delta': 1.0})
  workdir = str(tmp_path / 'es')
  result = train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert 'early_stopping at step 3: val mIoU has not improved by more than 1 for 2 ' in out
  assert 'val @ step 3,' in out
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False)
  assert ckpt.latest_step() == 3
  control = ckpt.read_meta(3)['control']['early_stopping']
  ckpt.close()
  assert control['stopped_step'] == 3 and control['best_step'] == 1 and control['wait'] == 2
  again = train.train_and_evaluate(config, workdir)
  assert 'nothing left to train' in capsys.readouterr().out
  assert again['mIoU'] == pytest.approx(result['mIoU'])
  # Resumed with a patience above its 2 misses, it trains on; its misses keep
  # counting (min_delta 1), so patience 4 stops it two evaluations later.
  more = tiny_config(total_steps=8, eval_every=1, checkpoint_every=8, **{
      'early_stopping.metric': 'mIoU', 'early_stopping.patience': 4,
      'early_stopping.min_delta': 1.0})
  train.train_and_evaluate(more, workdir)
  out = capsys.readouterr().out
  assert 'this run stopped at step 3 after 2 evaluations' in out
  assert 'early_stopping at step 5: val mIoU has not improved by more than 1 for 4 ' in out
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False)
  assert ckpt.latest_step() == 5
  assert ckpt.read_meta(5)['control']['early_stopping']['stopped_step'] == 5
  ckpt.close()


def test_a_sigterm_session_records_its_training_time(tmp_path, monkeypatch):
  # SIGTERM seen after step 1 (as the flag reports it): the session saves,
  # writes its time/train_seconds row and raises Preempted; the resumed session
  # writes its own, and the report's training time is the sum of the two rows.
  from segjax.tools import report
  config = tiny_config(total_steps=3, eval_every=3, checkpoint_every=3)
  workdir = str(tmp_path / 'term')
  with monkeypatch.context() as m:
    m.setattr(train._SigtermFlag, 'reached', lambda self, ckpt, step: step == 1)
    with pytest.raises(train.Preempted, match='saved a checkpoint of step 1'):
      train.train_and_evaluate(config, workdir)
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  times = [(r['step'], r['time/train_seconds']) for r in rows if 'time/train_seconds' in r]
  assert [step for step, _ in times] == [1, 3] and all(t > 0 for _, t in times)
  text = report.build_report(workdir, str(tmp_path / 'report'))
  assert f'{sum(t for _, t in times):.1f} s (all sessions)' in text


def test_reduce_on_plateau_scales_the_lr(tmp_path):
  overrides = {'reduce_on_plateau.metric': 'loss', 'reduce_on_plateau.patience': 1,
               'reduce_on_plateau.min_delta': 100.0, 'reduce_on_plateau.factor': 0.5,
               'reduce_on_plateau.cooldown': 2}
  full = tiny_config(total_steps=4, eval_every=1, checkpoint_every=1, **overrides)
  train.train_and_evaluate(full, str(tmp_path / 'full'))
  state = _final_state(full, str(tmp_path / 'full'))
  # Evaluations at steps 1..4 (Keras' rules): 1 improves on +inf; 2 is a miss
  # -> 0.5, cooldown 2; 3 in cooldown (-> 1); 4 ends the cooldown (-> 0) and, out
  # of it, is a miss -> 0.25. Step 4 was saved before its evaluation (0.5); the
  # controller state recorded after it gives a resumed run 0.25.
  assert float(state.lr_scale) == 0.5
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(tmp_path / 'full')), async_save=False)
  control = ckpt.read_meta(4)['control']
  ckpt.close()
  plateau = control['reduce_on_plateau']
  assert plateau['reductions'] == [[2, 0.5], [4, 0.25]] and plateau['cooldown_counter'] == 2
  resumed = train.control_lib.Controller(full)
  resumed.load_state_dict(control)
  assert resumed.lr_scale == 0.25
  # Logged learning rate = constant schedule x scale.
  lines = [json.loads(line) for line in open(tmp_path / 'full' / 'metrics.jsonl')
           if '"train/lr"' in line]
  by_step = {d['step']: d['train/lr'] for d in lines}
  lr = float(full.optimizer.lr)
  assert by_step[1] == by_step[2] == pytest.approx(lr)
  assert by_step[3] == by_step[4] == pytest.approx(lr * 0.5)  # Step 4 ran before its evaluation.
  # Resuming with the scale and the controller state: the kill test's config runs
  # reduce-on-plateau through every restart (test_kill_resume.py).

