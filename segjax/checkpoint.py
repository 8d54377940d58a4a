"""Checkpoints: orbax CheckpointManager with keep-N latest plus best-N by a val metric.

Each checkpoint holds up to three items:
  * 'state': the train state pytree, restored directly into its shardings;
  * 'meta': JSON with the step, eval metrics, the config, training-control
    state (early stopping, reduce-on-plateau) and a fingerprint of 'state';
  * 'data': the grain iterator state of every process (grain's own orbax
    handler), so a resumed run reads the next batch it would have read.
Every process calls save/restore; orbax coordinates the writes and publishes
a step only once all of its items are written, so a run killed mid-save
leaves the previous steps intact.

Restoring checks, in this order:
  1. that the checkpoint was written for a compatible model: the saved array
     tree is compared with the one this config builds, and a mismatch raises
     CheckpointMismatchError naming the differing config keys and arrays
     (never a shape traceback from deep inside orbax);
  2. that it is intact: a checkpoint that cannot be read, or whose arrays do
     not hash to the fingerprint stored at save time, raises
     CorruptCheckpointError. `restore_latest` then moves that step aside to
     `<directory>.corrupt/` (nothing is deleted), warns naming it, and falls
     back to the next older step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

BEST_METRIC = 'mIoU'

# Config keys that decide the shapes of the train state; named in mismatch errors.
IDENTITY_KEYS = ('model.name', 'model.backbone', 'model.width_multiplier', 'model.kwargs',
                 'model.freeze_encoder', 'data.num_classes', 'data.input_channels',
                 'optimizer.name', 'ema.decay')


class CheckpointMismatchError(ValueError):
  """A checkpoint whose arrays do not fit the train state this config builds."""


class CorruptCheckpointError(RuntimeError):
  """A checkpoint that cannot be read back, or reads back different arrays."""


# Scalar stored with each evaluated checkpoint: its best_metric signed so that
# higher is better. Ranking reads it back, so 'best' means what the run that
# saved the checkpoint asked for, whoever opens the directory later.
RANK_KEY = 'checkpoint_rank'


def rank_value(metrics: dict, metric: str = BEST_METRIC, mode: str = 'max') -> float:
  """metrics[metric] if mode is 'max', -metrics[metric] if 'min'; NaN if absent."""
  value = metrics.get(metric)
  if value is None or math.isnan(float(value)):
    return float('nan')
  return float(value) if mode == 'max' else -float(value)


def _best_metric(metrics) -> float:
  value = metrics.get(RANK_KEY, metrics.get(BEST_METRIC, float('nan')))
  return -math.inf if value is None or math.isnan(value) else float(value)


# --------------------------------------------------------------------------- fingerprint


def _host_array(x) -> np.ndarray:
  if isinstance(x, jax.Array):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if not x.is_fully_addressable:
      x = x.addressable_data(0)  # Replicated: every process holds the value.
  return np.ascontiguousarray(np.asarray(x))


def _leaf_hash(x) -> int:
  """A position-dependent uint32 hash of an array's bits.

  sum_i bits_i * (2 i + 1) * 2654435761 (mod 2^32), over the array's 8-, 16-
  or 32-bit words: a changed, swapped or zeroed element changes it.
  """
  x = _host_array(x)
  if x.dtype == np.bool_:
    x = x.astype(np.uint8)
  size = x.dtype.itemsize
  if size == 8:
    bits = x.reshape(-1).view(np.uint32)
  else:
    bits = x.reshape(-1).view({1: np.uint8, 2: np.uint16, 4: np.uint32}[size]).astype(np.uint32)
  weights = (np.arange(bits.shape[0], dtype=np.uint32) * np.uint32(2) + np.uint32(1)
             ) * np.uint32(2654435761)
  return int(np.sum(bits * weights, dtype=np.uint32))


def fingerprint(tree: Any) -> list[int]:
  """One uint32 hash per array leaf of `tree` (in tree order), computed on the
  host one leaf at a time (no compilation; extra memory: one leaf)."""
  return [_leaf_hash(x) for x in jax.tree.leaves(tree)]


# --------------------------------------------------------------------------- tree shapes


def _key_str(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def leaf_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """'a/b/c' -> (shape, dtype name) for every array leaf of a pytree (or of
  orbax's saved tree metadata)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape = getattr(leaf, 'shape', None)
    dtype = getattr(leaf, 'dtype', None)
    if shape is None or dtype is None:
      continue
    out['/'.join(_key_str(k) for k in path)] = (tuple(int(d) for d in shape),
                                               np.dtype(dtype).name)
  return out


def _flat_config(d: Any, prefix: str = '') -> dict:
  out = {}
  if isinstance(d, dict):
    for k, v in d.items():
      out.update(_flat_config(v, f'{prefix}{k}.'))
  else:
    out[prefix[:-1]] = d
  return out


def _normalise(v):
  return json.loads(json.dumps(v, default=str)) if v is not None else None


def describe_mismatch(saved: dict, wanted: dict, saved_config: Optional[dict],
                      config: Optional[dict]) -> Optional[str]:
  """A message naming what differs, or None when the trees match."""
  order = lambda k: (not k.startswith('params/'), k)  # Parameters first.
  missing = sorted(set(wanted) - set(saved), key=order)
  extra = sorted(set(saved) - set(wanted), key=order)
  changed = sorted((k for k in set(saved) & set(wanted) if saved[k] != wanted[k]), key=order)
  if not (missing or extra or changed):
    return None
  parts = []
  if saved_config is not None and config is not None:
    a, b = _flat_config(saved_config), _flat_config(config)
    keys = [k for k in IDENTITY_KEYS
            if any(x == k or x.startswith(k + '.') for x in list(a) + list(b))]
    diffs = []
    for k in keys:
      va = {x: v for x, v in a.items() if x == k or x.startswith(k + '.')}
      vb = {x: v for x, v in b.items() if x == k or x.startswith(k + '.')}
      if _normalise(va) != _normalise(vb):
        show = lambda d, k=k: d.get(k, {x[len(k) + 1:]: v for x, v in d.items()})
        diffs.append(f'{k}: checkpoint {show(va)!r}, this config {show(vb)!r}')
    if diffs:
      parts.append('config keys differ: ' + '; '.join(diffs))

  def fmt(k, d):
    shape, dtype = d[k]
    return f'{k} {shape} {dtype}'

  if changed:
    parts.append(f'{len(changed)} arrays differ in shape or dtype (checkpoint -> this config): '
                 + ', '.join(f'{fmt(k, saved)} -> {wanted[k][0]} {wanted[k][1]}'
                             for k in changed[:6]) + (' ...' if len(changed) > 6 else ''))
  if missing:
    note = ''
    if any(k == 'ema' or k.startswith('ema/') for k in missing):
      note = (' (the checkpoint has no EMA weights: written with ema.decay=0 or by a segjax '
              'version before EMA)')
    parts.append(f'{len(missing)} arrays of this config are not in the checkpoint{note}: '
                 + ', '.join(missing[:6]) + (' ...' if len(missing) > 6 else ''))
  if extra:
    parts.append(f'{len(extra)} arrays of the checkpoint are not in this config: '
                 + ', '.join(extra[:6]) + (' ...' if len(extra) > 6 else ''))
  return '; '.join(parts)


# --------------------------------------------------------------------------- manager


class Checkpointer:
  """Save/restore train states in `directory`; keeps the latest and the best."""

  def __init__(self, directory: str, *, keep: int = 3, keep_best: int = 1,
               async_save: bool = True, best_metric: str = BEST_METRIC,
               best_mode: str = 'max'):
    self.directory = os.path.abspath(directory)
    if best_mode not in ('max', 'min'):
      raise ValueError(f"best_mode={best_mode!r} is not 'max' or 'min'")
    self.best_metric, self.best_mode = best_metric, best_mode
    preserve = [policies.LatestN(n=keep)]
    if keep_best:
      preserve.append(policies.BestN(get_metric_fn=_best_metric, reverse=False, n=keep_best,
                                     keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(preserve),
        enable_async_checkpointing=async_save,
        create=True,
    )
    import grain  # pylint: disable=g-import-not-at-top
    # Handlers named up front, so that a fresh manager can read item metadata.
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
        'state': ocp.StandardCheckpointHandler(),
        'meta': ocp.JsonCheckpointHandler(),
        'data': grain.checkpoint.CheckpointHandler(),
    })

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def save(self, step: int, state: Any, *, metrics: Optional[dict] = None,
           meta: Optional[dict] = None, data_iterator: Any = None) -> None:
    """Saves (asynchronously if enabled). `metrics` (scalars) rank best
    checkpoints; `data_iterator` (a grain DatasetIterator) has its position
    saved, as of now, in the 'data' item."""
    meta = dict(meta or {})
    meta['step'] = int(step)
    meta['fingerprint'] = fingerprint(state)
    # Array paths, shapes and dtypes, so compatibility checks need not open
    # every array's metadata.
    meta['shapes'] = {k: [list(shape), dtype] for k, (shape, dtype) in leaf_shapes(state).items()}
    scalars = None
    if metrics is not None:
      scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
      scalars[RANK_KEY] = rank_value(scalars, self.best_metric, self.best_mode)
      meta['metrics'] = scalars
      meta['best_metric'] = {'metric': self.best_metric, 'mode': self.best_mode}
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if data_iterator is not None:
      import grain  # pylint: disable=g-import-not-at-top
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=scalars, force=True)

  def saved_shapes(self, step: int) -> dict:
    """leaf_shapes of the 'state' item as saved (CorruptCheckpointError if unreadable)."""
    try:
      md = self.manager.item_metadata(step)['state']
      tree = getattr(md, 'tree', md)
    except Exception as e:  # Any failure to read metadata means a damaged step.
      raise CorruptCheckpointError(
          f'checkpoint step {step} in {self.directory}: cannot read the array metadata '
          f'({type(e).__name__}: {str(e)[:300]})') from e
    if tree is None:
      raise CorruptCheckpointError(
          f'checkpoint step {step} in {self.directory}: no array metadata in its state item')
    return leaf_shapes(tree)

  def check_compatible(self, step: int, abstract_state: Any,
                       config: Optional[dict] = None) -> dict:
    """CheckpointMismatchError naming the differences, if `step` does not fit;
    else the step's meta."""
    meta = self.read_meta(step)
    if 'shapes' in meta:
      saved = {k: (tuple(shape), dtype) for k, (shape, dtype) in meta['shapes'].items()}
    else:  # Written before segjax stored shapes in meta: ask orbax.
      saved = self.saved_shapes(step)
    saved_config = meta.get('config') if config is not None else None
    problem = describe_mismatch(saved, leaf_shapes(abstract_state), saved_config, config)
    if problem is not None:
      raise CheckpointMismatchError(
          f'checkpoint step {step} in {self.directory} does not fit this config: {problem}. '
          'Train in a new --workdir, or set these keys back to the checkpoint\'s values '
          '(its full config is in the checkpoint\'s meta item).')
    return meta

  def restore(self, step: int, abstract_state: Any, *, config: Optional[dict] = None,
              data_iterator: Any = None, verify: bool = True) -> tuple[Any, dict]:
    """Restores `step` into the shapes, dtypes and shardings of `abstract_state`.

    `config` (a plain dict) makes mismatch errors name config keys.
    `data_iterator`, if given, has its state set from the 'data' item (when
    the step has one; meta['data_restored'] says whether it did, and
    meta['data_error'] why not when the saved state did not fit, e.g. after a
    change of data.num_workers). Raises
    CheckpointMismatchError or CorruptCheckpointError.
    """
    meta = self.check_compatible(step, abstract_state, config)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))
    except Exception as e:  # Metadata fit, so a failing read is damage.
      raise CorruptCheckpointError(
          f'checkpoint step {step} in {self.directory}: cannot read its arrays '
          f'({type(e).__name__}: {str(e)[:300]})') from e
    state = restored['state']
    expected = meta.get('fingerprint')
    if verify and expected is not None:
      got = fingerprint(state)
      if got != expected:
        names = list(leaf_shapes(abstract_state))
        bad = [names[i] if i < len(names) else str(i)
               for i, (a, b) in enumerate(zip(got, expected)) if a != b]
        raise CorruptCheckpointError(
            f'checkpoint step {step} in {self.directory}: arrays read back differ from what '
            f'was saved (fingerprint mismatch in {len(bad)} arrays, e.g. {bad[:4]})')
    meta['data_restored'] = False
    if data_iterator is not None and os.path.isdir(os.path.join(self.step_dir(step), 'data')):
      import grain  # pylint: disable=g-import-not-at-top
      try:
        self.manager.restore(step, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
        meta['data_restored'] = True
      except Exception as e:  # Reported to the caller, which rebuilds the iterator.
        meta['data_error'] = f'{type(e).__name__}: {str(e)[:300]}'
    return state, meta

  def read_meta(self, step: int) -> dict:
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # An unreadable or unparsable JSON item is damage.
      raise CorruptCheckpointError(
          f'checkpoint step {step} in {self.directory}: cannot read its meta item '
          f'({type(e).__name__}: {str(e)[:300]})') from e
    return dict(restored['meta'] or {})

  def quarantine(self, step: int) -> str:
    """Moves a damaged step to `<directory>.corrupt/<step>-<time>`; returns the path."""
    dest_root = self.directory + '.corrupt'
    dest = os.path.join(dest_root, f'{int(step)}-{time.strftime("%Y%m%d-%H%M%S")}')
    n = 1
    while os.path.exists(dest):
      n += 1
      dest = os.path.join(dest_root, f'{int(step)}-{time.strftime("%Y%m%d-%H%M%S")}-{n}')
    if jax.process_index() == 0:
      os.makedirs(dest_root, exist_ok=True)
      shutil.move(self.step_dir(step), dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'segjax_quarantine_{step}')
    self.manager.reload()
    return dest

  def restore_latest(self, abstract_state: Any, *, config: Optional[dict] = None,
                     data_iterator_fn=None) -> Optional[tuple[int, Any, dict, Any]]:
    """(step, state, meta, data_iterator) of the newest intact checkpoint, or None.

    Damaged steps are moved aside with a warning naming them; a mismatch is
    raised at once. `data_iterator_fn()` builds a fresh iterator to restore
    into (a new one per attempt), or is None.
    """
    for step in reversed(self.all_steps()):
      iterator = data_iterator_fn() if data_iterator_fn is not None else None
      try:
        state, meta = self.restore(step, abstract_state, config=config, data_iterator=iterator)
      except CorruptCheckpointError as e:
        dest = self.quarantine(step)
        msg = f'WARNING: {e}. Moved it to {dest}; falling back to the previous checkpoint.'
        logging.warning(msg)
        if jax.process_index() == 0:
          print(msg, flush=True)
        continue
      return step, state, meta, iterator
    return None

  def best_step(self) -> Optional[int]:
    """The kept step ranked first by the best_metric it was saved with (val
    mIoU for checkpoints older than that key), or None if none was evaluated;
    ties go to the earlier step."""
    best, best_value = None, -math.inf
    for step in self.all_steps():
      metrics = self.read_meta(step).get('metrics')
      if metrics is None:
        continue
      value = _best_metric(metrics)
      if best is None or value > best_value:
        best, best_value = step, value
    return best

  def resolve(self, which: str) -> int:
    """'latest' | 'best' | '<step>' -> a step that exists, or a clear error."""
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    if which == 'latest':
      return steps[-1]
    if which == 'best':
      step = self.best_step()
      if step is None:
        raise FileNotFoundError(f'no evaluated checkpoint in {self.directory} to pick the '
                                "best from; use eval.checkpoint='latest'")
      return step
    if str(which).isdigit() and int(which) in steps:
      return int(which)
    raise FileNotFoundError(f'checkpoint {which!r} not in {self.directory}; kept steps: {steps}')

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def log_restore(step: int, directory: str) -> None:
  logging.info('Restored checkpoint at step %d from %s', step, directory)
