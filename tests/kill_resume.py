r"""Kill a training run with SIGKILL at random points, resume it, compare bits.

A config file (get_config below: a tiny DeepLabV3+ with EMA on 32x32
synthetic shapes, asynchronous checkpoints every 4 steps, an evaluation every
8 that lowers the learning rate through reduce-on-plateau) and a harness:

  python tests/kill_resume.py --kills=20 [--sigterm=1] [--workdir=DIR] [--seed=0]

trains once without interruption, then trains the same config in a second
workdir, killing it with SIGKILL `--kills` times: each time once its newest
checkpoint has passed a random step, after a further random 0-0.3 s (so kills
land mid-step, mid-save and mid-evaluation), and resumes by running the same
command again. With --sigterm=N, the Nth interruption is a SIGTERM instead,
which must save a checkpoint of the current step and exit with status 0. At
the end it compares every array of the two final checkpoints (parameters,
BatchNorm statistics, optimizer state, EMA, counters) bit for bit and prints
a summary. tests/test_resilience.py runs it with 5 kills and 1 SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


CHECKPOINT_EVERY = 4


def total_steps(interruptions: int) -> int:
  """Room for that many interruptions, each after at least one new checkpoint."""
  return CHECKPOINT_EVERY * interruptions + 8


def get_config(arg: str = ''):
  """The child's config; `arg` may set 'steps=N' (default 28)."""
  from segjax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.model.width_multiplier = 0.35
  c.model.kwargs.aspp_channels = 16
  c.model.kwargs.decoder_channels = 16
  c.model.kwargs.low_level_channels = 8
  c.data.synthetic_size = (32, 32)
  c.data.crop_size = (32, 32)
  c.data.synthetic_train_examples = 40  # Epochs of 5 steps: kills cross epoch ends.
  c.data.synthetic_val_examples = 8
  c.augment.scale_range = (0.75, 1.25)
  c.augment.brightness = 0.2
  c.batch_size = 8
  c.eval.batch_size = 8
  c.eval.num_panel_images = 0
  c.total_steps = 28
  c.log_every = 1
  # Evaluations every 8 steps drive reduce-on-plateau: 'loss' cannot improve
  # by 100, so after the first evaluation each one halves the learning rate,
  # and resumed runs must carry the scale and the controller's state.
  c.eval_every = 8
  c.reduce_on_plateau.metric = 'loss'
  c.reduce_on_plateau.min_delta = 100.0
  c.reduce_on_plateau.patience = 1
  c.reduce_on_plateau.factor = 0.5
  c.checkpoint_every = CHECKPOINT_EVERY
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True
  c.schedule.name = 'poly'
  c.schedule.warmup_steps = 3
  c.ema.decay = 0.9
  for item in filter(None, arg.split(',')):
    key, _, value = item.partition('=')
    if key == 'steps':
      c.total_steps = int(value)
    else:
      raise ValueError(f'unknown argument {item!r}')
  return c


def command(workdir: str, arg: str = '') -> list[str]:
  config = f'{Path(__file__).resolve()}' + (f':{arg}' if arg else '')
  return [sys.executable, str(ROOT / 'launch.py'), f'--config={config}', f'--workdir={workdir}']


def _env() -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # One CPU device in every run, whatever the caller set.
  # Every run compiles the same programs: share them through JAX's cache.
  env.setdefault('JAX_COMPILATION_CACHE_DIR',
                 os.path.join(tempfile.gettempdir(), 'segjax_test_jax_cache'))
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
  return env


def checkpoint_steps(workdir: str) -> list[int]:
  """Published checkpoint steps (orbax writes in temporary folders, then renames)."""
  d = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def run_to_end(workdir: str, arg: str = '', timeout: float = 600) -> subprocess.CompletedProcess:
  out = subprocess.run(command(workdir, arg), cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=timeout)
  if out.returncode != 0:
    raise RuntimeError(f'run in {workdir} failed (exit {out.returncode}):\n{out.stdout[-3000:]}'
                       f'\n{out.stderr[-5000:]}')
  return out


def start(workdir: str, arg: str = '') -> subprocess.Popen:
  return subprocess.Popen(command(workdir, arg), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, workdir: str, step: int,
                        timeout: float = 300) -> bool:
  """True once a checkpoint >= step is published; False if the run ended first."""
  t0 = time.monotonic()
  while time.monotonic() - t0 < timeout:
    steps = checkpoint_steps(workdir)
    if steps and steps[-1] >= step:
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.01)
  proc.kill()
  raise TimeoutError(f'no checkpoint >= {step} in {workdir} after {timeout} s')


def load_final(workdir: str) -> dict:
  """{path: numpy array} of the newest checkpoint's state item, read without a target."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step = checkpoint_steps(workdir)[-1]
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  tree = ocp.StandardCheckpointer().restore(path)
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


def compare(a: dict, b: dict) -> list[str]:
  """Paths whose arrays differ in any bit (or exist in one only)."""
  bad = sorted(set(a) ^ set(b))
  for k in sorted(set(a) & set(b)):
    x, y = a[k], b[k]
    if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
      bad.append(k)
  return bad


def kill_and_resume(workdir: str, kills: int, seed: int = 0, sigterm: int = 0,
                    log=print) -> dict:
  """Trains total_steps(n) steps in `workdir`, interrupting it n times on
  the way (n = kills, plus one if `sigterm`: the `sigterm`-th interruption is a
  SIGTERM); returns what happened."""
  rng = random.Random(seed)
  n = kills + (1 if sigterm else 0)
  total = total_steps(n)
  arg = f'steps={total}'
  events = []
  while len(events) < n:
    before = checkpoint_steps(workdir)
    last = before[-1] if before else 0
    # Leave room for the rest: each needs at least one new checkpoint.
    limit = total - CHECKPOINT_EVERY * (n - len(events))
    if last + 1 > limit:
      raise RuntimeError(f'the run reached step {last} of {total} after {len(events)} '
                         'interruptions')
    target = rng.randint(last + 1, min(limit, last + CHECKPOINT_EVERY))
    delay = rng.uniform(0.0, 0.3)
    sig = signal.SIGTERM if len(events) + 1 == sigterm else signal.SIGKILL
    proc = start(workdir, arg)
    reached = wait_for_checkpoint(proc, workdir, target)
    if not reached:
      out = proc.communicate()[0]
      raise RuntimeError(f'the run ended before checkpoint {target}:\n{out[-3000:]}')
    time.sleep(delay)
    proc.send_signal(sig)
    out = proc.communicate()[0]
    resumed = re.findall(r'Resuming from step (\d+)', out)
    preempted = re.findall(r'preempted \(SIGTERM\): saved a checkpoint of step (\d+)', out)
    after = checkpoint_steps(workdir)
    events.append({'signal': sig.name, 'resumed_from': int(resumed[0]) if resumed else 0,
                   'target': target, 'delay_s': round(delay, 3),
                   'latest_checkpoint_after': after[-1], 'returncode': proc.returncode,
                   'preempted_step': int(preempted[0]) if preempted else None,
                   'output': out})
    log(f'{sig.name} {len(events)}: resumed from {events[-1]["resumed_from"]}, signalled '
        f'{delay:.2f} s after a checkpoint >= {target} was published; newest checkpoint '
        f'then {after[-1]}; exit {proc.returncode}')
  final = run_to_end(workdir, arg)
  resumed = re.findall(r'Resuming from step (\d+)', final.stdout)
  return {'events': events, 'final_resumed_from': int(resumed[0]) if resumed else 0,
          'final_stdout': final.stdout}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kills', type=int, default=20)
  parser.add_argument('--sigterm', type=int, default=0,
                      help='make the Nth interruption a SIGTERM (0: none)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default='/tmp/segjax_kill_resume')
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  reference, killed = os.path.join(args.workdir, 'reference'), os.path.join(args.workdir, 'killed')
  t0 = time.time()
  n = args.kills + (1 if args.sigterm else 0)
  run_to_end(reference, f'steps={total_steps(n)}')
  print(f'uninterrupted run: {total_steps(n)} steps in {time.time() - t0:.1f} s', flush=True)
  t0 = time.time()
  info = kill_and_resume(killed, args.kills, args.seed, args.sigterm,
                         log=lambda m: print(m, flush=True))
  a, b = load_final(reference), load_final(killed)
  bad = compare(a, b)
  n_bytes = sum(x.nbytes for x in a.values())
  events = info['events']
  sigkilled = sum(e['returncode'] == -signal.SIGKILL for e in events)
  clean = sum(e['returncode'] == 0 and e['preempted_step'] is not None for e in events)
  print(f'{len(events)} interruptions ({sigkilled} died of SIGKILL, {clean} saved and exited '
        f'0 on SIGTERM) and {len(events)} resumes in {time.time() - t0:.1f} s; the last run '
        f'resumed from step {info["final_resumed_from"]}', flush=True)
  print(f'final state: {len(a)} arrays, {n_bytes:,} bytes; arrays differing from the '
        f'uninterrupted run: {len(bad)} {bad[:5]}', flush=True)
  if bad:
    raise SystemExit(1)
  print('bit-identical: yes')


if __name__ == '__main__':
  main()
