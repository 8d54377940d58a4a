r"""A self-contained HTML report of a run, built from its workdir alone.

  segjax report --workdir=runs/deeplabv3plus    # -> runs/deeplabv3plus/report.html

`write_report(workdir)` reads what training and evaluation leave in the
workdir: `config.json` (the run header), `metrics.jsonl` (loss, learning-rate
and validation curves), the `eval_<split>_<step>.json` files (a summary of
every evaluation, and the per-class table and confusion-matrix heatmap of the
latest one) and the prediction panels in `images/` (and, from `segjax evaluate`,
`eval_<split>_<step>/panel.png`). Charts are inline SVG and images are
embedded as base64 PNG, so the one HTML file can be copied anywhere; no
JavaScript, no external CSS. Nothing needs jax or a checkpoint.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os
import re
from typing import Any, Optional

from absl import flags
import numpy as np
from PIL import Image

from segjax import cli
from segjax import plots
from segjax.data import labels as labels_lib

REPORT_NAME = 'report.html'
_EVAL_RE = re.compile(r'^eval_(.+)_(\d+)\.json$')
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
        if key != 'step':
          series.setdefault(key, {})[step] = _as_float(value)
  out = {}
  for key, by_step in series.items():
    steps = sorted(by_step)
    out[key] = (steps, [by_step[s] for s in steps])
  return out, rows, problems


def find_evals(workdir: str) -> list[dict]:
  """Every eval_<split>_<step>.json in workdir, sorted by (step, split): dicts
  with 'path', 'file', 'split' (from the JSON), 'step' and 'result' (the
  parsed JSON). Unreadable files raise ReportError naming the file."""
  evals = []
  for name in sorted(os.listdir(workdir)):
    m = _EVAL_RE.match(name)
    path = os.path.join(workdir, name)
    if not m or not os.path.isfile(path):
      continue
    try:
      with open(path) as f:
        result = json.load(f)
    except (OSError, ValueError) as e:
      raise ReportError(f'{path}: not a readable evaluation JSON ({e})') from None
    if not isinstance(result, dict) or 'IoU' not in result:
      raise ReportError(f"{path}: evaluation JSON without per-class 'IoU'")
    evals.append({'path': path, 'file': name, 'split': str(result.get('split', m.group(1))),
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
# HTML pieces.


def pct(x: Any) -> str:
  """A metric in [0, 1] as a percentage with 2 decimals; NaN/None -> 'n/a'."""
  v = _as_float(x)
  return NAN_TEXT if math.isnan(v) else f'{100 * v:.2f}'


def _png_data_uri(image: np.ndarray | Image.Image) -> str:
  buf = io.BytesIO()
  img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
  img.save(buf, format='PNG', optimize=True)
  return 'data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode('ascii')


def _table(header: Optional[list[str]], rows: list[list[str]], cls: str = '',
           raw_cols=()) -> str:
  """Cells are escaped except columns in raw_cols (already HTML)."""
  esc = html.escape
  out = [f'<table class="{cls}">' if cls else '<table>']
  if header:
    out.append('<thead><tr>' + ''.join(f'<th>{esc(h)}</th>' for h in header) + '</tr></thead>')
  out.append('<tbody>')
  for row in rows:
    out.append('<tr>' + ''.join(
        f'<td>{c if i in raw_cols else esc(c)}</td>' for i, c in enumerate(row)) + '</tr>')
  out.append('</tbody></table>')
  return '\n'.join(out)


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


_CSS = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; }
table.num td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
table.header td:first-child { font-weight: bold; background: #fafafa; }
.swatch { display: inline-block; width: 11px; height: 11px; border: 1px solid #888;
          margin-right: 6px; vertical-align: -1px; }
.note { color: #555; font-size: 12px; max-width: 900px; }
.missing { color: #a33; }
figure { margin: 10px 0; } figcaption { font-size: 12px; color: #555; }
img.pixel { image-rendering: pixelated; }
"""


def build_report(workdir: str, *, split: Optional[str] = None) -> str:
  """The report's HTML text (see write_report)."""
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
  chosen_split = split if split is not None else _get(cfg, 'data.val_split')
  chosen = pick_eval(evals, chosen_split)
  esc = html.escape
  title = f'segjax run: {os.path.basename(os.path.abspath(workdir))}'

  out = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
         f'<title>{esc(title)}</title>', f'<style>{_CSS}</style>', '</head><body>',
         f'<h1>{esc(title)}</h1>',
         f'<p class="note">Generated {datetime.datetime.now().isoformat(timespec="seconds")} '
         'by segjax.tools.report from the files in the workdir.</p>']
  if chosen is not None:
    r = chosen['result']
    out.append(f'<p><b>{esc(chosen["split"])} @ step {chosen["step"]}</b>: '
               f'mIoU {pct(r.get("mIoU"))}, aAcc {pct(r.get("aAcc"))}, mAcc {pct(r.get("mAcc"))}, '
               f'fwIoU {pct(r.get("fwIoU"))}, mDice {pct(r.get("mDice"))} (%) on '
               f'{r.get("num_examples", "?")} images.</p>')
  out.append('<h2>Run</h2>')
  out.append(_table(None, _header_rows(cfg, series, rows, workdir), cls='header'))
  if problems:
    out.append('<ul class="missing">' + ''.join(f'<li>{esc(p)}</li>' for p in problems) +
               '</ul>')

  # Curves.
  out.append('<h2>Training curves</h2>')
  if not series:
    out.append(f'<p class="missing">No metrics logged yet ({esc(metrics_path)} is missing or '
               'empty).</p>')
  else:
    loss = {k: series[k] for k in ('train/loss', 'val/loss') if k in series}
    out.append(plots.line_chart_svg(loss, title='loss', y_label='loss (per pixel)'))
    if 'train/lr' in series:
      out.append(plots.line_chart_svg({'train/lr': series['train/lr']}, title='learning rate',
                                      y_label='learning rate'))
    val = {k: series[k] for k in ('val/mIoU', 'val/aAcc') if k in series}
    if val:
      out.append(plots.line_chart_svg(val, title='validation mIoU and aAcc', y_label='fraction'))
    else:
      out.append('<p class="missing">No validation metrics logged yet.</p>')

  # Evaluations.
  out.append('<h2>Evaluation</h2>')
  if chosen is None:
    out.append('<p class="missing">No evaluation yet: no eval_&lt;split&gt;_&lt;step&gt;.json in '
               f'{esc(os.path.abspath(workdir))}.</p>')
  else:
    summary = [[e['split'], str(e['step']), pct(e['result'].get('aAcc')),
                pct(e['result'].get('mAcc')), pct(e['result'].get('mIoU')),
                pct(e['result'].get('fwIoU')), pct(e['result'].get('mDice')),
                f"{_as_float(e['result'].get('loss')):.4f}",
                str(e['result'].get('num_examples', '?'))] for e in evals]
    out.append('<p>Every evaluation in the workdir (%, loss in nats per pixel):</p>')
    out.append(_table(['split', 'step', 'aAcc', 'mAcc', 'mIoU', 'fwIoU', 'mDice', 'loss',
                       'images'], summary, cls='num evals'))
    r = chosen['result']
    names = list(r['IoU'])
    spec = _class_spec(cfg, names)
    colors = spec.colors
    table_rows = class_table_rows(r)
    for i, row in enumerate(table_rows[:-1]):
      c = colors[i]
      row[0] = (f'<span class="swatch" style="background:rgb({c[0]},{c[1]},{c[2]})"></span>'
                f'{esc(row[0])}')
    table_rows[-1][0] = '<b>mean</b>'
    out.append(f'<h3 id="per-class">Per class: {esc(chosen["split"])} @ step {chosen["step"]} '
               f'({esc(chosen["file"])})</h3>')
    out.append(_table(['class', 'IoU %', 'Acc %', 'Dice %', 'GT pixels', 'predicted pixels'],
                      table_rows, cls='num per-class', raw_cols=(0,)))
    out.append(f'<p class="note">{esc(NAN_CONVENTION)} Acc is per-class recall; GT / '
               'predicted pixels are the confusion-matrix row / column sums.</p>')
    cm = r.get('confusion_matrix')
    if cm is not None:
      heat = plots.confusion_heatmap(np.asarray(cm, np.int64), names, normalize='true')
      out.append('<figure><img class="pixel heatmap" alt="confusion matrix" '
                 f'width="{heat.shape[1]}" height="{heat.shape[0]}" src="{_png_data_uri(heat)}">'
                 '<figcaption>Confusion matrix of the same evaluation, each row (ground-truth '
                 'class) divided by its pixel count: a cell is the % of that class predicted as '
                 'the column class; the diagonal is the per-class Acc. Grey rows: no '
                 'ground-truth pixels.</figcaption></figure>')
    else:
      out.append('<p class="missing">The evaluation JSON has no confusion_matrix.</p>')

  # Prediction panels.
  out.append('<h2>Predictions</h2>')
  panels = find_panels(workdir)
  if chosen is not None:
    eval_panel = os.path.join(workdir, os.path.splitext(chosen['file'])[0], 'panel.png')
    if os.path.exists(eval_panel):
      panels.append((f'{chosen["split"]} (eval)', chosen['step'], eval_panel))
  if not panels:
    out.append('<p class="missing">No prediction panels yet (images/ is empty).</p>')
  for name, step, path in panels:
    with Image.open(path) as im:
      im.load()
      uri, (w, h) = _png_data_uri(im.convert('RGB')), im.size
    scale = 2 if w < 400 else 1
    out.append(f'<figure><img class="pixel panel" alt="{esc(name)}" width="{w * scale}" '
               f'height="{h * scale}" src="{uri}"><figcaption>{esc(name)} at step {step} '
               f'({esc(os.path.relpath(path, workdir))}): each row is image | ground truth '
               '(ignored pixels black) | prediction [| predictive entropy, black = certain]'
               '.</figcaption></figure>')
  out.append('</body></html>')
  return '\n'.join(out) + '\n'


def write_report(workdir: str, *, out: Optional[str] = None,
                 split: Optional[str] = None) -> str:
  """Writes <workdir>/report.html (or `out`) and returns its path.

  Args:
    workdir: a training workdir (config.json, metrics.jsonl, eval_*.json, images/).
    out: where to write the HTML (default <workdir>/report.html).
    split: the split whose latest evaluation gets the per-class table and
      heatmap (default: the config's data.val_split, falling back to the
      latest evaluation of any split).

  Raises:
    ReportError: workdir missing, not a segjax workdir, or an unreadable
      evaluation JSON (named).
  """
  path = out or os.path.join(workdir, REPORT_NAME)
  text = build_report(workdir, split=split)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  flags.DEFINE_string('workdir', None, 'The run directory.', required=True, flag_values=fv)
  flags.DEFINE_string('out', None, 'Output HTML (default <workdir>/report.html).',
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
