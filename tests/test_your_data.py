"""docs/your_data.md as written: a tiny dataset in the page's layout, the page's
training command parsed the way launch.py parses it, validated, and trained
for two steps; its class names, palette and error messages."""

import re
import shlex
from pathlib import Path

from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image
import pytest

from configs import common
from segjax import config as config_lib
from segjax import train
from segjax.data import labels as labels_lib
from tests.test_train import shrink_model

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / 'docs' / 'your_data.md'
NUM_CLASSES = 5


def _shell_commands():
  """The page's ```shell blocks, one command per entry, continuations joined."""
  blocks = re.findall(r'```shell\n(.*?)```', DOC.read_text(), re.S)
  return [' '.join(block.replace('\\\n', ' ').split()) for block in blocks]


def _train_command():
  (cmd,) = [c for c in _shell_commands() if c.startswith('python launch.py') and
            '--mode=' not in c]
  return cmd


def _config_from(args):
  """The config launch.py builds from these arguments (config_flags, locked)."""
  argv = ['launch.py'] + [a for a in args if a.startswith('--config')]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def _write_dataset(root: Path):
  """The page's layout: images/<split>/<stem>.jpg, masks/<split>/<stem>.png with
  class indices 0..4 and 255 = ignored; returns the val masks."""
  rng = np.random.default_rng(0)
  tints = rng.integers(0, 256, (NUM_CLASSES, 3))
  val_masks = []
  for split, n in (('train', 4), ('val', 2)):
    (root / 'images' / split).mkdir(parents=True)
    (root / 'masks' / split).mkdir(parents=True)
    for i in range(n):
      mask = np.full((40, 56), rng.integers(NUM_CLASSES), np.uint8)
      for c in range(NUM_CLASSES):
        y, x = rng.integers(0, 30, 2)
        mask[y:y + 10, x:x + 12] = c
      mask[:, :3] = 255  # An ignored strip.
      image = np.clip(tints[mask % NUM_CLASSES] + rng.normal(0, 10, (40, 56, 3)), 0, 255)
      Image.fromarray(image.astype(np.uint8)).save(root / 'images' / split / f'field_{i:04d}.jpg')
      Image.fromarray(mask).save(root / 'masks' / split / f'field_{i:04d}.png')
      if split == 'val':
        val_masks.append(mask)
  return val_masks


def test_layout_on_the_page_is_the_presets():
  text = DOC.read_text()
  for line in ('  images/\n    train/\n      field_0001.jpg', '  masks/\n    train/\n      '
               'field_0001.png'):
    assert line in text
  preset = common.DATASETS['folder']
  assert (preset['data.image_dir'], preset['data.mask_dir']) == ('images/{split}',
                                                                   'masks/{split}')


def test_walkthrough_trains_on_its_layout(tmp_path):
  root = tmp_path / 'my_data'
  val_masks = _write_dataset(root)
  args = shlex.split(_train_command())
  assert args[:2] == ['python', 'launch.py']
  args = [a.replace('=my_data', f'={root}') for a in args]
  c = config_lib.validate(_config_from(args))
  assert (c.data.name, c.data.root, c.data.num_classes) == ('folder', str(root), NUM_CLASSES)
  with c.unlocked():
    shrink_model(c)  # Test size: model kwargs the config file leaves at their defaults.
  c.data.crop_size = (32, 32)
  c.batch_size = c.eval.batch_size = 2
  c.total_steps = c.eval_every = c.checkpoint_every = 2
  c.log_every = 1
  c.schedule.warmup_steps = 0
  c.checkpoint.async_save = False
  result = train.train_and_evaluate(config_lib.validate(c), str(tmp_path / 'run'))
  assert result['num_examples'] == 2
  assert list(result['IoU']) == [f'class_{i}' for i in range(NUM_CLASSES)]
  # Whole-image evaluation at 40x56: every pixel but the ignored strips.
  assert result['num_pixels'] == sum(int((m != 255).sum()) for m in val_masks)


def test_class_names_and_palette_from_the_page():
  args = shlex.split(_train_command())
  (names_cmd,) = [c for c in _shell_commands() if c.startswith('--config.data.class_names')]
  c = config_lib.validate(_config_from(args + shlex.split(names_cmd)))
  spec = labels_lib.spec_from_config(c.data)
  assert spec.names == ('soil', 'crop', 'weed', 'water', 'road')
  assert spec.colors[:5].tolist() == [[120, 80, 40], [0, 160, 0], [200, 200, 0], [0, 0, 255],
                                      [90, 90, 90]]


def test_default_names_and_generated_palette_for_any_num_classes():
  """dataset=folder with 11 classes: class_0..class_10 and the PASCAL VOC map
  (its first colours written out by hand), not the synthetic set's 4 names."""
  c = _config_from(['--config=configs/deeplabv3plus.py:dataset=folder',
                    '--config.data.root=/data', '--config.data.num_classes=11'])
  spec = labels_lib.spec_from_config(config_lib.validate(c).data)
  assert spec.names == tuple(f'class_{i}' for i in range(11))
  assert spec.colors[:6].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                                      [0, 0, 128], [128, 0, 128]]
  assert len({tuple(x) for x in spec.colors[:11].tolist()}) == 11


@pytest.mark.parametrize('drop,says', [
    ('--config.data.root', '--config.data.root=/path/to/dataset'),
    ('--config.data.num_classes', '--config.data.num_classes=N'),
])
def test_missing_root_or_classes_says_which_flag(drop, says):
  args = [a for a in shlex.split(_train_command()) if not a.startswith(drop + '=')]
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(_config_from(args))
  assert says in str(e.value) and '\n' not in str(e.value)
