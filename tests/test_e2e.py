"""End-to-end runs: the README command, the tutorial U-Net on TFDS pets, real folders."""

import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from segjax import train
from segjax.tools import prepare_tfds
from tests.test_config import load
from tests.test_tfds_source import _pack, _write_fake_pet
from tests.test_train import shrink_model

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / 'shared' / 'data'


def _shrink(c, size=(32, 32)):
  """Same pipeline and model family, laptop-test sized."""
  shrink_model(c)
  c.data.crop_size = size
  c.batch_size = 4
  c.eval.batch_size = 4
  c.total_steps = 2
  c.log_every = 1
  c.eval_every = 2
  c.checkpoint_every = 2
  c.schedule.warmup_steps = 0
  c.checkpoint.async_save = False
  return c


def test_readme_command_trains_resumes_and_prints_table(tmp_path):
  """The README command without --workdir: it writes to runs/<config>_<arg>
  under the current directory, says so, and the same command resumes."""
  cmd = [sys.executable, str(ROOT / 'launch.py'),
         f'--config={ROOT}/configs/deeplabv3plus.py:runlocal', '--config.total_steps=2',
         '--config.log_every=1', '--config.schedule.warmup_steps=0',
         '--config.data.synthetic_val_examples=8', '--config.checkpoint.async_save=False']
  first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  workdir = Path('runs') / 'deeplabv3plus_runlocal'
  assert first.stdout.splitlines()[0] == f'Writing to {workdir}'
  assert (tmp_path / workdir / 'checkpoints' / '2').is_dir()
  for name in ('aAcc', 'mAcc', 'mIoU', 'fwIoU', 'background', 'disc', 'square', 'triangle'):
    assert name in first.stdout
  assert 'val @ step 2, 8 images' in first.stdout
  # The same command again (README): it finds the finished run, trains nothing
  # and prints the table again. (Resuming mid-run: tests/test_kill_resume.py.)
  again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Resuming from step 2' in again.stdout and 'val @ step 2, 8 images' in again.stdout
  assert [l for l in again.stdout.splitlines() if l.startswith('aAcc')] == [
      l for l in first.stdout.splitlines() if l.startswith('aAcc')]


def test_unet_tutorial_config_on_tfds_pets(tmp_path):
  """configs/unet_mobilenetv2.py as the tutorial has it, on a fake TFDS-prepared Pet."""
  c = load('unet_mobilenetv2.py', '')
  # The tutorial's setup, as documented.
  assert (c.data.tfds_name, c.data.train_split, c.data.val_split) == ('oxford_iiit_pet', 'train',
                                                                      'test')
  assert c.data.label_map == '1:0,2:1,3:2' and c.data.num_classes == 3
  assert tuple(c.data.resize) == (128, 128) and c.batch_size == 64
  assert c.total_steps == 20 * (3680 // 64) and c.optimizer.name == 'adam'
  assert c.augment.hflip and c.model.name == 'unet' and c.model.backbone == 'mobilenetv2'
  tfds.disable_progress_bar()
  raw, manual, data_dir = tmp_path / 'raw', tmp_path / 'manual', tmp_path / 'tfds'
  _write_fake_pet(raw)
  _pack(raw, manual)
  prepare_tfds.prepare('oxford_iiit_pet', str(data_dir), manual_dir=str(manual))
  c.data.root = str(data_dir)
  _shrink(c)
  c.data.resize = (32, 32)
  result = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert result['num_examples'] == 3  # The fake test split.
  assert set(result['IoU']) == {'pet', 'background', 'border'}
  assert result['num_pixels'] == 3 * 32 * 32


@pytest.mark.skipif(not (SHARED_DATA / 'camvid').is_dir(),
                    reason=f'CamVid not found at {SHARED_DATA / "camvid"}')
def test_camvid_folder_run(tmp_path):
  c = load('deeplabv3plus.py', 'dataset=camvid,runlocal')
  c.data.root = str(SHARED_DATA / 'camvid')
  _shrink(c, size=(64, 96))
  c.data.val_split = 'val[:4]'
  result = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert result['num_examples'] == 4
  assert list(result['IoU'])[:3] == ['Sky', 'Building', 'Pole'] and len(result['IoU']) == 11
  # 180x240 evaluation images; void (11) pixels are not counted.
  assert 0 < result['num_pixels'] < 4 * 180 * 240


@pytest.mark.skipif(not (SHARED_DATA / 'isbi_membrane').is_dir(),
                    reason=f'ISBI data not found at {SHARED_DATA / "isbi_membrane"}')
def test_isbi_binary_run(tmp_path):
  c = load('deeplabv3plus.py', 'dataset=isbi,runlocal')
  c.data.root = str(SHARED_DATA / 'isbi_membrane')
  _shrink(c, size=(64, 64))
  c.data.val_split = 'train[28:]'
  c.eval.batch_size = 2
  result = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert result['num_examples'] == 2 and set(result['IoU']) == {'membrane', 'cell'}
  assert result['num_pixels'] == 2 * 512 * 512  # Binary masks: nothing ignored.


def test_segjax_predict_command(tmp_path):
  """`segjax predict` (python -m segjax.tools predict) on a trained run:
  palette PNGs and overlays for a folder, the corrupt file counted and named,
  exit 0."""
  import numpy as np
  from PIL import Image
  from tests.test_train import tiny_config
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(), str(workdir))
  photos = tmp_path / 'photos'
  (photos / 'sub').mkdir(parents=True)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(photos / 'a.png')
  Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
      photos / 'sub' / 'b.jpg')
  (photos / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
  out = tmp_path / 'out'
  proc = subprocess.run(
      [sys.executable, '-m', 'segjax.tools', 'predict', f'--workdir={workdir}',
       f'--input={photos}', f'--out={out}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '2 images predicted, 1 failed' in proc.stdout
  assert 'broken.png' in proc.stderr
  pred = Image.open(out / 'sub' / 'b_pred.png')
  assert pred.mode == 'P' and pred.size == (24, 24)
  assert (out / 'a_overlay.png').exists()
