"""Every config file with every documented argument loads and validates; errors name keys."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from configs import common
from segjax import config as config_lib

ROOT = Path(__file__).resolve().parents[1]

# Every documented argument combination of every config file.
CONFIG_ARGS = {
    'deeplabv3plus.py': [
        '', 'runlocal', 'dataset=camvid', 'dataset=camvid,runlocal', 'dataset=isbi',
        'dataset=isbi,runlocal', 'dataset=pets', 'backbone=xception65',
        'backbone=xception65,output_stride=8', 'output_stride=8,runlocal'],
    'unet_mobilenetv2.py': [
        '', 'runlocal', 'freeze_encoder', 'dataset=camvid', 'dataset=isbi,runlocal',
        'dataset=synthetic', 'runlocal,freeze_encoder'],
    'deeplabv3.py': [
        '', 'runlocal', 'backbone=resnet101,output_stride=8', 'backbone=resnet152,aux',
        'torchvision', 'dataset=camvid,runlocal'],
    'fcn.py': [
        '', 'runlocal', 'variant=16s', 'variant=32s,upsample=transposed',
        'backbone=resnet50,variant=8s', 'backbone=resnet101,torchvision', 'dataset=isbi'],
    'segnet.py': [
        '', 'runlocal', 'bayesian', 'bayesian,mc_samples=8,dataset=synthetic,runlocal'],
    'dsrfcn.py': ['', 'runlocal', 'dataset=camvid'],
    'camvid.py': ['', 'recipe=cpu', 'split=trainval', 'recipe=cpu,split=trainval',
                  'class_weights=none', 'class_weights=median,output_stride=8',
                  'recipe=cpu,crop=96x144,steps=200'],
    'pets_unet_tutorial.py': ['', 'dataset=synthetic', 'dataset=synthetic,steps=20'],
    'camvid_sepres_fcn.py': ['', 'split=heldout', 'lab', 'split=heldout,lab,steps=90'],
    'satellite_fcn32s.py': ['', 'steps=100', 'train_images=16,crops_per_image=1'],
    'satellite_deeplabv3_r101.py': ['', 'steps=100'],
}


def load(name, arg):
  spec = importlib.util.spec_from_file_location(name[:-3], ROOT / 'configs' / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_every_config_file_is_listed():
  files = {p.name for p in (ROOT / 'configs').glob('*.py')} - {'__init__.py', 'common.py'}
  assert files == set(CONFIG_ARGS)


@pytest.mark.parametrize('name,arg', [(n, a) for n, args in CONFIG_ARGS.items() for a in args])
def test_config_loads_and_validates(name, arg):
  c = load(name, arg)
  if c.data.name == 'folder':
    c.data.root = '/some/dataset'
  if c.model.freeze_encoder and not c.model.pretrained:
    c.model.pretrained = '/some/weights'  # A frozen encoder needs converted weights.
  config_lib.validate(c)
  if 'runlocal' in arg:
    assert c.total_steps <= 2000


def test_arguments_are_typed_and_checked():
  a = common.parse_arg('runlocal,output_stride=8,dataset=camvid', runlocal=False,
                       output_stride=16, dataset='synthetic')
  assert a.runlocal is True and a.output_stride == 8 and a.dataset == 'camvid'
  with pytest.raises(ValueError, match="'datset'"):
    common.parse_arg('datset=camvid', dataset='synthetic')
  with pytest.raises(ValueError, match='unknown dataset'):
    load('deeplabv3plus.py', 'dataset=cityscapes')


def test_unknown_key_is_named_with_suggestion():
  c = config_lib.base_config()
  c.optimizer.unlock()
  c.optimizer.lrr = 0.1
  with pytest.raises(config_lib.ConfigError, match=r"optimizer\.lrr.*optimizer\.lr"):
    config_lib.validate(c)


@pytest.mark.parametrize('key,value,match', [
    ('data.num_classes', 0, 'data.num_classes'),
    ('data.ignore_label', 2, 'ignore_label=2'),
    ('data.class_names', ('a', 'b'), 'class_names has 2'),
    ('data.palette', ((0, 0, 0),), 'palette has 1'),
    ('data.label_map', '11:12', '11 -> 12'),
    ('data.label_map', '11-255', "'raw:label'"),
    ('loss.class_weights', (1.0, 2.0), 'loss.class_weights'),
    ('model.output_stride', 4, 'model.output_stride'),
    ('model.dtype', 'float16', 'model.dtype'),
    ('optimizer.name', 'lamb', 'optimizer.name'),
    ('data.crop_size', (64,), 'data.crop_size'),
    ('batch_size', 1.5, 'batch_size'),
    ('eval.checkpoint', 'newest', 'eval.checkpoint'),
])
def test_inconsistent_values_are_named(key, value, match):
  c = config_lib.base_config()
  c.data.num_classes = 4
  section, _, leaf = key.rpartition('.')
  target = c[section] if section else c
  with target.ignore_type():
    target[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)


def test_folder_dataset_needs_root():
  c = load('deeplabv3plus.py', 'dataset=camvid')
  with pytest.raises(config_lib.ConfigError, match='data.root'):
    config_lib.validate(c)


def test_command_line_typo_is_rejected():
  """--config.optimiser.lr fails before anything runs, naming the bad key."""
  out = subprocess.run(
      [sys.executable, 'launch.py', '--config=configs/deeplabv3plus.py:runlocal',
       '--workdir=/tmp/never', '--config.optimiser.lr=0.1'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert 'optimiser' in out.stderr
