"""segjax.tools.report (HTML run report) and segjax.plots (SVG charts, confusion heatmap)."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segjax import evaluate
from segjax import metrics as metrics_lib
from segjax import plots
from segjax.tools import report
from segjax import train
from tests.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------
# Helpers.


class _Parsed(html.parser.HTMLParser):
  """Collects polylines, images, tables (as lists of cell texts) and all text."""

  def __init__(self):
    super().__init__()
    self.polylines: dict[str, list[tuple[float, float]]] = {}
    self.images: list[dict] = []
    self.tables: list[dict] = []
    self.tags: set[str] = set()
    self.text: list[str] = []
    self._table = None
    self._cell = None

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    self.tags.add(tag)
    if tag == 'polyline':
      pts = [tuple(float(v) for v in p.split(',')) for p in a['points'].split()]
      self.polylines[a['data-series']] = pts
    elif tag == 'img':
      self.images.append(a)
    elif tag == 'table':
      self._table = {'class': a.get('class', ''), 'rows': []}
      self.tables.append(self._table)
    elif tag == 'tr' and self._table is not None:
      self._table['rows'].append([])
    elif tag in ('td', 'th') and self._table is not None:
      self._cell = []

  def handle_endtag(self, tag):
    if tag in ('td', 'th') and self._cell is not None:
      self._table['rows'][-1].append(''.join(self._cell).strip())
      self._cell = None
    elif tag == 'table':
      self._table = None

  def handle_data(self, data):
    self.text.append(data)
    if self._cell is not None:
      self._cell.append(data)


def parse(path) -> _Parsed:
  p = _Parsed()
  p.feed(Path(path).read_text(encoding='utf-8'))
  return p


def table(parsed: _Parsed, cls: str) -> list[list[str]]:
  matches = [t for t in parsed.tables if cls in t['class'].split()]
  assert len(matches) == 1, [t['class'] for t in parsed.tables]
  return matches[0]['rows']


def decode_img(attrs: dict) -> np.ndarray:
  prefix = 'data:image/png;base64,'
  assert attrs['src'].startswith(prefix)
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(attrs['src'][len(prefix):]))))


def luminance(rgb) -> float:
  r, g, b = (float(v) for v in rgb)
  return 0.2126 * r + 0.7152 * g + 0.0722 * b


def cell_pixel(img: np.ndarray, lay: plots.HeatmapLayout, i: int, j: int) -> np.ndarray:
  """A pixel 2 px inside the top-left corner of cell (i, j), away from its text."""
  return img[lay.grid_y + i * lay.cell + 2, lay.grid_x + j * lay.cell + 2]


def logged_steps(workdir, key) -> list[int]:
  steps = set()
  for line in Path(workdir, 'metrics.jsonl').read_text().splitlines():
    row = json.loads(line)
    if key in row:
      steps.add(row['step'])
  return sorted(steps)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A 4-step run: train/* logged every step, val evaluated at steps 2 and 4."""
  workdir = tmp_path_factory.mktemp('report') / 'run'
  train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir


@pytest.fixture(scope='module')
def report_path(run_dir):
  return report.write_report(str(run_dir))


# ----------------------------------------------------------------------------
# The report of a real run.


def test_report_is_self_contained_with_header(run_dir, report_path):
  assert report_path == os.path.join(str(run_dir), 'report.html')
  text = Path(report_path).read_text(encoding='utf-8')
  parsed = parse(report_path)
  assert 'script' not in parsed.tags and 'link' not in parsed.tags
  assert 'http://' not in text.replace('http://www.w3.org/2000/svg', '')
  assert 'https://' not in text
  assert all(a['src'].startswith('data:image/png;base64,') for a in parsed.images)
  header = {row[0]: row[1] for row in table(parsed, 'header')}
  assert header['model'].startswith('deeplabv3plus (backbone mobilenetv2, output stride 16')
  assert header['dataset'].startswith('synthetic; 4 classes')
  assert header['steps'] == '4 of 4 (batch 8)'
  assert header['checkpoints'] == '2, 4'


def test_curves_have_one_point_per_logged_step(run_dir, report_path):
  parsed = parse(report_path)
  rows = [json.loads(l) for l in Path(run_dir, 'metrics.jsonl').read_text().splitlines()]
  for key, expected_steps in (('train/loss', [1, 2, 3, 4]), ('train/lr', [1, 2, 3, 4]),
                              ('val/mIoU', [2, 4]), ('val/aAcc', [2, 4]), ('val/loss', [2, 4])):
    assert logged_steps(run_dir, key) == expected_steps
    points = parsed.polylines[key]
    assert len(points) == len(expected_steps), key
    # x increases with the step; y is an affine, decreasing map of the value
    # (SVG y points down).
    values = [next(r[key] for r in rows if r['step'] == s and key in r) for s in expected_steps]
    xs = [p[0] for p in points]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    if len(set(values)) > 1:
      ys = np.array([p[1] for p in points])
      v = np.array(values)
      slope, intercept = np.polyfit(v, ys, 1)
      assert slope < 0
      np.testing.assert_allclose(slope * v + intercept, ys, atol=0.02)


def test_per_class_table_matches_eval_json(run_dir, report_path):
  result = json.loads(Path(run_dir, 'eval_val_00000004.json').read_text())
  rows = table(parse(report_path), 'per-class')
  assert rows[0] == ['class', 'IoU %', 'Acc %', 'Dice %', 'GT pixels', 'predicted pixels']
  names = list(result['IoU'])
  assert [r[0] for r in rows[1:]] == names + ['mean']
  cm = np.asarray(result['confusion_matrix'])
  for i, (row, name) in enumerate(zip(rows[1:], names)):
    for cell, key in zip(row[1:4], ('IoU', 'Acc', 'Dice')):
      assert abs(float(cell) - 100 * result[key][name]) <= 0.005 + 1e-9, (name, key, cell)
    assert int(row[4].replace(',', '')) == cm[i].sum()
    assert int(row[5].replace(',', '')) == cm[:, i].sum()
  mean = rows[-1]
  for cell, key in zip(mean[1:4], ('mIoU', 'mAcc', 'mDice')):
    assert abs(float(cell) - 100 * result[key]) <= 0.005 + 1e-9
  # The evaluations summary lists both evaluations in step order.
  summary = table(parse(report_path), 'evals')
  assert [(r[0], r[1]) for r in summary[1:]] == [('val', '2'), ('val', '4')]


def test_embedded_heatmap_and_panel(run_dir, report_path):
  parsed = parse(report_path)
  result = json.loads(Path(run_dir, 'eval_val_00000004.json').read_text())
  heat = [a for a in parsed.images if 'heatmap' in a.get('class', '').split()]
  assert len(heat) == 1
  expected = plots.confusion_heatmap(np.asarray(result['confusion_matrix']), list(result['IoU']))
  np.testing.assert_array_equal(decode_img(heat[0])[..., :3], expected)
  panels = [a for a in parsed.images if 'panel' in a.get('class', '').split()]
  assert len(panels) == 1
  on_disk = np.asarray(Image.open(run_dir / 'images' / 'val_predictions_00000004.png'))
  np.testing.assert_array_equal(decode_img(panels[0]), on_disk)


def test_nan_metrics_shown_as_na_with_convention(run_dir, tmp_path):
  """A later evaluation where class 3 appears nowhere (NaN IoU/Acc/Dice) and
  class 2 is predicted but absent (NaN Acc, IoU 0)."""
  workdir = tmp_path / 'run'
  shutil.copytree(run_dir, workdir)
  cm = np.array([[50, 2, 3, 0], [1, 40, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  result = metrics_lib.compute_metrics(cm, [f'class_{i}' for i in range(4)])
  result.update(loss=0.5, num_examples=3, confusion_matrix=cm.tolist())
  evaluate.write_result(str(workdir), 'val', 6, result)
  parsed = parse(report.write_report(str(workdir)))
  rows = {r[0]: r[1:4] for r in table(parsed, 'per-class')[1:]}
  assert rows['class_3'] == ['n/a', 'n/a', 'n/a']
  assert rows['class_2'] == ['0.00', 'n/a', '0.00']
  assert rows['class_0'][0] == f'{100 * 50 / (55 + 51 - 50):.2f}'
  assert rows['mean'][0] == f'{100 * result["mIoU"]:.2f}'
  assert 'Acc of a class with no ground-truth pixels' in ''.join(parsed.text)
  # The heatmap of that evaluation draws the empty rows grey.
  heat = decode_img(next(a for a in parsed.images if 'heatmap' in a['class']))[..., :3]
  lay = plots.heatmap_layout(list(result['IoU']))
  assert tuple(cell_pixel(heat, lay, 3, 3)) == plots.NAN_COLOR
  assert tuple(cell_pixel(heat, lay, 0, 0)) != plots.NAN_COLOR


def test_workdir_without_eval_says_so(run_dir, tmp_path):
  workdir = tmp_path / 'early'
  workdir.mkdir()
  shutil.copy(run_dir / 'config.json', workdir / 'config.json')
  train_rows = [l for l in (run_dir / 'metrics.jsonl').read_text().splitlines()
                if 'train/loss' in json.loads(l)][:3]
  (workdir / 'metrics.jsonl').write_text('\n'.join(train_rows) + '\n')
  parsed = parse(report.write_report(str(workdir)))
  text = ' '.join(''.join(parsed.text).split())
  assert 'No evaluation yet' in text
  assert 'No validation metrics logged yet' in text
  assert 'No prediction panels yet' in text
  assert not parsed.images
  assert len(parsed.polylines['train/loss']) == 3
  assert not [t for t in parsed.tables if 'per-class' in t['class']]


def test_resumed_and_truncated_metrics(tmp_path):
  """A resumed run logs steps again (the later line wins); a partial last line
  is skipped and reported."""
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
  svg = plots.line_chart_svg({'train/loss': series['train/loss']}, title='t', y_label='y')
  p = _Parsed()
  p.feed(svg)
  assert len(p.polylines['train/loss']) == 2
  assert 'train/loss (1 omitted)' in ''.join(p.text)


def test_cli(run_dir, tmp_path):
  out = tmp_path / 'r' / 'custom.html'
  proc = subprocess.run([sys.executable, '-m', 'segjax.tools.report', f'--workdir={run_dir}',
                         f'--out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == f'Wrote {out}'
  assert len(parse(out).polylines['train/loss']) == 4
  missing = tmp_path / 'nope'
  proc = subprocess.run([sys.executable, '-m', 'segjax.tools.report', f'--workdir={missing}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert str(missing) in proc.stderr and 'does not exist' in proc.stderr


def test_not_a_workdir_and_bad_eval_json(tmp_path):
  with pytest.raises(report.ReportError, match='neither config.json nor metrics.jsonl'):
    report.write_report(str(tmp_path))
  (tmp_path / 'metrics.jsonl').write_text(json.dumps({'step': 1, 'train/loss': 1.0}) + '\n')
  (tmp_path / 'eval_val_00000002.json').write_text('{"split": "val", ')
  with pytest.raises(report.ReportError, match='eval_val_00000002.json'):
    report.write_report(str(tmp_path))


# ----------------------------------------------------------------------------
# plots.confusion_heatmap.


def test_heatmap_colours_follow_values():
  """Diagonal-heavy counts: per row, the darkest and most saturated cell is the
  diagonal; over all cells, a larger row-normalised value is never lighter."""
  cm = np.array([[90, 6, 3, 1, 0],
                 [10, 70, 15, 5, 0],
                 [2, 8, 60, 20, 10],
                 [0, 0, 25, 75, 0],
                 [5, 5, 5, 5, 80]])
  names = ['road', 'sky', 'car', 'person', 'tree']
  img = plots.confusion_heatmap(cm, names)
  lay = plots.heatmap_layout(names)
  assert img.dtype == np.uint8 and img.shape == (lay.height, lay.width, 3)
  values = cm / cm.sum(axis=1, keepdims=True)
  lum = np.array([[luminance(cell_pixel(img, lay, i, j)) for j in range(5)] for i in range(5)])
  sat = np.array([[np.ptp(cell_pixel(img, lay, i, j).astype(int)) for j in range(5)]
                  for i in range(5)])
  for i in range(5):
    assert np.argmin(lum[i]) == i and np.argmax(sat[i]) == i
  flat_v, flat_l = values.ravel(), lum.ravel()
  for a in range(flat_v.size):
    for b in range(flat_v.size):
      if flat_v[a] < flat_v[b] - 0.01:
        assert flat_l[a] > flat_l[b], (flat_v[a], flat_v[b])
  # The ramp's ends: 0 is the lightest colour, 1 the darkest.
  one = plots.confusion_heatmap(np.diag([4, 7]), ['a', 'b'])
  lay2 = plots.heatmap_layout(['a', 'b'])
  assert tuple(cell_pixel(one, lay2, 0, 0)) == tuple(plots.RAMP[-1].astype(int))
  assert tuple(cell_pixel(one, lay2, 0, 1)) == tuple(plots.RAMP[0].astype(int))


def test_heatmap_normalize_modes():
  cm = np.array([[10, 0], [30, 60]])
  lay = plots.heatmap_layout(['a', 'b'])
  lum = lambda img, i, j: luminance(cell_pixel(img, lay, i, j))  # noqa: E731
  rows = plots.confusion_heatmap(cm, ['a', 'b'], normalize='true')
  cols = plots.confusion_heatmap(cm, ['a', 'b'], normalize='pred')
  counts = plots.confusion_heatmap(cm, ['a', 'b'], normalize=None)
  # Row-normalised: a->a is 100% (darkest); column-normalised: a->a is 25%.
  assert lum(rows, 0, 0) < lum(rows, 1, 1) < lum(rows, 1, 0)
  assert lum(cols, 1, 1) < lum(cols, 1, 0) < lum(cols, 0, 0)
  assert lum(counts, 1, 1) < lum(counts, 1, 0) < lum(counts, 0, 0)
  with pytest.raises(ValueError, match="normalize='rows'"):
    plots.confusion_heatmap(cm, ['a', 'b'], normalize='rows')
  with pytest.raises(ValueError, match=r'square.*\(2, 3\)'):
    plots.confusion_heatmap(np.zeros((2, 3)), ['a', 'b'])
  with pytest.raises(ValueError, match='3 class names for a 2x2'):
    plots.confusion_heatmap(cm, ['a', 'b', 'c'])


def test_heatmap_size_scales_with_class_count():
  sizes = {}
  for n in (3, 6, 12, 100):
    names = [f'k{i:02d}' for i in range(n)]
    img = plots.confusion_heatmap(np.eye(n, dtype=int) * 10 + 1, names)
    sizes[n] = img.shape[:2]
  cell = plots.auto_cell_size(6)
  assert cell == plots.auto_cell_size(3) == 32
  assert sizes[6][0] - sizes[3][0] == 3 * cell and sizes[6][1] - sizes[3][1] == 3 * cell
  heights = [sizes[n][0] for n in (3, 6, 12, 100)]
  assert heights == sorted(heights) and len(set(heights)) == 4
  assert plots.auto_cell_size(100) == 16


def test_cell_values_written_only_in_cells_of_20px_or_more():
  cm = np.array([[50, 50], [0, 100]])
  for cell, written in ((32, True), (20, True), (16, False)):
    img = plots.confusion_heatmap(cm, ['a', 'b'], cell_size=cell)
    lay = plots.heatmap_layout(['a', 'b'], cell_size=cell)
    assert lay.cell == cell
    c = img[lay.grid_y:lay.grid_y + cell, lay.grid_x:lay.grid_x + cell].reshape(-1, 3)
    distinct = len(np.unique(c, axis=0))
    assert (distinct > 1) == written, (cell, distinct)


# ----------------------------------------------------------------------------
# plots.line_chart_svg.


def test_line_chart_log_axis_and_empty():
  steps = [1, 2, 3, 4, 5]
  lr = [1e-3, 1e-4, 0.0, 1e-5, -1.0]
  svg = plots.line_chart_svg({'lr': (steps, lr)}, title='lr', y_label='lr', log_y=True)
  p = _Parsed()
  p.feed(svg)
  pts = p.polylines['lr']
  assert len(pts) == 3  # The zero and negative values cannot be drawn.
  ys = np.array([q[1] for q in pts])
  logs = np.log10([1e-3, 1e-4, 1e-5])
  # Equal log steps -> equal pixel steps.
  np.testing.assert_allclose(np.diff(ys), np.diff(ys)[0], atol=0.02)
  assert np.diff(ys)[0] > 0 and np.all(np.diff(logs) < 0)
  assert 'lr (2 omitted)' in ''.join(p.text)
  assert '(log scale)' in ''.join(p.text)
  empty = plots.line_chart_svg({}, title='x', y_label='y')
  assert 'no data' in empty and '<polyline' not in empty
  with pytest.raises(ValueError, match='differ in length'):
    plots.line_chart_svg({'a': ([1, 2], [1.0])}, title='x', y_label='y')


def test_nice_ticks():
  assert plots.nice_ticks(0.12, 0.97) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
  assert plots.nice_ticks(1, 600) == [0, 200, 400, 600]
  assert plots.nice_ticks(1, 2, min_step=1.0) == [1, 2]
  assert plots.log_ticks(1e-6, 1e-3) == [1e-6, 1e-5, 1e-4, 1e-3]
  assert plots.log_ticks(0.3, 1.7) == [0.2, 0.5, 1.0, 2.0]
