"""Checkpoints: orbax CheckpointManager with keep-N latest plus best-N by val mIoU.

Each checkpoint holds two items: 'state' (the train state pytree, restored
directly into its shardings) and 'meta' (JSON: step, eval metrics, the config).
Every process calls save/restore; orbax coordinates the writes.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

BEST_METRIC = 'mIoU'


def _best_metric(metrics) -> float:
  value = metrics.get(BEST_METRIC, float('nan'))
  return -math.inf if value is None or math.isnan(value) else float(value)


class Checkpointer:
  """Save/restore train states in `directory`; keeps the latest and the best."""

  def __init__(self, directory: str, *, keep: int = 3, keep_best: int = 1,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    preserve = [policies.LatestN(n=keep)]
    if keep_best:
      preserve.append(policies.BestN(get_metric_fn=_best_metric, reverse=False, n=keep_best,
                                     keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(preserve),
        enable_async_checkpointing=async_save,
        create=True,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, *, metrics: Optional[dict] = None,
           meta: Optional[dict] = None) -> None:
    """Saves (asynchronously if enabled). `metrics` (scalars) rank best checkpoints."""
    meta = dict(meta or {})
    meta['step'] = int(step)
    scalars = None
    if metrics is not None:
      scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
      meta['metrics'] = scalars
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                      metrics=scalars, force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores `step` into the shapes, dtypes and shardings of `abstract_state`."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored['state'], dict(restored['meta'] or {})

  def read_meta(self, step: int) -> dict:
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored['meta'] or {})

  def best_step(self) -> Optional[int]:
    """The kept step with the highest val mIoU, or None if none was evaluated."""
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
