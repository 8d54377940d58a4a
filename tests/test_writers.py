"""What a run writes: metrics.jsonl (wall time, lr at the step, img/s without
evaluation time), train.log, TensorBoard (config text, confusion image,
HParams), eval/ files, prediction panels (evenly spread examples, ignore
colour), matplotlib figures; and no TensorFlow on import."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optax
import pytest
from PIL import Image

from segjax import checkpoint as ckpt_lib
from segjax import evaluate
from segjax.tools import evaluate as evaluate_tool
from segjax import figures
from segjax import train
from segjax import writers
from segjax.data import labels as labels_lib
from tests.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) [DIWEC] ')
NUM_PANELS = 3
LR = 0.02


def _config():
  """5 steps logged every 2 (rows at 2, 4, 5), evaluated and saved at 2, 4, 5;
  warm-up then cosine decay, so an interval mean of the lr is not the lr at
  the step."""
  return tiny_config(total_steps=5, log_every=2, **{
      'schedule.name': 'cosine', 'schedule.warmup_steps': 2, 'optimizer.lr': LR,
      'eval.num_panel_images': NUM_PANELS})


@pytest.fixture(scope='module')
def logged_run(tmp_path_factory):
  """A real 5-step run, with the wall-clock spans of its evaluation and
  checkpoint work recorded by wrappers around the real functions."""
  workdir = tmp_path_factory.mktemp('writers') / 'run'
  spans = []

  def timed(fn):
    def wrapper(*args, **kwargs):
      t0 = time.time()
      try:
        return fn(*args, **kwargs)
      finally:
        spans.append((t0, time.time()))
    return wrapper

  config = _config()
  with pytest.MonkeyPatch.context() as mp:
    for name in ('evaluate_split', 'write_result', 'panel_figure', 'confusion_figure'):
      mp.setattr(evaluate, name, timed(getattr(evaluate, name)))
    mp.setattr(writers.MetricWriter, 'write_figure', timed(writers.MetricWriter.write_figure))
    mp.setattr(ckpt_lib.Checkpointer, 'save', timed(ckpt_lib.Checkpointer.save))
    (workdir).mkdir(parents=True)
    # As segjax.sweep leaves it before training a point: the HParams source.
    (workdir / 'sweep_point.json').write_text(json.dumps(
        {'name': 'lr=0.02', 'overrides': {'optimizer.lr': LR}, 'status': 'running'}))
    train.train_and_evaluate(config, str(workdir))
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return workdir, config, rows, spans


def _log_time(line: str) -> float:
  """Seconds since the epoch of a train.log line's timestamp (local time)."""
  stamp = LOG_LINE.match(line).group(1)
  return time.mktime(time.strptime(stamp[:19], '%Y-%m-%d %H:%M:%S')) + float(stamp[19:])


def _union(spans):
  """Disjoint spans covering `spans` (the wrapped calls nest: write_result
  draws with confusion_figure)."""
  out = []
  for a, b in sorted(spans):
    if out and a <= out[-1][1]:
      out[-1] = (out[-1][0], max(out[-1][1], b))
    else:
      out.append((a, b))
  return out


def _train_rows(rows):
  return [r for r in rows if 'train/loss' in r]


def test_images_per_sec_excludes_evaluation_and_checkpoint_time(logged_run):
  """img/s of each interval = images / (interval between the logged wall times
  minus the evaluation and checkpoint spans inside it)."""
  workdir, config, rows, spans = logged_run
  train_rows = _train_rows(rows)
  assert [r['step'] for r in train_rows] == [2, 4, 5]
  # The first interval starts when the compiling first step is done (its
  # train.log line), so compilation is not in it either.
  compiled = next(l for l in (workdir / 'train.log').read_text().splitlines()
                  if 'count from here' in l)
  t_compiled = _log_time(compiled)
  bounds = [(t_compiled, 1)] + [(r['wall_time'], r['step']) for r in train_rows]
  checked = 0
  for (t0, step0), row in zip(bounds, train_rows):
    t1 = row['wall_time']
    paused = sum(min(b, t1) - max(a, t0) for a, b in _union(spans) if b > t0 and a < t1)
    assert (paused > 0) == (step0 > 1)  # Each later interval follows an eval and a save.
    expected = (row['step'] - step0) * config.batch_size / (t1 - t0 - paused)
    assert row['train/images_per_sec'] == pytest.approx(expected, rel=0.3), (row, paused)
    checked += 1
  assert checked == 3


def test_lr_is_the_schedule_at_the_step(logged_run):
  """Row `step` N logs the lr of its last step (state.step N - 1), evaluated
  here by optax, not a mean over the interval."""
  _, config, rows, _ = logged_run
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, LR, 2),
       optax.cosine_decay_schedule(LR, 5 - 2, alpha=float(config.schedule.end_lr_factor))],
      boundaries=[2])
  for row in _train_rows(rows):
    assert row['train/lr'] == pytest.approx(float(schedule(row['step'] - 1)), rel=1e-6)
  # Row 2 covers steps with lr 0 and LR / 2: the mean would be LR / 4.
  assert _train_rows(rows)[0]['train/lr'] == pytest.approx(LR / 2)


def test_every_row_has_a_wall_time_in_order(logged_run):
  _, _, rows, _ = logged_run
  times = [r['wall_time'] for r in rows]
  assert all(isinstance(t, float) for t in times)
  assert times == sorted(times) and abs(times[-1] - time.time()) < 24 * 3600


def test_train_log_has_the_console_lines_with_timestamps(logged_run):
  workdir = logged_run[0]
  lines = (workdir / 'train.log').read_text().splitlines()
  stamps = []
  for line in lines:
    m = LOG_LINE.match(line)
    assert m, line
    stamps.append(time.mktime(time.strptime(m.group(1)[:19], '%Y-%m-%d %H:%M:%S')))
  assert stamps == sorted(stamps)
  text = '\n'.join(lines)
  for needle in ('compiling the train step', 'train step: ', 'step 2/5', 'step 5/5',
                 'step 4: val mIoU', 'val @ step 5, 8 images', 'Total: '):
    assert needle in text, needle
  compiled = re.search(r'first step done ([0-9.]+) s after compiling began', text)
  assert compiled and float(compiled.group(1)) > 0


def _events(directory):
  """Every Event record of the tfevents files under `directory` (the TFRecord
  framing read by hand; the protos are tensorboardX's)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = []
  for path in sorted(Path(directory).rglob('events.out.tfevents.*')):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[pos + 12:pos + 12 + length])
      out.append((path.parent.name, event))
      pos += 12 + length + 4
  return out


def test_tensorboard_gets_config_confusion_image_and_hparams(logged_run):
  workdir, config, _, _ = logged_run
  events = _events(workdir / 'tensorboard')
  tags = {}
  for where, e in events:
    for v in e.summary.value:
      tags.setdefault(v.tag, []).append((where, e.step, v))
  text = tags['config/text_summary'][0][2].tensor.string_val[0].decode()
  assert json.loads('\n'.join(l[4:] for l in text.splitlines())) == json.loads(
      config.to_json_best_effort())
  confusion = tags['val_confusion']
  assert sorted(s for _, s, _ in confusion) == [2, 4, 5]
  png = confusion[0][2].image.encoded_image_string
  assert Image.open(__import__('io').BytesIO(png)).format == 'PNG'
  assert sorted(s for _, s, _ in tags['val_predictions']) == [2, 4, 5]
  # HParams: the sweep point's override and the final metrics.
  assert '_hparams_/session_start_info' in tags
  start = tags['_hparams_/session_start_info'][0][2].metadata.plugin_data.content
  assert b'optimizer.lr' in start
  assert 'hparam/mIoU' in tags


def test_eval_files_under_eval_and_panels_spread_over_the_split(logged_run):
  """--mode=eval writes under <workdir>/eval/, one prediction per panel
  example at the np.linspace positions over the split."""
  workdir, config, _, _ = logged_run
  for step in (2, 4, 5):
    for ext in ('.json', '.md', '_confusion.png'):
      assert (workdir / 'eval' / f'val_{step:08d}{ext}').is_file()
  assert not list(workdir.glob('eval_*'))
  config = _config()
  evaluate_tool.run(str(workdir), {'eval.checkpoint': 'latest'})
  n = config.data.synthetic_val_examples
  want = sorted({int(i) for i in np.round(np.linspace(0, n - 1, NUM_PANELS))})
  assert want == [0, 4, 7]
  out = workdir / 'eval' / 'val_00000005'
  assert sorted(os.listdir(out)) == sorted([f'{i:04d}_pred.png' for i in want] + ['panel.png'])
  assert evaluate.panel_indices(100, 4) == [0, 33, 66, 99]


def test_prediction_figure_is_a_png_with_headers_legend_and_ignore_colour(tmp_path):
  spec = labels_lib.LabelSpec(num_classes=4)  # VOC palette: class 0 is black.
  colors = spec.colors[:-1]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 24, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 4, (2, 24, 32))
  labels[:, :6] = 255
  fig = figures.prediction_figure(images, labels, labels, class_colors=colors,
                                  class_names=spec.names)
  path = figures.save_png(fig, str(tmp_path / 'panel.png'))
  with Image.open(path) as im:
    assert im.format == 'PNG'
    w_in, h_in = fig.get_size_inches()
    assert im.size == (round(w_in * figures.DPI), round(h_in * figures.DPI))
    pixels = np.asarray(im.convert('RGB')).reshape(-1, 3)
  present = {tuple(p) for p in np.unique(pixels, axis=0)}
  ignore = figures.ignore_color(colors)
  assert ignore not in {tuple(int(v) for v in c) for c in colors}
  assert ignore in present and all(tuple(int(v) for v in c) in present for c in colors)
  texts = [t.get_text() for ax in fig.axes for t in [ax.title]]
  assert texts[:3] == ['image', 'ground truth', 'prediction']
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend == list(spec.names) + ['ignored (not scored)']
  # Ignored pixels: the ignore colour, never a class colour.
  gt = figures.colorize(labels[0], colors, ignore)
  assert (gt[:6] == ignore).all() and not (gt[6:] == ignore).all(axis=-1).any()


def test_confusion_figure_normalises_rows_and_names_classes():
  cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
  np.testing.assert_allclose(figures.normalize_confusion(cm, 'true'),
                             [[0.75, 0.25, 0], [np.nan] * 3, [0.25, 0.25, 0.5]])
  fig = figures.confusion_figure(cm, ['road', 'sky', 'car'])
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == ['road', 'sky', 'car']
  assert [t.get_text() for t in ax.get_yticklabels()] == ['road', 'sky', 'car']
  assert sorted(t.get_text() for t in ax.texts) == sorted(['75', '25', '0', '25', '25', '50'])
  with pytest.raises(ValueError, match='3 class names for a 2x2'):
    figures.confusion_figure(np.eye(2), ['a', 'b', 'c'])
  with pytest.raises(ValueError, match="normalize='rows'"):
    figures.normalize_confusion(cm, 'rows')


def test_progress_rate_leaves_out_paused_time():
  """Hand-worked clock: 2 steps of 8 images in 4 s, of which 3 s paused."""
  p = writers.TrainProgress(10, 0, 8, enabled=False)
  p.start(1, 100.0)
  p._paused = 3.0  # As pause() records it (time.time() based).
  line, rate = p.update(3, 104.0, loss=0.5)
  assert rate == pytest.approx(16.0) and '16.0 img/s' in line
  assert 'ETA 00:04' in line  # 7 steps left at 2 steps/s.
  p.close()


def test_import_has_no_tensorflow_and_no_pyplot():
  code = ('import sys, segjax.train, segjax.tools.report, segjax.figures, segjax.evaluate; '
          "assert 'tensorflow' not in sys.modules, 'tensorflow'; "
          "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot'")
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
