r"""A table of every run under a directory: one row per workdir of a sweep.

  segjax results --workdir=runs/x                            # Markdown to stdout
  segjax results --workdir=runs/x --sort=best_mIoU           # best first
  segjax results --workdir=runs/x --sort=optimizer.lr --order=descending
  segjax results --workdir=runs/x --out=runs/x/results.csv   # or .md

`collect(root)` finds the runs: `root` itself if it is a run, else every
directory below it that is one (a directory holding metrics.jsonl, config.json
or sweep_point.json; the search does not go into a run, nor into
checkpoints/, tensorboard/, images/ or hidden directories). A `sweep.json`
(`{"config": ..., "points": [{"name": ..., "overrides": {...}}, ...]}`) lists
a sweep's points: they come first, in its order, a point without a directory
yet as a 'pending' row; the other runs follow, ordered by path. A run is
matched to its point by the name in its sweep_point.json (or, without one, by
its path relative to the sweep directory). Nothing needs jax.

Columns (the names `--sort` takes):
  run             path relative to root (root's own name when root is the
                  run; the point name for a pending point).
  status          sweep_point.json's status ('done', 'running'), 'pending'
                  for a point without a directory, '-' for a run outside a
                  sweep.
  <override>      one column per config override of the sweep points (the
                  union over the rows; empty where a run has none), named by
                  the dotted config key ('config.<key>' where the key is also
                  one of the fixed column names).
  steps           the last logged step.
  total_steps     config.json's total_steps.
  best_mIoU       the highest val/mIoU logged, and best_step its step (the
  best_step       earliest one on a tie).
  final_mIoU      val/mIoU of the last evaluation.
  best_ema_mIoU   the highest val_ema/mIoU; only when some run has EMA.
  final_aAcc      val/aAcc of the last evaluation.
  images_per_sec  the median of train/images_per_sec over the run. train.py
                  logs no rate for the first log interval of each training
                  session (it includes compilation), so the median leaves the
                  compile step out; the median also keeps the intervals that
                  hold an evaluation or a checkpoint save from dragging it down.
  train_seconds   time/train_seconds summed over the run's sessions (train.py
                  logs it when a session's loop ends, not when it is
                  preempted, so a preempted session is not counted); empty if
                  none logged it.

metrics.jsonl is read with segjax.tools.report.read_metrics. A resumed run appends
to the file: a later line for a step supersedes the earlier one, and a line
whose step is lower than one already logged starts a new session from an
earlier checkpoint, so the earlier session's lines from that step on are
dropped (they belong to weights that were lost). An unreadable line is an
error naming the file and line (`skip_corrupt` / `--skip_corrupt`: skipped
with a warning, as report.py does).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import sys
from typing import Any, Iterable, Optional

from absl import flags

from segjax import cli
from segjax.tools import report

SWEEP_FILE = 'sweep.json'
POINT_FILE = 'sweep_point.json'
RUN_MARKERS = ('metrics.jsonl', 'config.json', POINT_FILE)
SKIP_DIRS = frozenset({'checkpoints', 'tensorboard', 'images'})

MIOU_COLUMNS = ('best_mIoU', 'final_mIoU', 'best_ema_mIoU', 'final_aAcc')
METRIC_COLUMNS = MIOU_COLUMNS + ('images_per_sec',)
HEAD_COLUMNS = ('run', 'status')
TAIL_COLUMNS = ('steps', 'total_steps', 'best_mIoU', 'best_step', 'final_mIoU',
                'best_ema_mIoU', 'final_aAcc', 'images_per_sec', 'train_seconds')
FIXED_COLUMNS = HEAD_COLUMNS + TAIL_COLUMNS


class ResultsError(ValueError):
  pass


# ----------------------------------------------------------------------------
# Reading runs.


def _natural_key(text: str) -> list:
  """'lr_10' after 'lr_2': digit runs compare as numbers."""
  return [(0, int(part), '') if part.isdigit() else (1, 0, part)
          for part in re.split(r'(\d+)', text) if part]


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ResultsError(f'{path}: not readable JSON ({e})') from None


def _num(value: Any) -> float:
  """A metrics.jsonl value as float: the MetricWriter's 'nan'/'inf' strings too."""
  try:
    return float(value)
  except (TypeError, ValueError):
    return float('nan')


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_missing(value: Any) -> bool:
  return value is None or value == '' or (isinstance(value, float) and math.isnan(value))


def merge_sessions(rows: Iterable[dict]) -> dict[int, dict]:
  """metrics.jsonl lines (in file order) -> {step: merged line}.

  Lines of the same step merge, a later value of a key superseding an
  earlier one. A line whose step is below the highest step so far is a
  resumed session that restarted from an earlier checkpoint: the lines of
  that step and above logged before it are dropped first.
  """
  by_step: dict[int, dict] = {}
  previous = None
  for row in rows:
    step = int(row['step'])
    if previous is not None and step < previous:  # Then previous == max(by_step).
      for stale in [s for s in by_step if s >= step]:
        del by_step[stale]
    by_step.setdefault(step, {}).update({k: v for k, v in row.items() if k != 'step'})
    previous = step
  return dict(sorted(by_step.items()))


def _series(by_step: dict[int, dict], key: str) -> list[tuple[int, float]]:
  return [(step, _num(row[key])) for step, row in by_step.items() if key in row]


def _best(series: list[tuple[int, float]]) -> tuple[Optional[float], Optional[int]]:
  best_value, best_step = None, None
  for step, value in series:
    if math.isfinite(value) and (best_value is None or value > best_value):
      best_value, best_step = value, step
  return best_value, best_step


def _overrides(value: Any, path: str) -> dict:
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise ResultsError(f'{path}: "overrides" is not an object')
  return {(k[len('config.'):] if k.startswith('config.') else k): v for k, v in value.items()}


def summarize_run(workdir: str, *, skip_corrupt: bool = False) -> dict:
  """The metric columns of one run (see the module docstring), plus
  '_point' (its sweep_point.json, or None) and '_has_ema'."""
  problems = []
  cfg: dict = {}
  config_path = os.path.join(workdir, 'config.json')
  if os.path.exists(config_path):
    try:
      cfg = _read_json(config_path)
    except ResultsError as e:
      problems.append(str(e))
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  _, lines, bad = report.read_metrics(metrics_path)
  # read_metrics words them 'unreadable line skipped'; here they are errors
  # unless skip_corrupt.
  problems += [p if skip_corrupt else p.replace('unreadable line skipped', 'unreadable line', 1)
               for p in bad]
  if problems:
    if not skip_corrupt:
      raise ResultsError('\n'.join(problems) + '\n(skip_corrupt=True, or --skip_corrupt, skips '
                         'unreadable lines and files with a warning)')
    for p in problems:
      print(f'warning: {p}', file=sys.stderr)
  point = None
  point_path = os.path.join(workdir, POINT_FILE)
  if os.path.exists(point_path):
    point = _read_json(point_path)
    if not isinstance(point, dict):
      raise ResultsError(f'{point_path}: not a JSON object')
    point = dict(point, overrides=_overrides(point.get('overrides'), point_path))

  by_step = merge_sessions(lines)
  best, best_step = _best(_series(by_step, 'val/mIoU'))
  miou = _series(by_step, 'val/mIoU')
  aacc = _series(by_step, 'val/aAcc')
  ema = _series(by_step, 'val_ema/mIoU')
  rates = [v for _, v in _series(by_step, 'train/images_per_sec') if math.isfinite(v)]
  seconds = [_num(line['time/train_seconds']) for line in lines if 'time/train_seconds' in line]
  seconds = [s for s in seconds if math.isfinite(s)]
  total = cfg.get('total_steps') if isinstance(cfg, dict) else None
  return {
      'steps': max(by_step) if by_step else None,
      'total_steps': int(total) if _is_number(total) else None,
      'best_mIoU': best,
      'best_step': best_step,
      'final_mIoU': miou[-1][1] if miou else None,
      'best_ema_mIoU': _best(ema)[0],
      'final_aAcc': aacc[-1][1] if aacc else None,
      'images_per_sec': statistics.median(rates) if rates else None,
      'train_seconds': sum(seconds) if seconds else None,
      '_point': point,
      '_has_ema': bool(ema),
  }


def _find(root: str) -> tuple[list[str], list[str]]:
  """(run directories, directories holding a sweep.json), both in walk order."""
  runs, sweeps = [], []
  for dirpath, dirnames, filenames in os.walk(root):
    if SWEEP_FILE in filenames:
      sweeps.append(dirpath)
    if any(m in filenames for m in RUN_MARKERS):
      runs.append(dirpath)
      dirnames[:] = []
      continue
    dirnames[:] = sorted((d for d in dirnames if d not in SKIP_DIRS and not d.startswith('.')),
                         key=_natural_key)
  return runs, sweeps


def _read_sweep(directory: str) -> list[dict]:
  path = os.path.join(directory, SWEEP_FILE)
  sweep = _read_json(path)
  points = sweep.get('points') if isinstance(sweep, dict) else None
  if not isinstance(points, list) or not all(
      isinstance(p, dict) and isinstance(p.get('name'), str) for p in points):
    raise ResultsError(f'{path}: expected {{"points": [{{"name": ..., "overrides": ...}}, ...]}}')
  return [{'name': p['name'], 'overrides': _overrides(p.get('overrides'), path)} for p in points]


def _under(path: str, directory: str) -> bool:
  rel = os.path.relpath(path, directory)
  return rel != os.curdir and rel != os.pardir and not rel.startswith(os.pardir + os.sep)


def collect(root: str, *, skip_corrupt: bool = False) -> list[dict]:
  """One row per run under `root` (see the module docstring for the columns).

  Args:
    root: a run directory, or a directory with runs below it (a sweep's).
    skip_corrupt: skip unreadable metrics.jsonl lines and config.json files
      with a warning on stderr instead of raising.

  Returns:
    Row dicts, all with the same keys in column order: 'run', 'status', the
    override keys, then the metric columns. Missing values are None; metric
    values are floats, steps ints, override values as in the JSON.

  Raises:
    ResultsError: root missing or holding no run, an unreadable metrics.jsonl
      line (named by file and line), or an unreadable JSON file (named).
  """
  if not os.path.isdir(root):
    raise ResultsError(f'{root} is not a directory')
  run_dirs, sweep_dirs = _find(root)
  base = os.path.basename(os.path.abspath(root))
  runs = []
  for d in run_dirs:
    rel = os.path.relpath(d, root)
    runs.append((d, base if rel == '.' else rel, summarize_run(d, skip_corrupt=skip_corrupt)))
  if not runs and not sweep_dirs:
    raise ResultsError(f'no runs under {root}: no directory there holds metrics.jsonl, '
                       f'config.json or {POINT_FILE}, and there is no {SWEEP_FILE}')

  ordered: list[tuple[str, str, dict, dict]] = []  # (run, status, overrides, summary)
  used = set()
  for sweep_dir in sweep_dirs:
    for point in _read_sweep(sweep_dir):
      matches = []
      for i, (d, rel, summary) in enumerate(runs):
        if i in used or not _under(d, sweep_dir):
          continue
        own = summary['_point']
        name = own.get('name') if own else os.path.relpath(d, sweep_dir)
        if name == point['name']:
          matches.append(i)
      for i in matches:
        used.add(i)
        d, rel, summary = runs[i]
        own = summary['_point']
        overrides = own['overrides'] if own and own.get('overrides') else point['overrides']
        ordered.append((rel, _status(own), overrides, summary))
      if not matches:
        run = os.path.relpath(os.path.join(sweep_dir, point['name']), root)
        ordered.append((run, 'pending', point['overrides'], {}))
  for i, (d, rel, summary) in enumerate(runs):
    if i not in used:
      own = summary['_point']
      ordered.append((rel, _status(own), own['overrides'] if own else {}, summary))
  if not ordered:
    raise ResultsError(f'no runs under {root}: its {SWEEP_FILE} lists no points')

  keys: list[str] = []
  for _, _, overrides, _ in ordered:
    keys += [k for k in overrides if k not in keys]
  column_of = {k: f'config.{k}' if k in FIXED_COLUMNS else k for k in keys}
  has_ema = any(summary.get('_has_ema') for *_, summary in ordered)
  tail = [c for c in TAIL_COLUMNS if has_ema or c != 'best_ema_mIoU']
  rows = []
  for run, status, overrides, summary in ordered:
    row = {'run': run, 'status': status}
    row.update({column_of[k]: overrides.get(k) for k in keys})
    row.update({c: summary.get(c) for c in tail})
    rows.append(row)
  return rows


def _status(point: Optional[dict]) -> str:
  if point is None:
    return '-'
  return str(point.get('status') or '-')


# ----------------------------------------------------------------------------
# Sorting and formatting.


def columns_of(rows: list[dict]) -> list[str]:
  columns: list[str] = []
  for row in rows:
    columns += [k for k in row if k not in columns]
  return columns


def _numeric(rows: list[dict], column: str) -> bool:
  values = [r.get(column) for r in rows if not _is_missing(r.get(column))]
  return bool(values) and all(_is_number(v) for v in values)


def _resolve(rows: list[dict], column: str) -> str:
  valid = columns_of(rows)
  valid += [c for c in FIXED_COLUMNS if c not in valid]
  if column in valid:
    return column
  folded = [c for c in valid if c.lower() == column.lower()]
  if len(folded) == 1:
    return folded[0]
  raise ValueError(f'unknown column {column!r}; the columns are: {", ".join(valid)}')


def sort_rows(rows: list[dict], key: str, descending: Optional[bool] = None) -> list[dict]:
  """Rows sorted by column `key` (a new list; ties keep their order).

  Numeric columns sort as numbers, others as text (digit runs as numbers).
  Missing values (empty, None, NaN) go last in either direction. The default
  direction is descending for the metric columns (mIoU, aAcc, images/s) and
  ascending for the others.

  Raises:
    ValueError: `key` is not a column (the message lists them).
  """
  key = _resolve(rows, key)
  if descending is None:
    descending = key in METRIC_COLUMNS
  present = [r for r in rows if not _is_missing(r.get(key))]
  missing = [r for r in rows if _is_missing(r.get(key))]
  if _numeric(rows, key):
    sort_key = lambda r: r[key]
  else:
    sort_key = lambda r: _natural_key(_text(r[key]))
  return sorted(present, key=sort_key, reverse=descending) + missing


def _text(value: Any) -> str:
  """Full-precision text of a value (the CSV cell)."""
  if value is None:
    return ''
  if isinstance(value, str):
    return value
  if isinstance(value, float):
    return repr(value)
  return json.dumps(value)


def _cell(column: str, value: Any) -> str:
  """The Markdown cell: mIoU/aAcc to 4 decimals, rates and seconds to 1, other
  floats (override values) to 6 significant digits."""
  if isinstance(value, float) and math.isfinite(value):
    if column in MIOU_COLUMNS:
      return f'{value:.4f}'
    if column in ('images_per_sec', 'train_seconds'):
      return f'{value:.1f}'
    return f'{value:.6g}'
  return _text(value).replace('|', '\\|')


def _check_columns(rows: list[dict], columns: Optional[list[str]]) -> list[str]:
  if columns is None:
    return columns_of(rows)
  return [_resolve(rows, c) for c in columns]


def format_markdown(rows: list[dict], columns: Optional[list[str]] = None) -> str:
  """A Markdown table (GitHub pipe syntax; numeric columns right-aligned),
  padded to line up in a terminal. Ends with a newline."""
  columns = _check_columns(rows, columns)
  table = [[_cell(c, row.get(c)) for c in columns] for row in rows]
  numeric = [_numeric(rows, c) for c in columns]
  widths = [max([len(c), 3] + [len(t[i]) for t in table]) for i, c in enumerate(columns)]

  def line(cells):
    return '| ' + ' | '.join(
        cell.rjust(w) if num else cell.ljust(w)
        for cell, w, num in zip(cells, widths, numeric)) + ' |'

  rule = '| ' + ' | '.join(('-' * (w - 1) + ':') if num else '-' * w
                           for w, num in zip(widths, numeric)) + ' |'
  return '\n'.join([line(columns), rule] + [line(t) for t in table]) + '\n'


def format_csv(rows: list[dict], columns: Optional[list[str]] = None) -> str:
  """CSV with a header row; numbers at full precision, missing values empty,
  list values as JSON."""
  columns = _check_columns(rows, columns)
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(columns)
  for row in rows:
    writer.writerow([_text(row.get(c)) for c in columns])
  return buf.getvalue()


FORMATS = {'md': format_markdown, 'csv': format_csv}
_EXTENSIONS = {'.md': 'md', '.markdown': 'md', '.csv': 'csv'}


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  flags.DEFINE_string('workdir', None, 'A sweep directory (or any directory with runs below '
                      'it).', required=True, flag_values=fv)
  flags.DEFINE_string('sort', None, 'Column to sort by.', flag_values=fv)
  flags.DEFINE_enum('order', None, ['ascending', 'descending'], 'Sort order (default: '
                    'descending for mIoU, aAcc and images_per_sec, else ascending).',
                    flag_values=fv)
  flags.DEFINE_enum('format', None, sorted(FORMATS), 'md (default) or csv; with --out, '
                    'inferred from its extension.', flag_values=fv)
  flags.DEFINE_string('out', None, 'Write the table to this file (.md or .csv) instead of '
                      'stdout.', flag_values=fv)
  flags.DEFINE_bool('skip_corrupt', False, 'Skip unreadable metrics.jsonl lines with a '
                    'warning.', flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  del argv
  fmt = fv.format
  if fmt is None and fv.out is not None:
    fmt = _EXTENSIONS.get(os.path.splitext(fv.out)[1].lower())
    if fmt is None:
      raise cli.UsageError(f'cannot tell the format of {fv.out} from its extension; pass '
                           '--format')
  fmt = fmt or 'md'
  rows = collect(os.path.expanduser(fv.workdir), skip_corrupt=fv.skip_corrupt)
  if fv.sort is not None:
    rows = sort_rows(rows, fv.sort, None if fv.order is None else fv.order == 'descending')
  text = FORMATS[fmt](rows)
  if fv.out is None:
    sys.stdout.write(text)
    return 0
  os.makedirs(os.path.dirname(os.path.abspath(fv.out)), exist_ok=True)
  with open(fv.out, 'w', encoding='utf-8', newline='') as f:
    f.write(text)
  print(f'Wrote {fv.out} ({len(rows)} runs)')
  return 0


if __name__ == '__main__':
  cli.run(main, define_flags)
