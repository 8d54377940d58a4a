r"""A run report built from its workdir alone: Markdown plus matplotlib PNG figures.

  segjax report --workdir=runs/deeplabv3plus    # -> runs/deeplabv3plus/report/

`write_report(workdir)` reads what training and evaluation leave in the
workdir: `config.json` (the run header), `metrics.jsonl` (loss, learning-rate
and validation curves), `eval/<split>_<step>.json` (a summary of every
evaluation, and the per-class table and confusion matrix of the latest one)
and the prediction panels in `images/` (and, from `--mode=eval`,
`eval/<split>_<step>/panel.png`). It writes `<workdir>/report/`:
`report.md` (header, metrics tables, links to the figures), `curves.png`,
`confusion.png` and a copy of each panel, so the folder can be copied
anywhere. Nothing needs jax or a checkpoint.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import shutil
from typing import Any, Optional

from absl import flags
import numpy as np

from segjax import cli
from segjax import figures
from segjax.data import labels as labels_lib

REPORT_DIR = 'report'
REPORT_NAME = 'report.md'
_EVAL_RE = re.compile(r'^(.+)_(\d+)\.json$')
_OLD_EVAL_RE = re.compile(r'^eval_(.+)_(\d+)\.json$')
_IMAGE_RE = re.compile(r'^(.+)_(\d+)\.png$')
NAN_TEXT = 'n/a'
NAN_CONVENTION = (
    f"'{NAN_TEXT}': undefined, as in segjax.metrics (mmsegmentation's convention): Acc of a "
    'class with no ground-truth pixels; IoU and Dice of a class absent from both the ground '
    'truth and the predictions. Undefined values are left out of the means.')


class ReportError(ValueError):
  pass


# ----------------------------------------------------------------------------
# Reading the workdir.


def _as_float(v: Any) -> float:
  """JSON value -> float; the MetricWriter's 'nan'/'inf' strings and null -> NaN/inf."""
  if v is None:
    return float('nan')
  try:
    return float(v)
  except (TypeError, ValueError):
    return float('nan')


def read_metrics(path: str) -> tuple[dict[str, tuple[list[int], list[float]]], list[dict], list[str]]:
  """Parses a metrics.jsonl.

  Returns:
    (series, rows, problems): series maps each logged key (e.g. 'train/loss')
    to (steps, values) sorted by step, one value per step (a resumed run logs
    some steps again; the later line wins); rows are the parsed lines in file
    order; problems lists the lines that could not be read (a run killed
    mid-write leaves a partial last line).
  """
  series: dict[str, dict[int, float]] = {}
  rows, problems = [], []
  if not os.path.exists(path):
    return {}, rows, problems
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        row = json.loads(line)
        step = int(row['step'])
      except (ValueError, KeyError, TypeError):
        problems.append(f'{path}:{lineno}: unreadable line skipped: {line[:80]!r}')
        continue
      rows.append(row)
      for key, value in row.items():
        if key not in ('step', 'wall_time'):
          series.setdefault(key, {})[step] = _as_float(value)
  out = {}
  for key, by_step in series.items():
    steps = sorted(by_step)
    out[key] = (steps, [by_step[s] for s in steps])
  return out, rows, problems


def _eval_files(workdir: str) -> list[tuple[str, str, re.Match]]:
  out = []
  for directory, pattern in ((os.path.join(workdir, 'eval'), _EVAL_RE),
                             (workdir, _OLD_EVAL_RE)):
    if os.path.isdir(directory):
      for name in sorted(os.listdir(directory)):
        m = pattern.match(name)
        path = os.path.join(directory, name)
        if m and os.path.isfile(path):
          out.append((path, os.path.relpath(path, workdir), m))
  return out


def find_evals(workdir: str) -> list[dict]:
  """Every evaluation JSON of the workdir (<workdir>/eval/<split>_<step>.json;
  from older runs also <workdir>/eval_<split>_<step>.json), EMA results
  excluded, sorted by (step, split): dicts with 'path', 'file' (relative to
  the workdir), 'split' (from the JSON), 'step' and 'result' (the parsed
  JSON). Unreadable files raise ReportError naming the file."""
  evals = []
  for path, rel, m in _eval_files(workdir):
    try:
      with open(path) as f:
        result = json.load(f)
    except (OSError, ValueError) as e:
      raise ReportError(f'{path}: not a readable evaluation JSON ({e})') from None
    if not isinstance(result, dict) or 'IoU' not in result:
      raise ReportError(f"{path}: evaluation JSON without per-class 'IoU'")
    evals.append({'path': path, 'file': rel, 'split': str(result.get('split', m.group(1))),
                  'step': int(result.get('step', m.group(2))), 'result': result})
  evals.sort(key=lambda e: (e['step'], e['split']))
  return evals


def pick_eval(evals: list[dict], split: Optional[str]) -> Optional[dict]:
  """The evaluation the report details: the latest step of `split` if any
  (with split None, the config's val split is passed by the caller), else the
  latest evaluation of any split."""
  same = [e for e in evals if split is not None and e['split'] == split]
  pool = same or evals
  return pool[-1] if pool else None


def find_panels(workdir: str) -> list[tuple[str, int, str]]:
  """(name, step, path) of the latest <workdir>/images/<name>_<step>.png of
  each image name (MetricWriter.write_image)."""
  directory = os.path.join(workdir, 'images')
  latest: dict[str, tuple[int, str]] = {}
  if os.path.isdir(directory):
    for fname in os.listdir(directory):
      m = _IMAGE_RE.match(fname)
      if m:
        step = int(m.group(2))
        if m.group(1) not in latest or step > latest[m.group(1)][0]:
          latest[m.group(1)] = (step, os.path.join(directory, fname))
  return [(name, step, path) for name, (step, path) in sorted(latest.items())]


def checkpoint_steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory)
                if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


# ----------------------------------------------------------------------------
# Markdown pieces.


def pct(x: Any) -> str:
  """A metric in [0, 1] as a percentage with 2 decimals; NaN/None -> 'n/a'."""
  v = _as_float(x)
  return NAN_TEXT if math.isnan(v) else f'{100 * v:.2f}'


def _cell(text: Any) -> str:
  return str(text).replace('|', '\\|').replace('\n', ' ')


def md_table(header: list[str], rows: list[list[str]], numeric: bool = True) -> list[str]:
  """A Markdown table; with `numeric`, columns after the first are right-aligned."""
  lines = ['| ' + ' | '.join(_cell(h) for h in header) + ' |',
           '|' + '|'.join('---' if i == 0 or not numeric else '---:'
                          for i in range(len(header))) + '|']
  lines += ['| ' + ' | '.join(_cell(c) for c in row) + ' |' for row in rows]
  return lines


def _get(cfg: dict, dotted: str, default: Any = None) -> Any:
  node = cfg
  for part in dotted.split('.'):
    if not isinstance(node, dict) or part not in node:
      return default
    node = node[part]
  return node


def _dataset_text(cfg: dict) -> str:
  name = _get(cfg, 'data.name', '?')
  if name == 'tfds':
    where = f"{_get(cfg, 'data.tfds_name', '?')}" + (
        f" (data_dir {_get(cfg, 'data.root')})" if _get(cfg, 'data.root') else '')
  elif name == 'folder':
    where = str(_get(cfg, 'data.root', '?'))
  else:
    where = ''
  return f'{name}: {where}' if where else str(name)


def _header_rows(cfg: dict, series: dict, rows: list[dict], workdir: str) -> list[list[str]]:
  train_steps = [s for k, (steps, _) in series.items() if k.startswith('train/') for s in steps]
  done = max(train_steps) if train_steps else 0
  total = _get(cfg, 'total_steps', '?')
  seconds = sum(_as_float(r['time/train_seconds']) for r in rows if 'time/train_seconds' in r)
  crop = _get(cfg, 'data.crop_size', ())
  out = [
      ['model', f"{_get(cfg, 'model.name', '?')} (backbone {_get(cfg, 'model.backbone', '?')}, "
                f"output stride {_get(cfg, 'model.output_stride', '?')}, width x"
                f"{_get(cfg, 'model.width_multiplier', '?')}, {_get(cfg, 'model.dtype', '?')})"],
      ['pretrained', str(_get(cfg, 'model.pretrained', '') or 'none (random init)')],
      ['dataset', f"{_dataset_text(cfg)}; {_get(cfg, 'data.num_classes', '?')} classes; "
                  f"train split {_get(cfg, 'data.train_split', '?')}, val split "
                  f"{_get(cfg, 'data.val_split', '?')}; crop "
                  f"{'x'.join(str(v) for v in crop) if crop else '?'}"],
      ['steps', f'{done} of {total} (batch {_get(cfg, "batch_size", "?")})'],
      ['optimizer', f"{_get(cfg, 'optimizer.name', '?')}, lr {_get(cfg, 'optimizer.lr', '?')}, "
                    f"weight decay {_get(cfg, 'optimizer.weight_decay', '?')}; schedule "
                    f"{_get(cfg, 'schedule.name', '?')} (warmup "
                    f"{_get(cfg, 'schedule.warmup_steps', '?')})"],
      ['loss', f"{_get(cfg, 'loss.name', '?')}"],
  ]
  if seconds > 0:
    out.append(['training time', f'{seconds:.1f} s (all sessions)'])
  ckpts = checkpoint_steps(workdir)
  out.append(['checkpoints', ', '.join(str(s) for s in ckpts) if ckpts else 'none'])
  out.append(['workdir', os.path.abspath(workdir)])
  return out


def _class_spec(cfg: dict, names: list[str]):
  """A LabelSpec for swatches: the config's palette if it fits, else the default."""
  palette = _get(cfg, 'data.palette') or ()
  try:
    return labels_lib.LabelSpec(num_classes=len(names), ignore_label=max(255, len(names)),
                                palette=tuple(tuple(int(v) for v in c) for c in palette))
  except (ValueError, TypeError):
    return labels_lib.LabelSpec(num_classes=len(names), ignore_label=max(255, len(names)))


def class_table_rows(result: dict) -> list[list[str]]:
  """Per-class rows [name, IoU %, Acc %, Dice %, GT pixels, predicted pixels]
  (plain text) of an evaluation result, then a 'mean' row."""
  names = list(result['IoU'])
  cm = result.get('confusion_matrix')
  cm = np.asarray(cm, np.int64) if cm is not None else None
  rows = []
  for i, name in enumerate(names):
    gt = f'{int(cm[i].sum()):,}' if cm is not None else ''
    pred = f'{int(cm[:, i].sum()):,}' if cm is not None else ''
    rows.append([name, pct(result['IoU'][name]), pct(result.get('Acc', {}).get(name)),
                 pct(result.get('Dice', {}).get(name)), gt, pred])
  rows.append(['mean', pct(result.get('mIoU')), pct(result.get('mAcc')), pct(result.get('mDice')),
               f'{int(cm.sum()):,}' if cm is not None else '', ''])
  return rows


def curve_panels(series: dict) -> list[tuple[str, dict, bool]]:
  """The report's curves: loss (train and val), learning rate (log scale),
  validation mIoU and aAcc."""
  panels = [('loss (per pixel)', {k: series[k] for k in ('train/loss', 'val/loss')
                                  if k in series}, False)]
  if 'train/lr' in series:
    panels.append(('learning rate', {'train/lr': series['train/lr']}, True))
  panels.append(('validation mIoU and aAcc (fraction)',
                 {k: series[k] for k in ('val/mIoU', 'val/aAcc') if k in series}, False))
  return panels


def build_report(workdir: str, out_dir: str, *, split: Optional[str] = None) -> str:
  """Writes the figures into out_dir and returns the Markdown text."""
  if not os.path.isdir(workdir):
    raise ReportError(f'workdir {workdir} does not exist')
  config_path = os.path.join(workdir, 'config.json')
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(config_path) and not os.path.exists(metrics_path):
    raise ReportError(f'{workdir} holds neither config.json nor metrics.jsonl; is it a '
                      'segjax workdir?')
  cfg: dict = {}
  problems: list[str] = []
  if os.path.exists(config_path):
    try:
      with open(config_path) as f:
        cfg = json.load(f)
    except ValueError as e:
      problems.append(f'{config_path}: unreadable ({e})')
  else:
    problems.append(f'{config_path} is missing; the run header is incomplete')
  series, rows, bad_lines = read_metrics(metrics_path)
  problems += bad_lines
  evals = find_evals(workdir)
  chosen = pick_eval(evals, split if split is not None else _get(cfg, 'data.val_split'))
  os.makedirs(out_dir, exist_ok=True)
  title = f'segjax run: {os.path.basename(os.path.abspath(workdir))}'
  out = [f'# {title}', '',
         f'Generated {datetime.datetime.now().isoformat(timespec="seconds")} by segjax report '
         'from the files in the workdir.', '']
  if chosen is not None:
    r = chosen['result']
    out += [f'**{chosen["split"]} @ step {chosen["step"]}**: mIoU {pct(r.get("mIoU"))}, '
            f'aAcc {pct(r.get("aAcc"))}, mAcc {pct(r.get("mAcc"))}, fwIoU {pct(r.get("fwIoU"))}, '
            f'mDice {pct(r.get("mDice"))} (%) on {r.get("num_examples", "?")} images.', '']
  out += ['## Run', ''] + md_table(['', ''], _header_rows(cfg, series, rows, workdir), numeric=False) + ['']
  if problems:
    out += [f'- problem: {p}' for p in problems] + ['']

  out += ['## Training curves', '']
  if not series:
    out += [f'No metrics logged yet ({metrics_path} is missing or empty).', '']
  else:
    panels = curve_panels(series)
    figures.save_png(figures.curves_figure(panels), os.path.join(out_dir, 'curves.png'))
    out += ['![training curves](curves.png)', '']
    if not panels[-1][1]:
      out += ['No validation metrics logged yet.', '']

  out += ['## Evaluation', '']
  if chosen is None:
    out += [f'No evaluation yet: no eval/<split>_<step>.json in {os.path.abspath(workdir)}.', '']
  else:
    summary = [[e['split'], str(e['step']), pct(e['result'].get('aAcc')),
                pct(e['result'].get('mAcc')), pct(e['result'].get('mIoU')),
                pct(e['result'].get('fwIoU')), pct(e['result'].get('mDice')),
                f"{_as_float(e['result'].get('loss')):.4f}",
                str(e['result'].get('num_examples', '?'))] for e in evals]
    out += ['Every evaluation in the workdir (%, loss in nats per pixel):', '']
    out += md_table(['split', 'step', 'aAcc', 'mAcc', 'mIoU', 'fwIoU', 'mDice', 'loss',
                     'images'], summary) + ['']
    r = chosen['result']
    names = list(r['IoU'])
    colors = _class_spec(cfg, names).colors
    table_rows = class_table_rows(r)
    for i, row in enumerate(table_rows[:-1]):
      row.insert(1, '#{:02x}{:02x}{:02x}'.format(*(int(v) for v in colors[i])))
    table_rows[-1].insert(1, '')
    table_rows[-1][0] = '**mean**'
    out += [f'### Per class: {chosen["split"]} @ step {chosen["step"]} ({chosen["file"]})', '']
    out += md_table(['class', 'colour', 'IoU %', 'Acc %', 'Dice %', 'GT pixels',
                     'predicted pixels'], table_rows) + ['']
    out += [f'{NAN_CONVENTION} Acc is per-class recall; GT / predicted pixels are the '
            'confusion-matrix row / column sums.', '']
    cm = r.get('confusion_matrix')
    if cm is not None:
      figures.save_png(figures.confusion_figure(
          np.asarray(cm, np.int64), names, title=f'{chosen["split"]} @ step {chosen["step"]}'),
          os.path.join(out_dir, 'confusion.png'))
      out += ['![confusion matrix](confusion.png)', '',
              'Confusion matrix of the same evaluation, each row (ground-truth class) divided '
              'by its pixel count: a cell is the % of that class predicted as the column '
              'class; the diagonal is the per-class Acc. Grey rows: no ground-truth pixels.', '']
    else:
      out += ['The evaluation JSON has no confusion_matrix.', '']

  out += ['## Predictions', '']
  panels = find_panels(workdir)
  if chosen is not None:
    eval_panel = os.path.join(workdir, os.path.splitext(chosen['file'])[0], 'panel.png')
    if os.path.exists(eval_panel):
      panels.append((f'{chosen["split"]} (eval)', chosen['step'], eval_panel))
  if not panels:
    out += ['No prediction panels yet (images/ is empty).', '']
  for name, step, path in panels:
    copy = re.sub(r'[^A-Za-z0-9_.-]+', '_', f'panel_{name}_{step:08d}.png')
    shutil.copyfile(path, os.path.join(out_dir, copy))
    out += [f'![{name}]({copy})', '',
            f'{name} at step {step} ({os.path.relpath(path, workdir)}): each row is image | '
            'ground truth | prediction [| predictive entropy, black = certain]; ignored '
            'pixels in the legend\'s "ignored" colour.', '']
  return '\n'.join(out).rstrip('\n') + '\n'


def write_report(workdir: str, *, out: Optional[str] = None,
                 split: Optional[str] = None) -> str:
  """Writes <workdir>/report/ (or the folder `out`): report.md and its PNG
  figures; returns the path of report.md.

  Args:
    workdir: a training workdir (config.json, metrics.jsonl, eval/, images/).
    out: the report folder (default <workdir>/report).
    split: the split whose latest evaluation gets the per-class table and
      confusion matrix (default: the config's data.val_split, falling back to
      the latest evaluation of any split).

  Raises:
    ReportError: workdir missing, not a segjax workdir, or an unreadable
      evaluation JSON (named).
  """
  out_dir = out or os.path.join(workdir, REPORT_DIR)
  text = build_report(workdir, out_dir, split=split)
  path = os.path.join(out_dir, REPORT_NAME)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  flags.DEFINE_string('workdir', None, 'The run directory.', required=True, flag_values=fv)
  flags.DEFINE_string('out', None, 'Report folder (default <workdir>/report).',
                      flag_values=fv)
  flags.DEFINE_string('split', None, "Split detailed in the per-class table (default the "
                      "config's data.val_split).", flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  del argv
  path = write_report(os.path.expanduser(fv.workdir), out=fv.out, split=fv.split)
  print(f'Wrote {path}')
  return 0


if __name__ == '__main__':
  cli.run(main, define_flags)
