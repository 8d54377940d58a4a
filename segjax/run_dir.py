"""A trained run directory: its config, model and weights, loaded by one rule.

`load_run(workdir, checkpoint, weights)` is how every tool (evaluate, predict,
export, average_checkpoints) reads a run. Which config counts:

  1. <workdir>/config.json, the config the run last trained with (training
     writes it once the checkpoint is known to fit it). A run directory
     without one (an old or copied checkpoint folder) falls back to the config
     saved in the chosen checkpoint's meta. It is laid over
     `config.base_config()`, so keys added to the schema since the run get
     their defaults.
  2. Command-line overrides may change only what evaluation and inference
     read: `eval.*` (split, mode, scales, flip, batch size, MC samples, ...)
     and `data.root` (where the data lives on this machine). Any other key
     (the model, its classes, its preprocessing) is refused with a
     ConfigError naming it: those are facts of the trained weights, and the
     config file given on a command line is not consulted for them.

A run directory holds config.json, checkpoints/ (orbax steps, each with the
state and a JSON meta item) and what training and evaluation wrote.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import ml_collections

from segjax import checkpoint as ckpt_lib
from segjax import config as config_lib
from segjax import sharding as sharding_lib
from segjax import state as state_lib

# Config keys a command line may override when a trained run is loaded: a
# key equal to one of these or below one ending in '.'.
OVERRIDABLE = ('eval.', 'data.root')
WEIGHTS = ('raw', 'ema')


@dataclasses.dataclass
class Run:
  """A checkpoint of a run, ready to run the model.

  Attributes:
    workdir: the run directory.
    config: the authoritative config (module doc), overrides applied.
    model: the flax module built from it.
    variables: {'params', 'batch_stats'} of the chosen `weights`.
    step: the checkpoint's step.
    meta: the checkpoint's meta (metrics, config, ...).
    weights: 'raw' (the trained variables) or 'ema' (their moving average).
    ema_variables: the moving average when the run kept one, else None.
  """
  workdir: str
  config: ml_collections.ConfigDict
  model: Any
  variables: dict
  step: int
  meta: dict
  weights: str = 'raw'
  ema_variables: dict | None = None


def overridable(key: str) -> bool:
  return any(key == k or (k.endswith('.') and key.startswith(k)) for k in OVERRIDABLE)


def check_overrides(overrides: Mapping[str, Any] | None) -> dict:
  """The overrides as a dict; ConfigError naming the first key the rule refuses."""
  overrides = dict(overrides or {})
  for key in overrides:
    if not overridable(key):
      raise config_lib.ConfigError(
          f"config key '{key}' cannot be overridden for a trained run: the run's own config "
          f"is used (segjax.run_dir); only {', '.join(k + '*' if k.endswith('.') else k for k in OVERRIDABLE)} "
          'can be changed on the command line')
  return overrides


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any] | None) -> ml_collections.ConfigDict:
  """A validated copy of `config` with the (allowed) flat overrides set."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in check_overrides(overrides).items():
    node, *path = key.split('.')
    parent = config
    for part in [node] + path[:-1]:
      parent = parent[part]
    parent[key.split('.')[-1]] = tuple(value) if isinstance(value, list) else value
  return config_lib.validate(config)


def open_checkpoints(workdir: str) -> ckpt_lib.Checkpointer:
  """The run's checkpoints (only read: nothing is saved, so nothing is pruned);
  FileNotFoundError without a checkpoints folder."""
  directory = ckpt_lib.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'{directory}: no such directory; --workdir must be a training run '
                            'directory (it holds config.json and checkpoints/)')
  return ckpt_lib.Checkpointer(directory, async_save=False)


def _config_of(workdir: str, ckpt: ckpt_lib.Checkpointer, step: int) -> ml_collections.ConfigDict:
  if os.path.isfile(os.path.join(workdir, 'config.json')):
    return config_lib.load_run_config(workdir)
  meta = ckpt.read_meta(step)
  if not isinstance(meta.get('config'), dict):
    raise FileNotFoundError(f'{workdir} has no config.json and the meta of checkpoint {step} '
                            'holds no config')
  return config_lib.from_dict(meta['config'], f'{ckpt.step_dir(step)} (meta config)')


def load_config(workdir: str, checkpoint: str = 'latest',
                overrides: Mapping[str, Any] | None = None
                ) -> tuple[ml_collections.ConfigDict, int]:
  """(authoritative config with overrides, step) of checkpoint `checkpoint`
  ('latest', 'best' or a step) of the run in `workdir`."""
  overrides = check_overrides(overrides)
  ckpt = open_checkpoints(workdir)
  try:
    step = ckpt.resolve(str(checkpoint))
    config = _config_of(workdir, ckpt, step)
  finally:
    ckpt.close()
  config = apply_overrides(config, overrides)
  config.eval.checkpoint = str(checkpoint)
  return config, step


def load_run(workdir: str, checkpoint: str | None = None, weights: str | None = None, *,
             overrides: Mapping[str, Any] | None = None, mesh=None) -> Run:
  """Loads checkpoint `checkpoint` of the run in `workdir` (module doc: which config).

  Args:
    workdir: the run directory.
    checkpoint: 'latest', 'best' or a step; None takes overrides['eval.checkpoint'],
      else 'latest'.
    weights: 'raw' (default) or 'ema' (runs trained with ema.decay > 0).
    overrides: flat config keys -> values, only eval.* and data.root.
    mesh: where the variables go (default: a mesh of all devices, replicated).

  Raises:
    FileNotFoundError: no such run or checkpoint.
    config.ConfigError: a refused override or an invalid config.
    ValueError: weights='ema' for a run without EMA weights.
  """
  overrides = check_overrides(overrides)
  weights = weights or 'raw'
  if weights not in WEIGHTS:
    raise ValueError(f'weights must be one of {WEIGHTS}, got {weights!r}')
  if checkpoint is None:
    checkpoint = str(overrides.get('eval.checkpoint', 'latest'))
  mesh = mesh if mesh is not None else sharding_lib.make_mesh()
  ckpt = open_checkpoints(workdir)
  try:
    step = ckpt.resolve(str(checkpoint))
    config = apply_overrides(_config_of(workdir, ckpt, step), overrides)
    config.eval.checkpoint = str(checkpoint)
    model = state_lib.build_model(config)
    abstract = state_lib.abstract_state(config, model, mesh)
    state, meta = ckpt.restore(step, abstract, config=json.loads(config.to_json_best_effort()))
  finally:
    ckpt.close()
  ema = state_lib.ema_variables(state)
  if weights == 'ema':
    if ema is None:
      raise ValueError(f'checkpoint {step} in {ckpt.directory} has no EMA weights '
                       f'(ema.decay={config.ema.decay}); use the raw weights')
    variables = ema
  else:
    variables = state_lib.variables_of(state)
  return Run(workdir=workdir, config=config, model=model, variables=variables, step=int(step),
             meta=meta, weights=weights, ema_variables=ema)
