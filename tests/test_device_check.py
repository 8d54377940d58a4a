"""benchmarks/device_check.py --dry_run: every part of the prepared GPU check
runs end to end on the CPU at tiny sizes, so the one-call device run cannot rot."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
  out = tmp_path_factory.mktemp('device_check')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'device_check.py'),
                         '--dry_run', f'--out={out}'], capture_output=True, text=True,
                        cwd=str(ROOT), env=env, timeout=3600)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
  return out, json.loads((out / 'device_check.json').read_text())


def test_part_a_measures_segjax_and_the_peer(dry_run):
  _, info = dry_run
  a = info['a']
  assert a['matmul']['tflops'] > 0
  seg = [m for m in a['runs'] if m['framework'] == 'segjax']
  assert seg and 'error' not in seg[0], seg
  assert seg[0]['step_s'] > 0 and seg[0]['compile_s'] > 0 and seg[0]['flops'] > 0
  assert seg[0]['autotune_level'] == 0
  peer = [m for m in a['runs'] if m['framework'] != 'segjax']
  if importlib.util.find_spec('segmentation_models_pytorch') is not None:
    assert peer and 'error' not in peer[0], peer
    assert peer[0]['step_s'] > 0


def test_part_b_times_host_and_device_augmentation(dry_run):
  _, info = dry_run
  names = [r['name'] for r in info['b']['rows']]
  assert any('augment_on=device' in n for n in names)
  assert any(n.startswith('device augmentation') for n in names)
  assert any(n.startswith('pipeline') and 'device' not in n for n in names)
  assert all(r['images_per_s'] > 0 for r in info['b']['rows'])


def test_part_c_trains_and_evaluates_camvid_with_tta(dry_run):
  out, info = dry_run
  c = info['c']
  assert 'error' not in c, c
  assert c['step'] == 2 and c['tta']['flip'] and len(c['tta']['scales']) == 2
  assert 0.0 <= c['val_mIoU'] <= 1.0
  assert len(c['per_class_IoU']) == 11  # CamVid's classes, void ignored.
  md = (out / 'device_check.md').read_text()
  assert '## a.' in md and '## b.' in md and '## c.' in md and 'val mIoU' in md
