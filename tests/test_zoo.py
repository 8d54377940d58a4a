"""The model zoo as a whole: every registered model has a config that trains a
step, freeze_encoder freezes every encoder, and parameter counts do not drift.

The counts are those of the architectures as published; where a peer exists
they equal the peer's (the parity tests load the peer's weights leaf for
leaf, so the shapes, hence the counts, are the peer's): torchvision
resnet50/101/152 without fc, vgg16 / vgg16_bn features, keras MobileNetV2
without Conv_1, timm xception65 without its head, torchvision
deeplabv3_resnet50 without the aux head (its `num_params` 42,004,074 with it).
"""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import models
from segjax import optim
from segjax import rng as rng_lib
from segjax import sharding
from segjax import train
from segjax.models import backbones

ROOT = Path(__file__).resolve().parents[1]

# Registered model -> (config file, argument) that trains it.
MODEL_CONFIGS = {
    'deeplabv3': ('deeplabv3.py', 'runlocal'),
    'deeplabv3plus': ('deeplabv3plus.py', 'runlocal'),
    'unet': ('unet_mobilenetv2.py', 'runlocal'),
    'fcn32s': ('fcn.py', 'variant=32s,runlocal'),
    'fcn16s': ('fcn.py', 'variant=16s,runlocal,upsample=transposed'),
    'fcn8s': ('fcn.py', 'runlocal'),
    'segnet': ('segnet.py', 'dataset=synthetic,runlocal'),
    'bayesian_segnet': ('segnet.py', 'bayesian,dataset=synthetic,runlocal'),
    'dsrfcn': ('dsrfcn.py', 'runlocal'),
    'deeplabv1': ('deeplab_v1_v2.py', 'runlocal'),
    'deeplabv2': ('deeplab_v1_v2.py', 'version=2,runlocal'),
    'sepres_fcn': ('camvid_sepres_fcn.py', ''),
    'fcn32s_sat': ('satellite_fcn32s.py', ''),
    'fcn16s_sat': ('satellite_fcn32s.py', 'variant=16s'),
    'fcn8s_sat': ('satellite_fcn32s.py', 'variant=8s'),
}

# (params, batch statistics) at num_classes=21 with the models' own defaults.
MODEL_PARAMS = {
    'deeplabv3': (39_638_869, 56_704),       # ResNet-50, multi-grid, OS 16.
    'deeplabv3plus': (2_725_573, 38_784),    # MobileNetV2.
    'unet': (6_497_333, 32_832),
    'fcn32s': (134_346_581, 0),              # VGG16 with fc6/fc7.
    'fcn16s': (134_357_354, 0),
    'fcn8s': (134_362_751, 0),
    'segnet': (29_451_413, 15_872),
    'bayesian_segnet': (29_451_413, 15_872),
    'dsrfcn': (1_109_407, 14_016),
    # VGG16 convs + fc6 3x3x512x1024 + fc7 1024x1024 + fc8 1024x21 (with biases).
    'deeplabv1': (20_505_429, 0),
    # ResNet-101 + four 3x3x2048x21 classifiers with biases.
    'deeplabv2': (44_048_532, 105_344),
    # tests/test_models_reference.py's hand count at 21 classes (checked below).
    'sepres_fcn': (17_847_278, 2_144),
    # tests/test_models_reference.py's hand counts at 7 classes + 14 x (32 + 1).
    'fcn32s_sat': (19_168_661, 960),
    'fcn16s_sat': (19_169_685, 1_984),
    'fcn8s_sat': (19_168_661, 960),
}
BACKBONE_PARAMS = {
    'mobilenetv2': (1_811_712, 31_552),
    'xception65': (37_867_312, 185_200),
    'resnet50': (23_508_032, 53_120),
    'resnet101': (42_500_160, 105_344),
    'resnet152': (58_143_808, 151_424),
    'vgg16': (14_714_688, 0),
    'vgg16_bn': (14_723_136, 8_448),
}


# Models whose freeze_encoder path is the same class and code as another's:
# FCN32s/FCN8s are FCN with another default variant (FCN16s is checked);
# SegNet is BayesianSegNet without dropout (BayesianSegNet is checked). Each
# second compiled step costs ~20 s of the cold suite.
_FREEZE_SHARED = {'fcn32s': 'fcn16s', 'fcn8s': 'fcn16s', 'segnet': 'bayesian_segnet'}
# DeepLab v1/v2 and the satellite FCN-32s: the VGG16 and ResNet-101 encoders
# whose freezing fcn16s and deeplabv3 (ResNet, the same backbone class) check; the freeze is the
# optimizer's mask over params['backbone'] and the encoder's BatchNorm mode.
_FREEZE_SHARED.update({'deeplabv1': 'fcn16s', 'deeplabv2': 'deeplabv3', 'fcn32s_sat': 'fcn16s'})
# Configs whose unfrozen training is run end to end elsewhere (encoder and head
# trained from the same config): only their freeze_encoder step is compiled here.
_TRAINED_ELSEWHERE = {
    'deeplabv3plus': 'tests/test_e2e.py::test_readme_command_trains_resumes_and_prints_table',
    'unet': 'tests/test_e2e.py::test_unet_tutorial_config_on_tfds_pets',
}


# Configs whose one jitted step costs minutes of a 2-core CPU (ResNet-101; the
# satellite FCNs' 512-channel transposed convolutions on VGG16): their configs
# load and validate (tests/test_config.py); the networks' structure, counts and
# freezing are tested in tests/test_models_reference.py and against PyTorch in
# tests/parity/test_reference_parity.py. The separable FCN steps at narrow widths.
_TOO_COSTLY_TO_STEP = {
    'deeplabv2': 'tests/test_models_reference.py::test_deeplabv2_structure_at_224',
    'fcn32s_sat': 'tests/test_models_reference.py::test_fcn_sat_structure_at_256',
    'fcn16s_sat': 'tests/test_models_reference.py::test_fcn_sat_structure_at_256',
    'fcn8s_sat': 'tests/test_models_reference.py::test_fcn_sat_structure_at_256',
}


# Narrower widths for the one-step test of models whose full width makes the
# compile slow on 2 cores (the same code paths; counts are checked above).
_STEP_KWARGS = {
    'sepres_fcn': {'stage_channels': (8, 8, 8, 8, 8), 'head_channels': 16},
}


def load_config(name, arg):
  spec = importlib.util.spec_from_file_location(name[:-3], ROOT / 'configs' / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def load_config_for_step(name, file, arg):
  c = load_config(file, arg)
  c.model.kwargs.update(_STEP_KWARGS.get(name, {}))
  return c


def count(module, hw=(64, 64)):
  shapes = jax.eval_shape(lambda: module.init(
      dict(zip(rng_lib.INIT_STREAMS, jax.random.split(jax.random.key(0)))),
      jnp.zeros((1, *hw, 3)), train=False))
  return (sum(x.size for x in jax.tree.leaves(shapes['params'])),
          sum(x.size for x in jax.tree.leaves(shapes.get('batch_stats', {}))))


def test_every_model_has_a_config_and_a_count():
  assert set(MODEL_CONFIGS) == set(models.MODELS) == set(MODEL_PARAMS)
  assert set(BACKBONE_PARAMS) == set(backbones.BACKBONES)
  for name, (file, arg) in MODEL_CONFIGS.items():
    assert load_config(file, arg).model.name == name


@pytest.mark.parametrize('name', sorted(MODEL_PARAMS))
def test_model_parameter_counts(name):
  assert count(models.get_model(name, num_classes=21)) == MODEL_PARAMS[name]


def test_hand_counts_agree():
  from tests import test_models_reference  # pylint: disable=g-import-not-at-top
  assert test_models_reference._sepres_counts_by_hand(3, 21) == MODEL_PARAMS['sepres_fcn']
  vgg, resnet101 = BACKBONE_PARAMS['vgg16'][0], BACKBONE_PARAMS['resnet101'][0]
  assert MODEL_PARAMS['deeplabv1'][0] == (vgg + 3 * 3 * 512 * 1024 + 1024 + 1024 * 1024 + 1024
                                         + 1024 * 21 + 21)
  assert MODEL_PARAMS['deeplabv2'][0] == resnet101 + 4 * (3 * 3 * 2048 * 21 + 21)
  seven = {'32s': 19_168_199, '16s': 19_169_223, '8s': 19_168_199}  # Ibid., 7 classes.
  for v, n in seven.items():
    assert MODEL_PARAMS[f'fcn{v}_sat'][0] == n + 14 * 32 + 14


@pytest.mark.parametrize('name', sorted(BACKBONE_PARAMS))
def test_backbone_parameter_counts(name):
  assert count(backbones.make_backbone(name, parent=None)) == BACKBONE_PARAMS[name]


def _one_step(c):
  """One jitted train step on a random batch; returns (state before, after, metrics)."""
  c.data.crop_size = (32, 32)
  c.batch_size = 2
  c.schedule.warmup_steps = 0  # A warmup would make the first step's learning rate 0.
  if c.data.name == 'folder':
    c.data.root = '/never/read'  # A random batch below; the config needs a root to validate.
  config_lib.validate(c)
  model = train.build_model(c)
  tx, schedule = optim.make_optimizer(c)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train.init_state(c, model, tx, mesh)
  before = jax.device_get(state)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, c.data.num_classes, (2, 32, 32)).astype(np.int32)
  labels[:, :4] = 255  # Some ignored pixels.
  batch = {'image': rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8), 'label': labels}
  step = train.jit_train_step(train.make_train_step(c, model, tx, schedule), mesh)
  state, metrics = step(state, sharding.to_global(batch, mesh), jax.random.key(0))
  return before, jax.device_get(state), jax.device_get(metrics)


def _changed(a, b):
  return {k: not np.array_equal(x, y) for k, (x, y) in _flat_pairs(a, b).items()}


def _flat_pairs(a, b):
  fa = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(a)}
  fb = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(b)}
  assert fa.keys() == fb.keys()
  return {k: (fa[k], fb[k]) for k in fa}


@pytest.mark.parametrize('name', sorted(set(MODEL_CONFIGS) - set(_TOO_COSTLY_TO_STEP)))
def test_config_trains_one_step_and_freeze_encoder_freezes(name):
  """The model's config trains (finite loss, encoder and head both move);
  with freeze_encoder the encoder's params and BN statistics stay bit-equal
  while the rest still trains."""
  file, arg = MODEL_CONFIGS[name]
  if name not in _TRAINED_ELSEWHERE:
    before, after, metrics = _one_step(load_config_for_step(name, file, arg))
    assert np.isfinite(metrics['loss']) and metrics['finite'] == 1.0
    assert int(after.step) == 1
    moved = _changed(before.params, after.params)
    enc = [k for k in moved if k.startswith("['backbone']")]
    head = [k for k in moved if not k.startswith("['backbone']")]
    assert enc and head
    assert any(moved[k] for k in enc) and any(moved[k] for k in head)

  if name in _FREEZE_SHARED:
    return  # Same class and encoder code path as _FREEZE_SHARED[name], checked there.
  c = load_config_for_step(name, file, arg)
  c.model.freeze_encoder = True
  c.model.allow_random_frozen_encoder = True  # No pretrained weights in tests.
  before, after, metrics = _one_step(c)
  assert np.isfinite(metrics['loss'])
  moved = _changed(before.params, after.params)
  assert not any(v for k, v in moved.items() if k.startswith("['backbone']"))
  assert any(v for k, v in moved.items() if not k.startswith("['backbone']"))
  stats = _changed(before.batch_stats, after.batch_stats)
  assert not any(v for k, v in stats.items() if k.startswith("['backbone']"))
