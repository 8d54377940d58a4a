"""Two processes x 4 CPU devices train exactly like one process x 8 devices.

jax.distributed on localhost (launch.py --coordinator_address/--num_processes/
--process_id), each process feeding its half of every global batch
(pipeline's process sharding) and taking part in orbax's checkpoint save and
restore: the two-process run stops at step 2 and a second two-process launch
resumes it to step 4. Loss trajectory, final parameters, BatchNorm statistics
and the final validation metrics must match the one-process run of 4 steps.
The network is tests/tiny_run.py's model=unet (test_train.tiny_config says why
not the tiny DeepLabV3+).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from segjax import config as config_lib
from segjax import sharding
from tests.test_train import _final_state

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / 'tests' / 'tiny_run.py')
LR = 0.05


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  for k in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    env.pop(k, None)
  return env


def _launch(workdir, steps, extra=()):
  return [sys.executable, str(ROOT / 'launch.py'), f'--config={CONFIG}:steps={steps},lr={LR},model=unet',
          f'--workdir={workdir}', *extra]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _two_processes(workdir, steps):
  port = _free_port()
  procs = [subprocess.Popen(
      _launch(workdir, steps, [f'--coordinator_address=localhost:{port}', '--num_processes=2',
                               f'--process_id={p}']),
      env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for p in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


def _losses(workdir):
  losses = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      row = json.loads(line)
      if 'train/loss' in row:
        losses[row['step']] = row['train/loss']
  return [losses[s] for s in sorted(losses)]


def _init_params(config):
  from segjax import optim, train  # pylint: disable=g-import-not-at-top
  model = train.build_model(config)
  tx, _ = optim.make_optimizer(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  return jax.device_get(train.init_state(config, model, tx, mesh).params)


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def test_two_processes_match_one_process_with_checkpoint_restore(tmp_path):
  one, two = tmp_path / 'one', tmp_path / 'two'
  out = subprocess.run(_launch(one, 4), env=_env(8), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert '8 device(s) cpu' in out.stdout

  first = _two_processes(two, 2)
  assert '8 device(s) cpu' in first[0]
  second = _two_processes(two, 4)
  assert 'Resuming from step 2' in second[0]
  # Only process 0 prints progress, tables and writes logs.
  for text in first[1], second[1]:
    assert 'step 1/' not in text and 'step 3/' not in text and 'mIoU' not in text, text[-2000:]

  # The loss trajectory: steps 1-2 from the first launch, 3-4 after the restore.
  a, b = _losses(one), _losses(two)
  assert len(a) == len(b) == 4
  # Measured: 1.7e-7 relative (float rounding of the cross-process reductions).
  np.testing.assert_allclose(b, a, rtol=1e-5)
  assert a[0] != a[3]  # It trained.

  # Final parameters (relative to the update: measured 3e-8; a process reading the
  # other's rows, or gradients summed instead of averaged, is O(1)) and BatchNorm
  # statistics (measured 2e-13).
  config = config_lib.load_run_config(str(one))
  state_a, state_b = _final_state(config, str(one)), _final_state(config, str(two))
  pa, pb, p0 = _flat(state_a.params), _flat(state_b.params), _flat(_init_params(config))
  rel = np.linalg.norm(pa - pb) / np.linalg.norm(pa - p0)
  assert rel < 1e-4, rel
  np.testing.assert_allclose(_flat(state_b.batch_stats), _flat(state_a.batch_stats),
                             rtol=1e-4, atol=1e-6)

  # The sharded evaluation: the same confusion matrix over the same 8 images.
  with open(one / 'eval' / 'val_00000004.json') as f:
    val_a = json.load(f)
  with open(two / 'eval' / 'val_00000004.json') as f:
    val_b = json.load(f)
  assert val_a['num_examples'] == val_b['num_examples'] == 8
  np.testing.assert_array_equal(val_b['confusion_matrix'], val_a['confusion_matrix'])

  assert val_a['num_examples'] == val_b['num_examples'] == 8
  np.testing.assert_allclose(val_b['mIoU'], val_a['mIoU'], rtol=1e-6)


def test_distributed_arguments():
  none = dict(tpu_chips_visible=False)
  assert sharding.distributed_args(env={}, **none) is None
  assert sharding.distributed_args('h:1', 2, 1, env={}, **none) == dict(
      coordinator_address='h:1', num_processes=2, process_id=1)
  env = {'JAX_COORDINATOR_ADDRESS': 'h:2', 'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'}
  assert sharding.distributed_args(env=env, **none) == dict(
      coordinator_address='h:2', num_processes=4, process_id=3)
  # Flags win over the environment.
  assert sharding.distributed_args('h:9', 0, 0, env=env, **none)['coordinator_address'] == 'h:9'
  assert sharding.distributed_args(env=env, mode='off', **none) is None
  # Auto-detected clusters: jax finds the arguments itself.
  assert sharding.distributed_args(env={}, tpu_chips_visible=True) == {}
  assert sharding.distributed_args(env={'SLURM_JOB_ID': '5', 'SLURM_NTASKS': '2'}, **none) == {}
  assert sharding.distributed_args(env={'SLURM_JOB_ID': '5', 'SLURM_NTASKS': '1'}, **none) is None
  assert sharding.distributed_args(env={}, mode='on', **none) == {}
  for bad in (dict(coordinator_address='h:1'), dict(num_processes=2, process_id=0),
              dict(coordinator_address='h:1', num_processes=2, process_id=2)):
    try:
      sharding.distributed_args(env={}, **bad, **none)
    except ValueError as e:
      assert 'process' in str(e)
    else:
      raise AssertionError(f'{bad} accepted')
