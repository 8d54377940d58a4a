"""Device mesh, shardings and host-to-device batches (data parallel, 1..N hosts)."""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def maybe_initialize_distributed(coordinator_address: str = '', num_processes: int = 0,
                                 process_id: int = -1) -> None:
  """Starts jax.distributed when running as several processes.

  Explicit arguments win; otherwise the JAX_COORDINATOR_ADDRESS /
  JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables; a single process
  with none of them set runs without it.
  """
  addr = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  n = num_processes or int(os.environ.get('JAX_NUM_PROCESSES', '0') or 0)
  pid = process_id if process_id >= 0 else int(os.environ.get('JAX_PROCESS_ID', '-1') or -1)
  if not addr and n <= 1:
    return
  if not addr or n < 1 or pid < 0:
    raise ValueError('multi-process run needs coordinator_address, num_processes and '
                     f'process_id; got {addr!r}, {n}, {pid}')
  logging.info('jax.distributed.initialize(%s, %d, %d)', addr, n, pid)
  jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)


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
