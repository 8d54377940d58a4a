r"""Sweeps defined in config files, run point by point or emitted as commands.

A config file may define `get_sweep(arg)` beside `get_config(arg)` (same
argument): a list of override dicts, each a point of the sweep, with dotted
keys into the config (the `config.` prefix is optional). Build them with
`sweep`, `product`, `zipit` and `chain` (the names of Google's `hyper` module); a
point's optional '_name' entry names its directory:

  def get_sweep(arg):
    from segjax import sweep
    return sweep.product(
        sweep.sweep('config.optimizer.lr', [1e-3, 3e-4]),
        {'config.model.output_stride': [8, 16]})        # 4 points

  python launch.py --config=configs/x.py --sweep --workdir=runs/x
  segjax sweep --config=configs/x.py --workdir=runs/x --emit=tpu \
      --tpu_name=NAME --tpu_zone=ZONE       # one launch command per point

`run` validates every point's config before training any, then trains them one
after another in `<workdir>/<point name>` (the name spells the overrides, e.g.
`lr=0.001,output_stride=8`). Each point's `sweep_point.json` records its
status: a finished point is skipped when the sweep runs again, and the one in
progress resumes from its own checkpoints. A point that fails (a non-finite
loss, say) is recorded as failed and the sweep goes on; it is retried the next
time, and the sweep ends with an error listing the failures. `<workdir>/
sweep.json` lists every point; `segjax results <workdir>` tabulates
them.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import difflib
import hashlib
import importlib.util
import itertools
import json
import os
import re
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Sequence

import jax
import ml_collections

from segjax import config as config_lib
from segjax import train

Point = dict  # dotted key -> value
NAME_KEY = '_name'  # A point's optional own name (instead of one spelled from its overrides).


class SweepError(ValueError):
  """A sweep that cannot be built, or one whose points did not all finish."""


# --------------------------------------------------------------------------- building


def _points(factor) -> list[Point]:
  """A list of points, or a dict key -> values read as the product of its keys."""
  if isinstance(factor, dict):
    for key, values in factor.items():
      if not isinstance(values, (list, tuple)) or isinstance(values, str):
        raise SweepError(f'sweep values of {key!r} must be a list, got {values!r}')
    return product(*(sweep(k, v) for k, v in factor.items()))
  if not isinstance(factor, (list, tuple)) or not builtins.all(isinstance(p, dict) for p in factor):
    raise SweepError(f'a sweep factor is a list of override dicts or a dict key -> values; '
                     f'got {factor!r}')
  return [dict(p) for p in factor]


def _merge(points: Iterable[Point]) -> Point:
  out = {}
  for p in points:
    for k, v in p.items():
      if k in out:
        raise SweepError(f'key {k!r} set twice in one point ({out[k]!r} and {v!r})')
      out[k] = v
  return out


def sweep(key: str, values: Sequence[Any]) -> list[Point]:
  """One key over a list of values: [{key: v} for v in values]."""
  if not isinstance(values, (list, tuple)):
    raise SweepError(f'sweep({key!r}, ...) needs a list of values, got {values!r}')
  return [{key: v} for v in values]


def product(*factors) -> list[Point]:
  """Every combination of one point from each factor (the first varies slowest)."""
  lists = [_points(f) for f in factors]
  return [_merge(combo) for combo in itertools.product(*lists)]


def zipit(*factors) -> list[Point]:
  """The i-th points of all factors merged; factors must have the same length."""
  lists = [_points(f) for f in factors]
  lengths = {len(p) for p in lists}
  if len(lengths) > 1:
    raise SweepError(f'zipit needs factors of one length; got lengths {[len(p) for p in lists]}')
  return [_merge(combo) for combo in builtins.zip(*lists)]


def chain(*factors) -> list[Point]:
  """The points of every factor, one after another."""
  return [p for f in factors for p in _points(f)]


# --------------------------------------------------------------------------- points


def normalize_key(key: str) -> str:
  if not isinstance(key, str) or not key:
    raise SweepError(f'sweep keys are dotted config keys, got {key!r}')
  return key[len('config.'):] if key.startswith('config.') else key


def _format_value(value: Any) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return f'{value:g}'
  if isinstance(value, (list, tuple)):
    if len(value) > 4:  # Class weights, say: their count and a digest.
      digest = hashlib.sha1(repr(tuple(value)).encode()).hexdigest()[:6]
      return f'{len(value)}values-{digest}'
    return 'x'.join(_format_value(v) for v in value) if value else 'none'
  return str(value)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
  """Each key's shortest dotted suffix that no other key of the sweep shares."""
  out = {}
  for key in keys:
    parts = key.split('.')
    for n in range(1, len(parts) + 1):
      suffix = '.'.join(parts[-n:])
      if not any(other != key and (other == suffix or other.endswith('.' + suffix))
                 for other in keys):
        break
    out[key] = suffix
  return out


def point_names(points: Sequence[Point]) -> list[str]:
  """Directory names that spell each point's overrides: 'lr=0.001,output_stride=8'.

  A point's NAME_KEY entry, if any, names it instead.
  """
  keys = list(dict.fromkeys(normalize_key(k) for p in points for k in p if k != NAME_KEY))
  short = _short_keys(keys)
  names = []
  for p in points:
    items = [f'{short[normalize_key(k)]}={_format_value(v)}' for k, v in p.items()
             if k != NAME_KEY]
    name = str(p[NAME_KEY]) if NAME_KEY in p else ','.join(items)
    name = re.sub(r'[^A-Za-z0-9._,=+-]', '_', name) or 'base'
    if len(name) > 120:
      digest = hashlib.sha1(json.dumps(p, sort_keys=True, default=str).encode()).hexdigest()
      name = f'{name[:100]}-{digest[:8]}'
    names.append(name)
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise SweepError(f'points with the same overrides (or the same name): {dupes}')
  return names


def _set(config: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
  parts = key.split('.')
  node = config
  for i, part in enumerate(parts[:-1]):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise SweepError(_unknown(config, '.'.join(parts[:i + 1]), where))
    node = node[part]
  leaf = parts[-1]
  free_form = '.'.join(parts[:-1]) in config_lib._FREE_FORM  # pylint: disable=protected-access
  if not isinstance(node, ml_collections.ConfigDict) or (leaf not in node and not free_form):
    raise SweepError(_unknown(config, key, where))
  if leaf in node and isinstance(node[leaf], tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    with node.ignore_type() if free_form else contextlib.nullcontext():
      with node.unlocked() if free_form else contextlib.nullcontext():
        node[leaf] = value
  except (TypeError, ValueError, AttributeError) as e:
    raise SweepError(f'{where}: cannot set config.{key} = {value!r} '
                     f'(currently {node[leaf]!r}): {e}') from None


def _unknown(config, key: str, where: str) -> str:
  close = difflib.get_close_matches(key, list(_flat_keys(config)), n=3)
  hint = f'; did you mean {", ".join(close)}?' if close else ''
  return f'{where}: config.{key} is not a config key{hint}'


def _flat_keys(config, prefix=''):
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _flat_keys(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}'


def apply(config: ml_collections.ConfigDict, overrides: Point,
          where: str = 'sweep point') -> ml_collections.ConfigDict:
  """A validated copy of `config` with `overrides` set (dotted keys)."""
  c = copy.deepcopy(config)
  for key, value in overrides.items():
    _set(c, normalize_key(key), value, where)
  try:
    return config_lib.validate(c)
  except (ValueError, TypeError) as e:
    raise SweepError(f'{where} {json.dumps(overrides, default=str)}: {e}') from e


def expand(config: ml_collections.ConfigDict, points: Sequence[Point]) -> list[dict]:
  """[{'name', 'overrides' (keys without 'config.'), 'config'}] for every point,
  every config validated; errors name the point."""
  if not isinstance(points, (list, tuple)) or not points:
    raise SweepError(f'get_sweep must return a non-empty list of override dicts, got {points!r}')
  points = _points(list(points))
  names = point_names(points)
  out = []
  for i, (name, p) in enumerate(builtins.zip(names, points)):
    overrides = {normalize_key(k): v for k, v in p.items() if k != NAME_KEY}
    out.append({'name': name, 'overrides': overrides,
                'config': apply(config, overrides, where=f'sweep point {i} ({name})')})
  return out


def load_sweep(config_file: str, arg: str | None) -> list[Point]:
  """get_sweep(arg) of a config file (path[:arg] split by the caller)."""
  spec = importlib.util.spec_from_file_location('segjax_sweep_config', config_file)
  if spec is None or spec.loader is None:
    raise SweepError(f'cannot load config file {config_file}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{config_file} defines no get_sweep(arg); --sweep needs one')
  return module.get_sweep(arg)


def split_config_arg(config_arg: str) -> tuple[str, str | None]:
  """'configs/x.py:a=1,b' -> ('configs/x.py', 'a=1,b'); no ':' -> (path, None)."""
  path, sep, arg = config_arg.partition('.py:')
  if sep:
    return path + '.py', arg
  return config_arg, None


# --------------------------------------------------------------------------- commands


def flag_value(value: Any) -> str:
  """A value as ml_collections' config_flags parses it back (--config.key=VALUE)."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  if isinstance(value, (int, float)) or value is None:
    return repr(value)
  return str(value)


def launch_args(config_arg: str, workdir: str, overrides: Point,
                base_overrides: dict | None = None) -> list[str]:
  """launch.py arguments that train one point."""
  merged = dict(base_overrides or {})
  merged.update({normalize_key(k): v for k, v in overrides.items()})
  return [f'--config={config_arg}', f'--workdir={workdir}',
          *(f'--config.{k}={flag_value(v)}' for k, v in merged.items())]


# --------------------------------------------------------------------------- running

SWEEP_FILE = 'sweep.json'
POINT_FILE = 'sweep_point.json'


def _write_json(path: str, value: dict) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=1, default=str)
  os.replace(tmp, path)


def point_status(point_dir: str) -> dict:
  path = os.path.join(point_dir, POINT_FILE)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise SweepError(f'{path}: unreadable sweep status ({e}); delete it to rerun the point') \
        from e


def run(config: ml_collections.ConfigDict, workdir: str, points: Sequence[Point], *,
        config_arg: str = '', base_overrides: dict | None = None,
        train_fn: Callable[[ml_collections.ConfigDict, str], dict] | None = None,
        is_main: bool | None = None, log: Callable[[str], None] = print) -> list[dict]:
  """Trains every point in turn (see the module docstring); returns the expanded
  points with their 'status'. Raises SweepError if any point failed."""
  if train_fn is None:
    train_fn = train.train_and_evaluate
  if is_main is None:
    is_main = jax.process_index() == 0
  expanded = expand(config, points)
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    _write_json(os.path.join(workdir, SWEEP_FILE), {
        'config': config_arg, 'base_overrides': base_overrides or {},
        'points': [{'name': p['name'], 'overrides': p['overrides']} for p in expanded]})
  failed = []
  for i, p in enumerate(expanded):
    point_dir = os.path.join(workdir, p['name'])
    head = f'[sweep {i + 1}/{len(expanded)}] {p["name"]}'
    status = point_status(point_dir)
    if status.get('status') == 'done':
      log(f'{head}: done already, skipped')
      p['status'] = 'done'
      continue
    record = {'name': p['name'], 'index': i, 'overrides': p['overrides']}
    if is_main:
      os.makedirs(point_dir, exist_ok=True)
      _write_json(os.path.join(point_dir, POINT_FILE),
                  dict(record, status='running', started=time.strftime('%Y-%m-%d %H:%M:%S')))
    log(f'{head}: ' + ('resuming' if status else 'training') + f' in {point_dir}')
    try:
      result = train_fn(p['config'], point_dir)
    except train.Preempted:  # Stop here; the next run of the sweep resumes this point.
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Recorded in sweep_point.json and reported at the end: the sweep goes on.
      message = f'{type(e).__name__}: {e}'
      if is_main:
        _write_json(os.path.join(point_dir, POINT_FILE),
                    dict(record, status='failed', error=message,
                         traceback=traceback.format_exc()[-4000:]))
      log(f'{head}: FAILED: {message}')
      p['status'] = 'failed'
      failed.append((p['name'], message))
      continue
    if is_main:
      metrics = {k: result[k] for k in ('mIoU', 'aAcc') if isinstance(result, dict) and k in result}
      _write_json(os.path.join(point_dir, POINT_FILE),
                  dict(record, status='done', finished=time.strftime('%Y-%m-%d %H:%M:%S'),
                       **{f'final_{k}': float(v) for k, v in metrics.items()}))
    p['status'] = 'done'
  if failed:
    lines = '\n'.join(f'  {n}: {m}' for n, m in failed)
    raise SweepError(f'{len(failed)} of {len(expanded)} sweep points failed (rerun the sweep '
                     f'to retry them):\n{lines}')
  return expanded


def run_from_file(config: ml_collections.ConfigDict, workdir: str, config_arg: str,
                  base_overrides: dict | None = None, log: Callable[[str], None] = print) -> str:
  """`launch.py --sweep`: the points of the config file's get_sweep(arg), trained
  by `run`. Returns 'done', 'preempted' (SIGTERM; the checkpoint is saved and the
  next run resumes) or 'failed' (the failures are printed on stderr)."""
  path, arg = split_config_arg(config_arg)
  try:
    run(config, workdir, load_sweep(path, arg), config_arg=config_arg,
        base_overrides=base_overrides, log=log)
  except train.Preempted as e:
    log(str(e))
    return 'preempted'
  except SweepError as e:
    print(f'ERROR: {e}', file=sys.stderr, flush=True)
    return 'failed'
  return 'done'
