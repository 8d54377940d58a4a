"""segjax.tools.report: the Markdown + PNG report of a workdir.

The workdir is written by the real writers (MetricWriter, evaluate.write_result,
figures) from hand-made numbers, so every expected table cell comes from a
hand-worked confusion matrix; test_writers.py builds a report of a real run.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segjax import evaluate
from segjax import figures
from segjax import metrics as metrics_lib
from segjax.tools import report
from segjax import writers
from segjax.data import labels as labels_lib

ROOT = Path(__file__).resolve().parents[1]
NAMES = ['class_0', 'class_1', 'class_2', 'class_3']
CM_2 = np.array([[40, 5, 5, 0], [10, 30, 0, 0], [0, 0, 20, 0], [0, 0, 0, 10]])
# Class 3 appears nowhere (NaN IoU/Acc/Dice); class 2 is predicted but absent (NaN Acc, IoU 0).
CM_4 = np.array([[50, 2, 3, 0], [1, 40, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
CONFIG = {'model': {'name': 'deeplabv3plus', 'backbone': 'mobilenetv2', 'output_stride': 16,
                    'width_multiplier': 0.35, 'dtype': 'float32', 'pretrained': ''},
          'data': {'name': 'synthetic', 'num_classes': 4, 'train_split': 'train',
                   'val_split': 'val', 'crop_size': [32, 32]},
          'total_steps': 4, 'batch_size': 8,
          'optimizer': {'name': 'adamw', 'lr': 0.001, 'weight_decay': 0.0001},
          'schedule': {'name': 'constant', 'warmup_steps': 0}, 'loss': {'name': 'ce'}}


def _result(cm):
  result = metrics_lib.compute_metrics(cm, NAMES)
  result.update(loss=0.5, num_examples=8, confusion_matrix=cm.tolist())
  return result


@pytest.fixture
def workdir(tmp_path):
  w = tmp_path / 'run'
  w.mkdir()
  (w / 'config.json').write_text(json.dumps(CONFIG))
  writer = writers.MetricWriter(str(w), enabled=True)
  for step in (1, 2, 3, 4):
    writer.write_scalars(step, {'loss': 2.0 / step, 'lr': 1e-3}, prefix='train/')
  for step, cm in ((2, CM_2), (4, CM_4)):
    result = _result(cm)
    writer.write_scalars(step, evaluate.scalar_metrics(result), prefix='val/')
    evaluate.write_result(str(w), 'val', step, result)
  writer.write_scalars(4, {'train_seconds': 12.5}, prefix='time/')
  spec = labels_lib.LabelSpec(num_classes=4)
  labels = np.tile(np.arange(4).repeat(8)[None], (2, 32, 1))
  writer.write_figure(4, 'val_predictions', figures.prediction_figure(
      np.zeros((2, 32, 32, 3), np.uint8), labels, labels, class_colors=spec.colors[:-1],
      class_names=NAMES))
  writer.close()
  for step in (2, 4):
    (w / 'checkpoints' / str(step)).mkdir(parents=True)
  return w


def md_tables(text: str) -> list[list[list[str]]]:
  """Markdown tables as lists of rows of cells (the separator row dropped)."""
  tables, current = [], None
  for line in text.splitlines():
    if line.startswith('|'):
      cells = [c.strip() for c in line.strip().strip('|').split('|')]
      if current is None:
        current = []
        tables.append(current)
      if not all(re.fullmatch(r':?-+:?', c) for c in cells):
        current.append(cells)
    else:
      current = None
  return tables


def _table(text, first_header):
  return next(t for t in md_tables(text) if t[0][0] == first_header)


def test_report_folder_header_and_figures(workdir):
  path = report.write_report(str(workdir))
  assert path == os.path.join(str(workdir), 'report', 'report.md')
  text = Path(path).read_text()
  header = {r[0]: r[1] for r in md_tables(text)[0][1:]}
  assert header['model'].startswith('deeplabv3plus (backbone mobilenetv2, output stride 16')
  assert header['dataset'].startswith('synthetic; 4 classes')
  assert header['steps'] == '4 of 4 (batch 8)'
  assert header['checkpoints'] == '2, 4'
  assert header['training time'] == '12.5 s (all sessions)'
  # Every image the Markdown links is a PNG inside the report folder.
  links = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', text)
  assert 'curves.png' in links and 'confusion.png' in links
  assert any(l.startswith('panel_val_predictions_00000004') for l in links)
  for link in links:
    with Image.open(workdir / 'report' / link) as im:
      assert im.format == 'PNG' and min(im.size) > 100
  assert not (workdir / 'report.html').exists()


def test_per_class_table_matches_the_hand_worked_matrix(workdir):
  text = Path(report.write_report(str(workdir))).read_text()
  rows = _table(text, 'class')
  assert rows[0] == ['class', 'colour', 'IoU %', 'Acc %', 'Dice %', 'GT pixels',
                     'predicted pixels']
  by_name = {r[0]: r for r in rows[1:]}
  # Latest val evaluation (step 4), worked by hand from CM_4.
  assert by_name['class_0'][2:] == [f'{100 * 50 / (55 + 51 - 50):.2f}', f'{100 * 50 / 55:.2f}',
                                    f'{100 * 100 / (55 + 51):.2f}', '55', '51']
  assert by_name['class_2'][2:5] == ['0.00', 'n/a', '0.00']
  assert by_name['class_3'][2:5] == ['n/a', 'n/a', 'n/a']
  assert by_name['class_0'][1] == '#000000' and by_name['class_1'][1] == '#800000'
  iou = [50 / 56, 40 / 43, 0.0]
  assert by_name['**mean**'][2] == f'{100 * np.mean(iou):.2f}'
  assert 'Acc of a class with no ground-truth pixels' in text
  summary = _table(text, 'split')
  assert [(r[0], r[1]) for r in summary[1:]] == [('val', '2'), ('val', '4')]
  assert summary[1][4] == f'{100 * _result(CM_2)["mIoU"]:.2f}'


def test_curves_figure_has_one_point_per_logged_step(workdir):
  series, _, _ = report.read_metrics(str(workdir / 'metrics.jsonl'))
  assert 'wall_time' not in series
  fig = figures.curves_figure(report.curve_panels(series))
  loss_ax = fig.axes[0]
  lines = {l.get_label(): l for l in loss_ax.get_lines()}
  np.testing.assert_array_equal(lines['train/loss'].get_xdata(), [1, 2, 3, 4])
  np.testing.assert_allclose(lines['train/loss'].get_ydata(), [2.0, 1.0, 2 / 3, 0.5])
  np.testing.assert_array_equal(lines['val/loss'].get_xdata(), [2, 4])
  assert fig.axes[1].get_yscale() == 'log'
  val = {l.get_label(): l for l in fig.axes[2].get_lines()}
  np.testing.assert_allclose(val['val/mIoU'].get_ydata(),
                             [_result(CM_2)['mIoU'], _result(CM_4)['mIoU']])


def test_workdir_without_eval_says_so(workdir, tmp_path):
  early = tmp_path / 'early'
  early.mkdir()
  (early / 'config.json').write_text(json.dumps(CONFIG))
  rows = [l for l in (workdir / 'metrics.jsonl').read_text().splitlines()
          if 'train/loss' in json.loads(l)][:3]
  (early / 'metrics.jsonl').write_text('\n'.join(rows) + '\n')
  text = ' '.join(Path(report.write_report(str(early))).read_text().split())
  assert 'No evaluation yet' in text
  assert 'No validation metrics logged yet' in text
  assert 'No prediction panels yet' in text
  assert 'confusion.png' not in text


def test_resumed_and_truncated_metrics(tmp_path):
  """A resumed run logs steps again (the later line wins); a partial last line
  is skipped and reported; NaN is not drawn and the legend says so."""
  path = tmp_path / 'metrics.jsonl'
  path.write_text('\n'.join([
      json.dumps({'step': 1, 'train/loss': 2.0}),
      json.dumps({'step': 2, 'train/loss': 1.5}),
      json.dumps({'step': 2, 'train/loss': 1.4}),
      json.dumps({'step': 3, 'train/loss': 'nan'}),
      '{"step": 4, "train/lo',
  ]) + '\n')
  series, rows, problems = report.read_metrics(str(path))
  steps, values = series['train/loss']
  assert steps == [1, 2, 3]
  assert values[:2] == [2.0, 1.4] and math.isnan(values[2])
  assert len(rows) == 4
  assert len(problems) == 1 and 'metrics.jsonl:5' in problems[0]
  fig = figures.curves_figure([('loss', {'train/loss': series['train/loss']}, False)])
  (line,) = fig.axes[0].get_lines()
  assert len(line.get_xdata()) == 2 and line.get_label() == 'train/loss (1 omitted)'


def test_older_runs_with_eval_files_in_the_workdir_root(workdir):
  """Runs from before eval/ (eval_<split>_<step>.json next to metrics.jsonl)."""
  os.rename(workdir / 'eval' / 'val_00000004.json', workdir / 'eval_val_00000004.json')
  evals = report.find_evals(str(workdir))
  assert [(e['file'], e['step']) for e in evals] == [
      (os.path.join('eval', 'val_00000002.json'), 2), ('eval_val_00000004.json', 4)]


def test_cli(workdir, tmp_path):
  out = tmp_path / 'r'
  proc = subprocess.run([sys.executable, '-m', 'segjax.tools.report', f'--workdir={workdir}',
                         f'--out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == f'Wrote {out / "report.md"}'
  assert (out / 'curves.png').is_file()
  missing = tmp_path / 'nope'
  proc = subprocess.run([sys.executable, '-m', 'segjax.tools.report', f'--workdir={missing}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert str(missing) in proc.stderr and 'does not exist' in proc.stderr


def test_not_a_workdir_and_bad_eval_json(tmp_path):
  with pytest.raises(report.ReportError, match='neither config.json nor metrics.jsonl'):
    report.write_report(str(tmp_path))
  (tmp_path / 'metrics.jsonl').write_text(json.dumps({'step': 1, 'train/loss': 1.0}) + '\n')
  (tmp_path / 'eval').mkdir()
  (tmp_path / 'eval' / 'val_00000002.json').write_text('{"split": "val", ')
  with pytest.raises(report.ReportError, match='val_00000002.json'):
    report.write_report(str(tmp_path))
