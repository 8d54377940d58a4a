"""Every config file with every documented argument loads and validates; errors name keys."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from configs import common
from segjax import config as config_lib
from segjax import platform

ROOT = Path(__file__).resolve().parents[1]

# Every documented argument combination of every config file.
CONFIG_ARGS = {
    'deeplabv3plus.py': [
        '', 'runlocal', 'dataset=camvid', 'dataset=camvid,runlocal', 'dataset=isbi',
        'dataset=isbi,runlocal', 'dataset=pets', 'backbone=xception65',
        'backbone=xception65,output_stride=8', 'output_stride=8,runlocal', 'dataset=folder',
        'dataset=folder,runlocal', 'dataset=synthetic', 'dataset=cityscapes',
        'dataset=ade20k,runlocal', 'dataset=voc', 'dataset=voc_aug', 'dataset=pascal_context',
        'dataset=coco_stuff,runlocal'],
    'unet_mobilenetv2.py': [
        '', 'runlocal', 'freeze_encoder', 'dataset=camvid', 'dataset=isbi,runlocal',
        'dataset=synthetic', 'runlocal,freeze_encoder', 'dataset=folder'],
    'deeplabv3.py': [
        '', 'runlocal', 'backbone=resnet101,output_stride=8', 'backbone=resnet152,aux',
        'torchvision', 'dataset=camvid,runlocal', 'dataset=folder,runlocal'],
    'fcn.py': [
        '', 'runlocal', 'variant=16s', 'variant=32s,upsample=transposed',
        'backbone=resnet50,variant=8s', 'backbone=resnet101,torchvision', 'dataset=isbi',
        'dataset=folder'],
    'segnet.py': [
        '', 'runlocal', 'bayesian', 'bayesian,mc_samples=8,dataset=synthetic,runlocal',
        'dataset=folder,runlocal'],
    'dsrfcn.py': ['', 'runlocal', 'dataset=camvid', 'dataset=folder'],
    'deeplab_v1_v2.py': ['', 'runlocal', 'version=2', 'version=2,runlocal,dataset=isbi',
                         'version=2,backbone=resnet50', 'crf', 'dataset=camvid,crf',
                         'dataset=folder'],
    'camvid.py': ['', 'recipe=cpu', 'split=trainval', 'recipe=cpu,split=trainval',
                  'recipe=cpu,split=heldout',
                  'class_weights=none', 'class_weights=median,output_stride=8',
                  'recipe=cpu,crop=96x144,steps=200', 'backbone=xception65'],
    'pets_unet_tutorial.py': ['', 'dataset=synthetic', 'dataset=synthetic,steps=20'],
    'camvid_sepres_fcn.py': ['', 'split=heldout', 'lab', 'split=heldout,lab,steps=90'],
    'satellite_fcn32s.py': ['', 'steps=100', 'train_images=16,crops_per_image=1',
                            'variant=16s', 'variant=8s,steps=50'],
    'satellite_deeplabv3_r101.py': ['', 'steps=100', 'train_images=16,crops_per_image=1'],
    'benchmarks_deeplabv3plus.py': [
        '', 'runlocal', 'backbone=resnet101,iters=40k', 'dataset=ade20k,iters=160k',
        'dataset=voc_aug,iters=20k,tta', 'dataset=voc_aug,runlocal'],
}
# Files whose docstring documents their arguments by pointing at another file.
ARGS_DOCUMENTED_IN = {'satellite_deeplabv3_r101.py': 'satellite_fcn32s.py'}


def module(name):
  spec = importlib.util.spec_from_file_location(name[:-3], ROOT / 'configs' / name)
  m = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(m)
  return m


def load(name, arg):
  return module(name).get_config(arg)


def accepted_arguments(name):
  """The argument names get_config accepts, from its own error message."""
  with pytest.raises(ValueError, match='accepted') as e:
    load(name, 'no_such_argument=1')
  return set(re.findall(r"'(\w+)'", str(e.value).split('accepted:')[1]))


def test_every_config_file_is_listed():
  files = {p.name for p in (ROOT / 'configs').glob('*.py')} - {'__init__.py', 'common.py'}
  assert files == set(CONFIG_ARGS)


@pytest.mark.parametrize('name,arg', [(n, a) for n, args in CONFIG_ARGS.items() for a in args])
def test_config_loads_and_validates(name, arg):
  c = load(name, arg)
  if c.data.name == 'folder':
    c.data.root = '/some/dataset'
  if not c.data.num_classes:  # dataset=folder: the number of classes is the user's.
    c.data.num_classes = 5
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
    load('deeplabv3plus.py', 'dataset=mapillary')


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


@pytest.mark.parametrize('name', sorted(CONFIG_ARGS))
def test_every_argument_is_documented_and_loaded(name):
  """Each name get_config accepts is in the file's docstring (its Arguments
  list) and in at least one of this file's CONFIG_ARGS for that file."""
  accepted = accepted_arguments(name)
  assert accepted
  doc = module(ARGS_DOCUMENTED_IN.get(name, name)).__doc__
  used = {item.partition('=')[0] for arg in CONFIG_ARGS[name] for item in arg.split(',') if item}
  for arg in accepted:
    assert re.search(rf'^  {arg}\b', doc, re.M), f'{name}: argument {arg!r} is not documented'
    assert arg in used, f'{name}: argument {arg!r} is never loaded by test_config_loads_and_validates'


@pytest.mark.parametrize('name,arg', [(n, a) for n, args in CONFIG_ARGS.items() for a in args])
def test_no_config_has_a_default_data_root(name, arg):
  """A developer machine's path is no default; --config.data.root sets it."""
  assert load(name, arg).data.root == ''


def test_folder_dataset_needs_root():
  for name, arg in (('deeplabv3plus.py', 'dataset=camvid'), ('camvid.py', ''),
                    ('camvid_sepres_fcn.py', ''), ('segnet.py', '')):
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.validate(load(name, arg))
    assert str(e.value) == ("config key 'data.root' is empty but data.name='folder' reads a "
                            'folder: set it with --config.data.root=/path/to/dataset')


# The recipe keys camvid.py states, by value: what TRAINING['camvid'] must say.
CAMVID_RECIPE = {
    '': {'data.crop_size': (352, 480), 'batch_size': 16, 'total_steps': 20000,
         'optimizer.lr': 1e-3, 'schedule.warmup_steps': 1000, 'ema.decay': 0.9995},
    'recipe=cpu': {'data.resize': (180, 240), 'data.crop_size': (144, 192), 'batch_size': 8,
                   'total_steps': 1400, 'optimizer.lr': 2e-3, 'schedule.warmup_steps': 50,
                   'ema.decay': 0.995},
}


@pytest.mark.parametrize('row,arg', [('full', ''), ('runlocal', 'recipe=cpu')])
def test_one_camvid_recipe(row, arg):
  """configs/camvid.py is the CamVid recipe: deeplabv3plus.py:dataset=camvid is
  that config, and the TRAINING rows the other architectures use agree with it."""
  camvid = load('camvid.py', arg)
  for key, value in CAMVID_RECIPE[arg].items():
    assert camvid[key] == value, key
  sqrt = tuple(round(w**0.5, 4) for w in common.CAMVID_CLASS_WEIGHTS)
  assert camvid.loss.class_weights == sqrt and sqrt[6] == 3.1056  # sqrt(9.6446), SignSymbol.
  for key, value in {**common.DATASETS['camvid'], **common.TRAINING['camvid'][row]}.items():
    assert camvid[key] == value, key
  dlv3p = load('deeplabv3plus.py', 'dataset=camvid' + (',runlocal' if arg else ''))
  assert dlv3p.to_dict() == camvid.to_dict()
  # Another architecture on CamVid: the same data, crops, warm-up and EMA; its
  # own optimizer (SGD), and runlocal's shorter run for a heavy model.
  fcn = load('fcn.py', 'dataset=camvid' + (',runlocal' if arg else ''))
  own = {'optimizer.lr'} | ({'batch_size', 'total_steps'} if arg else set())
  for key in set(CAMVID_RECIPE[arg]) - own:
    assert fcn[key] == camvid[key], key


def _config(**values):
  c = config_lib.base_config()
  for key, value in values.items():
    section, _, leaf = key.replace('__', '.').rpartition('.')
    target = c[section] if section else c
    with target.ignore_type():
      target[leaf] = value
  return c


@pytest.mark.parametrize('values,message', [
    (dict(total_steps=300, schedule__warmup_steps=1000),
     "config keys 'schedule.warmup_steps' = 1000, 'total_steps' = 300: the warm-up must end "
     'before the last step (0 <= warmup_steps < total_steps)'),
    (dict(total_steps=300, schedule__warmup_steps=300), "'schedule.warmup_steps' = 300"),
    (dict(total_steps=1000, schedule__name='step', schedule__boundaries=(0.75, 0.5)),
     "config keys 'schedule.boundaries' = (0.75, 0.5), 'schedule.warmup_steps' = 0, "
     "'total_steps' = 1000: the boundaries are steps [750, 500]"),
    (dict(total_steps=1000, schedule__warmup_steps=100, schedule__name='step',
          schedule__boundaries=(50.0, 900.0)), 'steps [50, 900]; they must increase and lie '
     'inside (100, 1000)'),
    (dict(schedule__name='step'), "'schedule.name' = 'step', 'schedule.boundaries' = ()"),
    (dict(data__resize=(100, 100), data__crop_size=(151, 100), augment__scale_range=(1.0, 1.5)),
     "config keys 'data.crop_size' = (151, 100), 'data.resize' = (100, 100), "
     "'augment.scale_range' = (1.0, 1.5): the crop is larger"),
    (dict(augment__hue=0.7), "config key 'augment.hue' must be in [0, 0.5], got 0.7"),
    (dict(data__num_classes=11),
     'class_names has 4 names but num_classes=11; give 11 with --config.data.class_names / '
     '--config.data.palette, or () for class_0..class_10'),
])
def test_cross_key_checks_name_keys_and_values(values, message):
  c = _config(**{'data.num_classes': 4, 'data.class_names': ('a', 'b', 'c', 'd'), **{
      k.replace('__', '.'): v for k, v in values.items()}})
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert message in str(e.value) and '\n' not in str(e.value)


def test_cross_key_checks_accept_the_edges():
  # 150 = 100 x 1.5: the largest scaled image still fills the crop.
  config_lib.validate(_config(**{'data.resize': (100, 100), 'data.crop_size': (150, 150),
                                 'augment.scale_range': (1.0, 1.5)}))
  config_lib.validate(_config(total_steps=300, **{'schedule.warmup_steps': 299}))
  # Without data.resize the image size is unknown: a small synthetic set is padded.
  config_lib.validate(_config(**{'data.synthetic_size': (24, 32), 'data.crop_size': (64, 64)}))
  config_lib.validate(_config(total_steps=1000, **{
      'schedule.name': 'step', 'schedule.boundaries': (0.5, 900.0)}))
  config_lib.validate(_config(batch_size=12, **{'eval.batch_size': 6}), devices=6, processes=2)


@pytest.mark.parametrize('key,value,devices,processes,message', [
    ('batch_size', 8, 3, 1, "config key 'batch_size' = 8 is not divisible by the 3 devices"),
    ('eval.batch_size', 5, 1, 2,
     "config key 'eval.batch_size' = 5 is not divisible by the 2 processes"),
])
def test_batch_sizes_against_devices(key, value, devices, processes, message):
  c = _config(**{key: value})
  config_lib.validate(c)  # Without a device count nothing is checked.
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, devices=devices, processes=processes)
  assert str(e.value).startswith(message)


def test_xla_cpu_flags_are_set_by_a_call_not_by_import():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  added = platform.configure_xla_cpu(env)
  assert env['XLA_FLAGS'] == (
      '--xla_force_host_platform_device_count=2 '
      '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution '
      '--xla_cpu_enable_concurrency_optimized_scheduler=false')
  assert len(added) == 2 and platform.configure_xla_cpu(env) == []  # Idempotent.
  mine = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=+individual_convolution'}
  platform.configure_xla_cpu(mine)  # The user's setting of a flag wins.
  assert mine['XLA_FLAGS'] == ('--xla_cpu_experimental_ynn_fusion_type=+individual_convolution '
                               '--xla_cpu_enable_concurrency_optimized_scheduler=false')
  out = subprocess.run(
      [sys.executable, '-c', 'import os, segjax, segjax.config, segjax.train; '
       'print(repr(os.environ.get("XLA_FLAGS")))'],
      cwd=ROOT, env={k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'},
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == 'None'


def test_command_line_typo_is_rejected():
  """--config.optimiser.lr fails before anything runs, naming the bad key."""
  out = subprocess.run(
      [sys.executable, 'launch.py', '--config=configs/deeplabv3plus.py:runlocal',
       '--workdir=/tmp/never', '--config.optimiser.lr=0.1'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert 'optimiser' in out.stderr


@pytest.mark.parametrize('values,message', [
    (dict(loss__terms='ce:1,lovas:0.5'),
     "config key loss.terms='ce:1,lovas:0.5': 'lovas' is not one of ce, dice, fbeta, focal, "
     'lovasz, ohem'),
    (dict(loss__terms='ce:1,focal'), "the weight of 'focal' must be a number >= 0"),
    (dict(loss__name='dice', loss__terms='ce:1'),
     "config keys 'loss.name' = 'dice', 'loss.terms' = 'ce:1': set one of them"),
    (dict(loss__ohem_top_k=0.0), "config key 'loss.ohem_top_k' must be in (0, 1]"),
    (dict(loss__focal_gamma=-1.0), "'loss.focal_gamma' must be >= 0"),
    (dict(loss__ohem_thresh=1.0), "'loss.ohem_thresh' must be in [0, 1) (0 = top-k OHEM)"),
    (dict(loss__lovasz_classes='some'), "config key 'loss.lovasz_classes' = 'some' is not one"),
    (dict(optimizer__backbone_lr_mult=-0.1),
     "config key 'optimizer.backbone_lr_mult' must be >= 0, got -0.1"),
])
def test_loss_and_optimizer_options_are_checked_in_one_line(values, message):
  c = _config(**values)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert message in str(e.value) and '\n' not in str(e.value)
  ok = _config(loss__terms='ce:1.0,lovasz:0.5', loss__lovasz_classes='all',
               optimizer__backbone_lr_mult=0.1, optimizer__decay_norms_and_biases=True)
  config_lib.validate(ok)
