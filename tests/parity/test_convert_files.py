"""Weight files written by the peers themselves, read without them, through
`python -m segjax.tools.convert_weights` and `config.model.pretrained` into training.

Peers: torch.save (zip and legacy formats), Keras 3 `save_weights` and the
legacy HDF5 layout of keras.applications downloads, torchvision models.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import models
from segjax import optim
from segjax import sharding
from segjax import train
from segjax.models import convert
from segjax.models.convert import common
from segjax.models.convert import readers
from tests.parity import util

torch = pytest.importorskip('torch', reason=util.PEERS)
torchvision = pytest.importorskip('torchvision', reason='parity group needs torchvision')

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('zip_format', [True, False])
def test_torch_files_read_like_torch_load(tmp_path, zip_format):
  """torch.save in both on-disk formats (torchvision's VGG and MobileNetV2
  downloads are the legacy one) reads back equal to torch.load, including
  non-contiguous views, shared storages, bfloat16 and wrapped checkpoints."""
  base = torch.randn(6, 7)
  sd = {'w': base.t(), 'part': base[2:4], 'bf': torch.randn(5).bfloat16(),
        'count': torch.tensor(3), 'conv.weight': torch.randn(4, 3, 3, 3)}
  path = tmp_path / 'sd.pth'
  torch.save({'state_dict': {f'module.{k}': v for k, v in sd.items()}, 'epoch': 9}, path,
             _use_new_zipfile_serialization=zip_format)
  got = readers.read_weights(str(path))
  assert set(got) == set(sd)
  for k, v in sd.items():
    ref = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
    assert np.array_equal(np.asarray(got[k], ref.dtype), ref), k


def test_torch_file_with_code_is_refused(tmp_path):
  path = tmp_path / 'model.pth'
  torch.save(torch.nn.Linear(2, 2), path)  # A pickled module, not a state dict.
  with pytest.raises(readers.WeightsFileError, match='not a state dict.*state_dict'):
    readers.read_weights(str(path))


def test_keras_h5_files_both_layouts(tmp_path):
  """Keras 3 `.weights.h5` (groups named by class and position) and the
  legacy layout (layer names) both read as '<layer>/<i>' like the model's own
  weights, for keras.applications.MobileNetV2."""
  os.environ.setdefault('KERAS_BACKEND', 'jax')
  keras = pytest.importorskip('keras')
  import h5py
  from keras.src.legacy.saving import legacy_h5_format
  model = keras.applications.MobileNetV2(weights=None, include_top=False,
                                         input_shape=(64, 64, 3))
  util.randomize_keras_bn(model, seed=3)
  want = util.keras_weights(model)
  conv = convert.get_converter('keras', 'mobilenetv2')
  assert conv.keras_layers() == [(l.name, type(l).__name__) for l in model.layers if l.weights]
  new = tmp_path / 'm.weights.h5'
  model.save_weights(new)
  legacy = tmp_path / 'm_legacy.h5'
  with h5py.File(legacy, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  for path in (new, legacy):
    got = readers.read_weights(str(path), conv.keras_layers())
    assert set(got) == set(want), path
    for k in want:
      assert np.array_equal(got[k], want[k]), (path, k)
  with pytest.raises(readers.WeightsFileError, match='pass the architecture'):
    readers.read_weights(str(new))


def _tiny_config(**model):
  c = config_lib.base_config()
  c.data.synthetic_size = c.data.crop_size = (64, 64)
  c.batch_size = 2
  for k, v in model.items():
    if k == 'kwargs':
      c.model.kwargs.update(v)
    else:
      c.model[k] = v
  return config_lib.validate(c)


def test_cli_converts_and_training_starts_from_it(tmp_path):
  """torch.save(torchvision mobilenet_v2) -> python -m segjax.tools.convert_weights ->
  config.model.pretrained: the train state's backbone holds exactly the
  converted weights and the head keeps its random init."""
  net = torchvision.models.mobilenet_v2(weights=None)
  util.randomize_torch_bn(net, seed=1)
  weights = tmp_path / 'mobilenet_v2.pth'
  torch.save(net.state_dict(), weights)
  out = tmp_path / 'converted'
  proc = subprocess.run([sys.executable, '-m', 'segjax.tools.convert_weights', '--from=torchvision',
                         '--arch=mobilenet_v2', f'--weights={weights}', f'--out={out}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  assert f'--config.model.pretrained={out}' in proc.stdout
  # Converting again into the same directory refuses to overwrite.
  again = subprocess.run([sys.executable, '-m', 'segjax.tools.convert_weights', '--from=torchvision',
                          '--arch=mobilenet_v2', f'--weights={weights}', f'--out={out}'],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 2 and 'exists' in again.stderr

  expected, meta = convert.convert('torchvision', 'mobilenet_v2', str(weights))
  c = _tiny_config(**meta['model'], name='deeplabv3plus', pretrained=str(out))
  assert c.model.kwargs.to_dict() == {'padding': 'SYMMETRIC',
                                      'backbone_kwargs': {'bn_epsilon': 1e-5}}
  model = train.build_model(c)
  tx, _ = optim.make_optimizer(c)
  mesh = sharding.make_mesh()
  state = train.init_state(c, model, tx, mesh)
  got_p = common.flatten(jax.device_get(state.params['backbone']))
  got_s = common.flatten(jax.device_get(state.batch_stats['backbone']))
  want_p = common.flatten(expected['params'])
  want_s = common.flatten(expected['batch_stats'])
  # Our DeepLabV3+ encoder stops before torchvision's features.18 (Conv_1).
  assert set(got_p) == set(want_p) - {'Conv_1/kernel', 'Conv_1_bn/scale', 'Conv_1_bn/bias'}
  for k in got_p:
    assert np.array_equal(got_p[k], want_p[k]), k
  for k in got_s:
    assert np.array_equal(got_s[k], want_s[k]), k
  random_state = train.init_state(_tiny_config(**meta['model'], name='deeplabv3plus'),
                                  model, tx, mesh)
  assert np.array_equal(jax.device_get(state.params['classifier']['kernel']),
                        jax.device_get(random_state.params['classifier']['kernel']))
  # With the converter's config entries the model's encoder computes
  # torchvision's features: stride16 = features.13's expand ReLU6 output.
  encoder = model._encoder(parent=None)  # pylint: disable=protected-access
  x = np.random.default_rng(0).standard_normal((1, 3, 65, 97)).astype(np.float32)
  feats = encoder.apply({'params': state.params['backbone'],
                         'batch_stats': state.batch_stats['backbone']},
                        jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
  taps = {}
  net.eval()
  net.features[14].conv[0].register_forward_hook(lambda m, i, o: taps.setdefault('s16', o))
  with torch.no_grad():
    net(torch.from_numpy(x))
  util.check('torchvision mobilenet_v2 vs segjax DeepLabV3+ encoder from config.model entries',
             feats['stride16'], taps['s16'].numpy().transpose(0, 2, 3, 1))


def test_whole_torchvision_model_through_pretrained_config(tmp_path):
  """torchvision deeplabv3_resnet50 (with aux head), converted and loaded as
  config.model.pretrained with the config entries the converter names, gives
  torchvision's 'out' and 'aux' from our train state."""
  from torchvision.models.segmentation import deeplabv3_resnet50
  net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=True)
  util.randomize_torch_bn(net, seed=2)
  net.eval()
  weights = tmp_path / 'dlv3.pth'
  torch.save(net.state_dict(), weights)
  variables, meta = convert.convert('torchvision', 'deeplabv3_resnet50', str(weights))
  assert meta['num_classes'] == 5
  out = convert.save_pretrained(str(tmp_path / 'conv'), variables, meta)
  c = _tiny_config(**meta['model'], pretrained=out)
  c.data.num_classes = 5
  c.data.class_names = ()
  c.data.palette = ()
  config_lib.validate(c)
  model = train.build_model(c)
  tx, _ = optim.make_optimizer(c)
  state = train.init_state(c, model, tx, sharding.make_mesh())
  x = np.random.default_rng(0).standard_normal((1, 3, 65, 97)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x))
  ours = model.apply(train.variables_of(state), jnp.asarray(x.transpose(0, 2, 3, 1)),
                     train=False)
  util.check('torchvision deeplabv3_resnet50 vs segjax via config.model.pretrained: out',
             ours['logits'], ref['out'].numpy().transpose(0, 2, 3, 1))
  util.check('torchvision deeplabv3_resnet50 vs segjax via config.model.pretrained: aux',
             ours['aux'], ref['aux'].numpy().transpose(0, 2, 3, 1))
  assert models.MODELS[c.model.name] is type(model)


def test_keras_vgg16_notop_file_converts_and_matches(tmp_path):
  """keras.applications.VGG16(include_top=False) saved with save_weights ->
  convert('keras', 'vgg16_notop', file): pool5 equals Keras' output; the
  file given as --arch=vgg16 is refused by name."""
  os.environ.setdefault('KERAS_BACKEND', 'jax')
  keras = pytest.importorskip('keras')
  model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(40, 56, 3))
  path = tmp_path / 'vgg16_notop.weights.h5'
  model.save_weights(path)
  variables, meta = convert.convert('keras', 'vgg16_notop', str(path))
  assert meta['kind'] == 'backbone'
  x = np.random.default_rng(0).standard_normal((1, 40, 56, 3)).astype(np.float32)
  ours = convert.get_converter('keras', 'vgg16_notop').build().apply(
      variables, jnp.asarray(x), train=False)['stride32']
  util.check('keras VGG16(include_top=False) .weights.h5 vs segjax VGG16 stride32', ours,
             np.asarray(model(x)))
  with pytest.raises(readers.WeightsFileError, match='fc1'):
    convert.convert('keras', 'vgg16', str(path))
