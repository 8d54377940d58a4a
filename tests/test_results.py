"""segjax.tools.results: the table of a sweep's runs, from hand-written workdirs."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from segjax.tools import results

ROOT = Path(__file__).resolve().parents[1]
NAN = 'nan'  # How the MetricWriter stores a non-finite value.


# ----------------------------------------------------------------------------
# Helpers.


def write_run(directory: Path, lines=None, *, total_steps=None, point=None) -> Path:
  directory.mkdir(parents=True, exist_ok=True)
  if total_steps is not None:
    cfg = {'model': {'name': 'deeplabv3plus', 'backbone': 'resnet18'},
           'optimizer': {'lr': 0.01}, 'batch_size': 4, 'total_steps': total_steps,
           'data': {'name': 'synthetic'}}
    (directory / 'config.json').write_text(json.dumps(cfg, indent=1))
  if lines is not None:
    (directory / 'metrics.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))
  if point is not None:
    (directory / 'sweep_point.json').write_text(json.dumps(point))
  return directory


def make_sweep(root: Path) -> Path:
  """Points a (done), b (running; resumed from an earlier checkpoint), c
  (pending: only in sweep.json), and a plain run extra/plain."""
  points = [
      {'name': 'a', 'overrides': {'optimizer.lr': 0.01, 'model.output_stride': 16}},
      {'name': 'b', 'overrides': {'optimizer.lr': 0.001, 'model.output_stride': 8}},
      {'name': 'c', 'overrides': {'optimizer.lr': 0.0001, 'model.output_stride': 8}},
  ]
  root.mkdir(parents=True, exist_ok=True)
  (root / 'sweep.json').write_text(json.dumps({'config': 'configs/x.py:runlocal',
                                               'points': points}))
  write_run(root / 'a', [
      {'step': 10, 'train/loss': 1.0, 'train/lr': 0.01, 'train/finite': 1.0},
      {'step': 20, 'train/loss': 0.8, 'train/images_per_sec': 100.0},
      {'step': 20, 'val/mIoU': 0.30, 'val/aAcc': 0.80, 'val/loss': 0.7},
      {'step': 30, 'train/loss': 0.7, 'train/images_per_sec': 120.0},
      {'step': 40, 'train/loss': 0.6, 'train/images_per_sec': 90.0},
      {'step': 40, 'val/mIoU': 0.25, 'val/aAcc': 0.85, 'val/loss': 0.6},
      {'step': 40, 'time/train_seconds': 12.5},
  ], total_steps=40, point=dict(points[0], status='done', index=0))
  (root / 'a' / 'checkpoints' / '40').mkdir(parents=True)
  (root / 'a' / 'eval_val_40.json').write_text('{}')
  write_run(root / 'b', [
      # First session: a NaN loss, then killed after step 40 was logged; the
      # latest checkpoint is step 20.
      {'step': 10, 'train/loss': NAN},
      {'step': 20, 'train/loss': 0.9, 'train/images_per_sec': 50.0},
      {'step': 20, 'val/mIoU': 0.20, 'val/aAcc': 0.70, 'val_ema/mIoU': 0.22},
      {'step': 30, 'train/loss': 0.8, 'train/images_per_sec': 60.0},
      {'step': 40, 'train/loss': 0.7, 'train/images_per_sec': 1000.0},
      {'step': 40, 'val/mIoU': 0.90, 'val/aAcc': 0.99, 'val_ema/mIoU': 0.95},
      # Second session, from step 20: steps 30 and 40 are logged again.
      {'step': 30, 'train/loss': 0.75},
      {'step': 40, 'train/loss': 0.65, 'train/images_per_sec': 70.0},
      {'step': 40, 'val/mIoU': 0.35, 'val/aAcc': 0.90, 'val_ema/mIoU': 0.40},
      {'step': 50, 'train/loss': 0.6, 'train/images_per_sec': 80.0},
  ], total_steps=60, point=dict(points[1], status='running', index=1))
  write_run(root / 'extra' / 'plain', [
      {'step': 10, 'train/loss': 1.2},
      {'step': 20, 'train/loss': 1.0, 'train/images_per_sec': 30.0},
      {'step': 20, 'val/mIoU': 0.10, 'val/aAcc': 0.50},
      {'step': 20, 'time/train_seconds': 10.0},
      # Run again at the same total_steps: evaluates step 20 again.
      {'step': 20, 'val/mIoU': 0.15, 'val/aAcc': 0.55},
      # Run again with total_steps=40.
      {'step': 30, 'train/loss': 0.9},
      {'step': 40, 'train/loss': 0.8, 'train/images_per_sec': 40.0},
      {'step': 40, 'val/mIoU': 0.12, 'val/aAcc': 0.60},
      {'step': 40, 'time/train_seconds': 7.25},
  ], total_steps=40)
  # Not runs: nothing below tensorboard/ or images/ is looked at.
  write_run(root / 'extra' / 'images' / 'x', [{'step': 1, 'val/mIoU': 1.0}])
  write_run(root / 'tensorboard' / 'y', [{'step': 1, 'val/mIoU': 1.0}])
  return root


EXPECTED = [
    {'run': 'a', 'status': 'done', 'optimizer.lr': 0.01, 'model.output_stride': 16,
     'steps': 40, 'total_steps': 40, 'best_mIoU': 0.30, 'best_step': 20, 'final_mIoU': 0.25,
     'best_ema_mIoU': None, 'final_aAcc': 0.85, 'images_per_sec': 100.0,
     'train_seconds': 12.5},
    # The first session's steps 30 and 40 (mIoU 0.90, 1000 img/s) are gone;
    # img/s median of [50, 70, 80].
    {'run': 'b', 'status': 'running', 'optimizer.lr': 0.001, 'model.output_stride': 8,
     'steps': 50, 'total_steps': 60, 'best_mIoU': 0.35, 'best_step': 40, 'final_mIoU': 0.35,
     'best_ema_mIoU': 0.40, 'final_aAcc': 0.90, 'images_per_sec': 70.0,
     'train_seconds': None},
    {'run': 'c', 'status': 'pending', 'optimizer.lr': 0.0001, 'model.output_stride': 8,
     'steps': None, 'total_steps': None, 'best_mIoU': None, 'best_step': None,
     'final_mIoU': None, 'best_ema_mIoU': None, 'final_aAcc': None, 'images_per_sec': None,
     'train_seconds': None},
    # The second evaluation of step 20 (0.15) supersedes the first (0.10);
    # img/s median of [30, 40]; train seconds 10 + 7.25.
    {'run': 'extra/plain', 'status': '-', 'optimizer.lr': None, 'model.output_stride': None,
     'steps': 40, 'total_steps': 40, 'best_mIoU': 0.15, 'best_step': 20, 'final_mIoU': 0.12,
     'best_ema_mIoU': None, 'final_aAcc': 0.60, 'images_per_sec': 35.0,
     'train_seconds': 17.25},
]
COLUMNS = ['run', 'status', 'optimizer.lr', 'model.output_stride', 'steps', 'total_steps',
           'best_mIoU', 'best_step', 'final_mIoU', 'best_ema_mIoU', 'final_aAcc',
           'images_per_sec', 'train_seconds']


def _arg(a) -> str:
  """A directory argument is --workdir; flags pass as they are."""
  return str(a) if str(a).startswith('--') else f'--workdir={a}'


def run_cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, '-m', 'segjax.tools.results', *map(_arg, args)], cwd=cwd,
                        capture_output=True, text=True, timeout=60)


@pytest.fixture
def sweep(tmp_path):
  return make_sweep(tmp_path / 'sweep')


# ----------------------------------------------------------------------------
# collect.


def test_collect_rows(sweep):
  rows = results.collect(str(sweep))
  assert [list(r) for r in rows] == [COLUMNS] * 4
  assert rows == EXPECTED


def test_collect_root_is_a_run(tmp_path):
  write_run(tmp_path / 'one', [{'step': 5, 'train/loss': 1.0}, {'step': 5, 'val/mIoU': 0.5}],
            total_steps=5)
  rows = results.collect(str(tmp_path / 'one'))
  assert rows == [{'run': 'one', 'status': '-', 'steps': 5, 'total_steps': 5, 'best_mIoU': 0.5,
                   'best_step': 5, 'final_mIoU': 0.5, 'final_aAcc': None,
                   'images_per_sec': None, 'train_seconds': None}]


def test_collect_just_started_point(tmp_path):
  """A point directory with only sweep_point.json (training not started yet)."""
  write_run(tmp_path / 'p0', point={'name': 'p0', 'overrides': {'config.seed': 1},
                                    'status': 'running', 'index': 0})
  rows = results.collect(str(tmp_path))
  assert rows == [{'run': 'p0', 'status': 'running', 'seed': 1, 'steps': None,
                   'total_steps': None, 'best_mIoU': None, 'best_step': None,
                   'final_mIoU': None, 'final_aAcc': None, 'images_per_sec': None,
                   'train_seconds': None}]


def test_override_named_like_a_column(tmp_path):
  (tmp_path / 'sweep.json').write_text(json.dumps({'points': [
      {'name': 'short', 'overrides': {'total_steps': 10}}]}))
  rows = results.collect(str(tmp_path))
  assert rows[0]['config.total_steps'] == 10 and rows[0]['total_steps'] is None
  assert rows[0]['status'] == 'pending'


def test_merge_sessions():
  lines = [{'step': 1, 'x': 1}, {'step': 2, 'x': 2, 'y': 2}, {'step': 2, 'x': 3},
           {'step': 3, 'x': 4}, {'step': 2, 'z': 5}, {'step': 4, 'x': 6}]
  assert results.merge_sessions(lines) == {1: {'x': 1}, 2: {'z': 5}, 4: {'x': 6}}


# ----------------------------------------------------------------------------
# Formatting.


def test_markdown_exact(tmp_path):
  (tmp_path / 'sweep.json').write_text(json.dumps({'points': [
      {'name': 'p1', 'overrides': {'optimizer.lr': 0.1}},
      {'name': 'p2', 'overrides': {'optimizer.lr': 0.01}}]}))
  write_run(tmp_path / 'p1', [
      {'step': 10, 'train/loss': 1.0},
      {'step': 20, 'train/loss': 0.5, 'train/images_per_sec': 123.456},
      {'step': 20, 'val/mIoU': 0.123456, 'val/aAcc': 0.9},
      {'step': 20, 'time/train_seconds': 3.0},
  ], total_steps=20, point={'name': 'p1', 'overrides': {'optimizer.lr': 0.1},
                            'status': 'done', 'index': 0})
  text = results.format_markdown(results.collect(str(tmp_path)))
  assert text == (
      '| run | status  | optimizer.lr | steps | total_steps | best_mIoU | best_step | '
      'final_mIoU | final_aAcc | images_per_sec | train_seconds |\n'
      '| --- | ------- | -----------: | ----: | ----------: | --------: | --------: | '
      '---------: | ---------: | -------------: | ------------: |\n'
      '| p1  | done    |          0.1 |    20 |          20 |    0.1235 |        20 | '
      '    0.1235 |     0.9000 |          123.5 |           3.0 |\n'
      '| p2  | pending |         0.01 |       |             |           |           | '
      '           |            |                |               |\n')


def test_markdown_columns_and_escaping():
  rows = [{'run': 'a|b', 'best_mIoU': float('nan'), 'data.crop_size': [64, 64]}]
  assert results.format_markdown(rows, ['run', 'data.crop_size', 'best_mIoU']) == (
      '| run  | data.crop_size | best_mIoU |\n'
      '| ---- | -------------- | --------- |\n'
      '| a\\|b | [64, 64]       | nan       |\n')
  with pytest.raises(ValueError, match='nope'):
    results.format_markdown(rows, ['nope'])


def test_csv_round_trip(sweep):
  rows = results.collect(str(sweep))
  rows[0]['best_mIoU'] = 0.12345678901234567
  read = list(csv.DictReader(io.StringIO(results.format_csv(rows))))
  assert list(read[0]) == COLUMNS
  assert [r['run'] for r in read] == ['a', 'b', 'c', 'extra/plain']
  assert float(read[0]['best_mIoU']) == 0.12345678901234567
  assert read[1] == {
      'run': 'b', 'status': 'running', 'optimizer.lr': '0.001', 'model.output_stride': '8',
      'steps': '50', 'total_steps': '60', 'best_mIoU': '0.35', 'best_step': '40',
      'final_mIoU': '0.35', 'best_ema_mIoU': '0.4', 'final_aAcc': '0.9',
      'images_per_sec': '70.0', 'train_seconds': ''}
  assert read[3]['train_seconds'] == '17.25' and read[3]['optimizer.lr'] == ''
  assert read[2]['steps'] == '' and read[2]['status'] == 'pending'


# ----------------------------------------------------------------------------
# Sorting.


def _runs(rows):
  return [r['run'] for r in rows]


def test_sort_metric_descending_by_default_missing_last(sweep):
  rows = results.collect(str(sweep))
  assert _runs(results.sort_rows(rows, 'best_mIoU')) == ['b', 'a', 'extra/plain', 'c']
  assert _runs(results.sort_rows(rows, 'best_mIoU', descending=False)) == [
      'extra/plain', 'a', 'b', 'c']
  # Only b has EMA: the others are missing, last both ways, in their order.
  assert _runs(results.sort_rows(rows, 'best_ema_mIoU')) == ['b', 'a', 'c', 'extra/plain']
  assert _runs(results.sort_rows(rows, 'best_ema_mIoU', False)) == ['b', 'a', 'c', 'extra/plain']
  assert _runs(rows) == ['a', 'b', 'c', 'extra/plain']  # Not sorted in place.


def test_sort_numeric_not_text(sweep):
  rows = results.collect(str(sweep))
  # As text, '100.0' < '35.0' < '70.0'.
  assert _runs(results.sort_rows(rows, 'images_per_sec')) == ['a', 'b', 'extra/plain', 'c']
  assert _runs(results.sort_rows(rows, 'images_per_sec', descending=False)) == [
      'extra/plain', 'b', 'a', 'c']


def test_sort_other_columns_ascending_by_default(sweep):
  rows = results.collect(str(sweep))
  assert _runs(results.sort_rows(rows, 'optimizer.lr')) == ['c', 'b', 'a', 'extra/plain']
  assert _runs(results.sort_rows(rows, 'optimizer.lr', descending=True)) == [
      'a', 'b', 'c', 'extra/plain']
  assert _runs(results.sort_rows(rows, 'steps')) == ['a', 'extra/plain', 'b', 'c']
  assert _runs(results.sort_rows(rows, 'status')) == ['extra/plain', 'a', 'c', 'b']
  assert _runs(results.sort_rows(rows, 'BEST_miou')) == ['b', 'a', 'extra/plain', 'c']


def test_sort_natural_text():
  rows = [{'run': 'lr_10'}, {'run': 'lr_2'}, {'run': ''}, {'run': 'lr_1'}]
  assert _runs(results.sort_rows(rows, 'run')) == ['lr_1', 'lr_2', 'lr_10', '']
  assert _runs(results.sort_rows(rows, 'run', True)) == ['lr_10', 'lr_2', 'lr_1', '']


def test_sort_unknown_column(sweep):
  rows = results.collect(str(sweep))
  with pytest.raises(ValueError, match=(r"unknown column 'mIoU'; the columns are: run, status, "
                                       r'optimizer\.lr, .*best_mIoU')):
    results.sort_rows(rows, 'mIoU')


# ----------------------------------------------------------------------------
# Errors.


def test_empty_root(tmp_path):
  (tmp_path / 'empty' / 'checkpoints').mkdir(parents=True)
  with pytest.raises(results.ResultsError, match=f'no runs under {tmp_path / "empty"}'):
    results.collect(str(tmp_path / 'empty'))
  with pytest.raises(results.ResultsError, match='not a directory'):
    results.collect(str(tmp_path / 'missing'))


def test_corrupt_line(sweep, capsys):
  path = sweep / 'a' / 'metrics.jsonl'
  lines = path.read_text().splitlines(keepends=True)
  lines.insert(2, '{"step": 20, "val/mIoU": 0.3\n')
  path.write_text(''.join(lines))
  with pytest.raises(results.ResultsError, match=f'{path}:3: unreadable line'):
    results.collect(str(sweep))
  rows = results.collect(str(sweep), skip_corrupt=True)
  assert rows == EXPECTED
  assert f'warning: {path}:3: unreadable line skipped' in capsys.readouterr().err


def test_corrupt_sweep_json(sweep):
  (sweep / 'sweep.json').write_text('{"points": [{"overrides": {}}]}')
  with pytest.raises(results.ResultsError, match='sweep.json'):
    results.collect(str(sweep))


# ----------------------------------------------------------------------------
# Command line.


def test_cli_stdout(sweep):
  proc = run_cli(sweep)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == results.format_markdown(EXPECTED)
  proc = run_cli(sweep, '--sort=best_mIoU', '--order=ascending', '--format=csv')
  assert proc.returncode == 0, proc.stderr
  assert [r['run'] for r in csv.DictReader(io.StringIO(proc.stdout))] == [
      'extra/plain', 'a', 'b', 'c']


def test_cli_out_files(sweep, tmp_path):
  out_csv, out_md = tmp_path / 'out' / 'r.csv', tmp_path / 'r.md'
  proc = run_cli(sweep, '--sort=images_per_sec', f'--out={out_csv}')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == f'Wrote {out_csv} (4 runs)\n'
  assert out_csv.read_text() == results.format_csv(
      results.sort_rows(EXPECTED, 'images_per_sec'))
  proc = run_cli(sweep, f'--out={out_md}', '--sort=optimizer.lr', '--order=descending')
  assert proc.returncode == 0, proc.stderr
  assert out_md.read_text() == results.format_markdown(
      results.sort_rows(EXPECTED, 'optimizer.lr', descending=True))
  proc = run_cli(sweep, f'--out={tmp_path / "r.txt"}', '--format=csv')
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / 'r.txt').read_text() == results.format_csv(EXPECTED)


def test_cli_errors(sweep, tmp_path):
  (tmp_path / 'empty').mkdir()
  proc = run_cli(tmp_path / 'empty')
  assert proc.returncode == 2
  assert f'no runs under {tmp_path / "empty"}' in proc.stderr and not proc.stdout
  proc = run_cli(sweep, '--sort=nope')
  assert proc.returncode == 2 and "unknown column 'nope'" in proc.stderr
  proc = run_cli(sweep, f'--out={tmp_path / "r.txt"}')
  assert proc.returncode == 2 and 'pass --format' in proc.stderr
  path = sweep / 'b' / 'metrics.jsonl'
  with open(path, 'a') as f:
    f.write('{"step": 60, "train/lo')  # Killed mid-write.
  proc = run_cli(sweep)
  assert proc.returncode == 2 and f'{path}:11: unreadable line' in proc.stderr
  proc = run_cli(sweep, '--skip_corrupt')
  assert proc.returncode == 0 and proc.stdout == results.format_markdown(EXPECTED)
  assert f'{path}:11' in proc.stderr
