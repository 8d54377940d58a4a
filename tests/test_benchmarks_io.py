"""benchmarks/input_pipeline.py and benchmarks/eval_throughput.py run end to end
at the tiniest settings and write positive, finite images/s for every row."""

import importlib.util
import json
import math

from tests.conftest import ROOT


def _load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / 'benchmarks' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _rates_ok(rows):
  return all(math.isfinite(r['images_per_s']) and r['images_per_s'] > 0 for r in rows)


def test_input_pipeline_benchmark_writes_rows(tmp_path, capsys):
  out = tmp_path / 'pipeline.json'
  assert _load('input_pipeline').main([
      '--synthetic', '--num_images=6', '--image_size=40x48', '--crop=32x32',
      '--batch_size=2', '--batches=2', '--warmup=1', '--repeats=1', '--workers=0',
      '--no-model_row', f'--json={out}']) == 0
  result = json.loads(out.read_text())
  names = [r['name'] for r in result['rows']]
  assert names[0] == 'decode only (1 thread)'
  assert len(names) == 2 and names[1].startswith('pipeline, in-process')
  assert _rates_ok(result['rows'])
  assert result['synthetic_data'] and 'verdict' not in result
  assert '| row | img/s |' in capsys.readouterr().out


def test_eval_throughput_benchmark_writes_rows(tmp_path, capsys):
  out = tmp_path / 'eval.json'
  # FCN-32s on a 1/8-width VGG16 compiles in about a second per mode (DeepLabV3+
  # on MobileNetV2 in about 4 s on a 2-core CPU).
  assert _load('eval_throughput').main([
      '--model=fcn32s', '--backbone=vgg16', '--width=0.125', '--num_classes=3',
      '--size=32x32', '--batch_size=1', '--batches=2', '--scales=1.0', '--slide_crop=24x24',
      f'--json={out}']) == 0
  result = json.loads(out.read_text())
  assert (result['model'], result['num_classes']) == ('fcn32s', 3)
  names = [r['name'] for r in result['rows']]
  assert names[0] == 'whole'
  assert names[1].startswith('slide 24x24 stride 16x16 (4 windows)')
  assert names[2].startswith('multi-scale 1 + flip (2 views)')
  assert _rates_ok(result['rows'])
  assert result['rows'][0]['vs_whole'] == 1.0
  assert '| mode | compile s |' in capsys.readouterr().out
