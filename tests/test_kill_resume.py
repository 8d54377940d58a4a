"""SIGKILL and SIGTERM at random points of a training subprocess, resumed each time:
the final state equals an uninterrupted run's bit for bit (tests/kill_resume.py)."""

import glob
import json
import os
import signal

from tests import kill_resume

KILLS = 5


def test_sigkill_and_sigterm_at_random_points_then_resume_is_bit_identical(tmp_path):
  """5 SIGKILLs and a SIGTERM (the 3rd interruption) at random points, each
  followed by the same command again; the final state equals an uninterrupted
  run's in every bit."""
  total = kill_resume.total_steps(KILLS + 1)
  reference = str(tmp_path / 'reference')
  kill_resume.run_to_end(reference, f'steps={total}')
  workdir = str(tmp_path / 'killed')
  info = kill_resume.kill_and_resume(workdir, KILLS, seed=1234, sigterm=3, log=lambda m: None)
  events = info['events']
  assert [e['signal'] for e in events] == ['SIGKILL'] * 2 + ['SIGTERM'] + ['SIGKILL'] * 3
  for e in events:
    if e['signal'] == 'SIGKILL':
      assert e['returncode'] == -signal.SIGKILL
    else:  # Saved the step it was at, completely, and exited 0.
      assert e['returncode'] == 0, e['output'][-3000:]
      assert e['preempted_step'] == e['latest_checkpoint_after'] >= e['target']
  # Each run resumed from the newest checkpoint the one before it left.
  resumed = [e['resumed_from'] for e in events[1:]] + [info['final_resumed_from']]
  assert resumed == [e['latest_checkpoint_after'] for e in events]
  assert 0 < resumed[-1] < total
  assert not glob.glob(os.path.join(workdir, 'checkpoints', str(total) + '*tmp*'))
  assert kill_resume.compare(kill_resume.load_final(reference),
                             kill_resume.load_final(workdir)) == []
  # The data position is part of each checkpoint (grain's iterator state).
  state_file = os.path.join(workdir, 'checkpoints', str(total), 'data', 'process_0-of-1.json')
  assert json.loads(open(state_file).read()) == {'next_index': total * 8}
  # reduce-on-plateau halved the learning rate at evaluations 2, 3, 4 (steps 16, 24,
  # 32): the scale went through the restarts with the controller's state.
  # (The last step was saved before its evaluation; read_meta adds what that recorded.)
  from segjax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False)
  meta = ckpt.read_meta(total)
  ckpt.close()
  assert [r[0] for r in meta['control']['reduce_on_plateau']['reductions']] == [16, 24, 32]
