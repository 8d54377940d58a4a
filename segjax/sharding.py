"""Device mesh, shardings and host-to-device batches (data parallel, 1..N hosts)."""

from __future__ import annotations

import glob
import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def _tpu_chips_visible() -> bool:
  """Whether this machine has TPU chips (a Cloud TPU VM), by jax's own test: Google
  TPU device ids on the PCI bus; /dev/accel* where that helper is missing."""
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    count = hardware_utils.num_available_tpu_chips_and_device_id
  except (ImportError, AttributeError):
    return bool(glob.glob('/dev/accel[0-9]*'))
  return count()[0] > 0


def detect_cluster(env=None, tpu_chips_visible=None) -> str | None:
  """Names the multi-process environment that jax.distributed can configure itself
  from, or None on a single machine.

  Cloud TPU VMs (every worker of a pod slice; jax asks the metadata server for
  the topology; a single-host VM initializes as one process), SLURM jobs of
  several tasks and Open MPI launches of several ranks.
  """
  env = os.environ if env is None else env
  if tpu_chips_visible is None:
    tpu_chips_visible = _tpu_chips_visible()
  if int(env.get('SLURM_NTASKS', env.get('SLURM_NPROCS', '1')) or 1) > 1 and 'SLURM_JOB_ID' in env:
    return 'slurm'
  if 'OMPI_MCA_orte_hnp_uri' in env and int(env.get('OMPI_COMM_WORLD_SIZE', '2') or 2) > 1:
    return 'ompi'
  if tpu_chips_visible and 'TPU_SKIP_MDS_QUERY' not in env:
    return 'tpu'
  return None


def distributed_args(coordinator_address: str = '', num_processes: int = 0,
                     process_id: int = -1, *, mode: str = 'auto', env=None,
                     tpu_chips_visible=None) -> dict | None:
  """The jax.distributed.initialize keyword arguments of this launch, or None.

  Explicit arguments win; then the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID environment variables; then, with mode='auto', a detected
  cluster (detect_cluster), for which jax finds every argument itself ({}).
  mode='off' never initializes; mode='on' always does (jax then detects the
  cluster or fails saying what it is missing).
  """
  if mode not in ('auto', 'on', 'off'):
    raise ValueError(f"distributed={mode!r}: expected 'auto', 'on' or 'off'")
  env = os.environ if env is None else env
  if mode == 'off':
    return None
  addr = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS', '')
  n = num_processes or int(env.get('JAX_NUM_PROCESSES', '0') or 0)
  pid = process_id if process_id >= 0 else int(env.get('JAX_PROCESS_ID', '-1') or -1)
  if addr or n > 1:
    if not addr or n < 1 or pid < 0:
      raise ValueError('a multi-process run needs coordinator_address, num_processes and '
                       f'process_id (flags or JAX_* variables); got {addr!r}, {n}, {pid}')
    if not 0 <= pid < n:
      raise ValueError(f'process_id={pid} is not in [0, num_processes={n})')
    return dict(coordinator_address=addr, num_processes=n, process_id=pid)
  if mode == 'on' or detect_cluster(env, tpu_chips_visible) is not None:
    return {}
  return None


def maybe_initialize_distributed(coordinator_address: str = '', num_processes: int = 0,
                                 process_id: int = -1, *, mode: str = 'auto') -> bool:
  """Starts jax.distributed when running as several processes (distributed_args).

  Call before anything touches a jax backend. Returns whether it initialized.
  """
  kwargs = distributed_args(coordinator_address, num_processes, process_id, mode=mode)
  if kwargs is None:
    return False
  logging.info('jax.distributed.initialize(%s)', kwargs)
  jax.distributed.initialize(**kwargs)
  return True


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over all (global) devices."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh, what: str = 'batch_size') -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f'{what}={global_batch} must be divisible by the number of devices ({n})')
  if global_batch % jax.process_count():
    raise ValueError(f'{what}={global_batch} must be divisible by the number of processes '
                     f'({jax.process_count()})')


def to_global(batch: dict, mesh: Mesh) -> dict:
  """Process-local numpy batch -> global jax.Arrays sharded over the batch axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in batch order."""
  shards = {}
  for s in x.addressable_shards:
    start = s.index[0].start or 0
    shards.setdefault(start, s)  # Replicas of the same rows appear once.
  return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)], axis=0)
