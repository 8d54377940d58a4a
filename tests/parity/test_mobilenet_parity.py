"""Parity of segjax MobileNetV2 with keras.applications.MobileNetV2 and
torchvision.models.mobilenet_v2, through segjax.models.convert.mobilenet."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.backbones import mobilenet_v2
from segjax.models.convert import common
from segjax.models.convert import mobilenet
from tests.parity import util

# Odd sizes exercise the padding convention (Keras/TF 'SAME' pads a stride-2
# conv only at the bottom/right for even sizes, on both sides for odd ones).
SIZES = ((97, 65), (128, 96))


def _input(hw, seed=0):
  return np.random.default_rng(seed).standard_normal((1, *hw, 3)).astype(np.float32)


def _apply(module, variables, x):
  return jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, jnp.asarray(x))


def _abstract_vars(module, hw):
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, *hw, 3)),
                                            train=False))


# --- Keras ----------------------------------------------------------------------

def _keras_model(alpha, hw):
  keras = pytest.importorskip('keras', reason='Keras MobileNetV2 is the peer')
  # A fixed input shape: Keras' correct_pad needs static sizes to match TF 'SAME'.
  model = keras.applications.MobileNetV2(input_shape=(*hw, 3), alpha=alpha,
                                         include_top=False, weights=None)
  util.randomize_keras_bn(model, seed=1)
  return model


@pytest.mark.parametrize('hw', SIZES, ids=lambda hw: f'{hw[0]}x{hw[1]}')
@pytest.mark.parametrize('alpha', (1.0, 0.35))
def test_keras_mobilenetv2_output_and_unet_taps(alpha, hw):
  """keras.applications.MobileNetV2(include_top=False): out_relu and the five
  TF-tutorial U-Net taps vs segjax MobileNetV2(include_last_conv=True)."""
  keras = pytest.importorskip('keras', reason=util.PEERS)
  model = _keras_model(alpha, hw)
  arch = 'mobilenetv2' if alpha == 1.0 else f'mobilenetv2_{alpha}'
  conv = mobilenet.CONVERTERS[('keras', arch)]
  assert conv.keras_layers() == [(l.name, type(l).__name__) for l in model.layers
                                 if l.weights]
  variables = conv.fn(common.SourceWeights(util.keras_weights(model)))
  module = conv.build()

  taps = keras.Model(model.input, [model.get_layer(n).output
                                   for n in mobilenet_v2.UNET_TAPS] + [model.output])
  x = _input(hw)
  peer = [np.asarray(t) for t in taps(x, training=False)]
  ours = _apply(module, variables, x)
  for name, p in zip(mobilenet_v2.UNET_TAPS, peer[:-1]):
    util.check(f'keras MobileNetV2 a={alpha} {name} vs segjax {name}', ours[name], p)
  util.check(f'keras MobileNetV2 a={alpha} out_relu vs segjax stride32', ours['stride32'],
             peer[-1])


def test_keras_conversion_fits_models_and_rejects_wrong_arch():
  """keras.applications.MobileNetV2 weights: the converted tree matches our
  MobileNetV2's init exactly, loads into the encoders without Conv_1 after
  drop_optional_layers, and a wrong width or source is a ConversionError."""
  model = _keras_model(0.35, (64, 64))
  weights = util.keras_weights(model)
  conv = mobilenet.CONVERTERS[('keras', 'mobilenetv2_0.35')]
  converted = conv.fn(common.SourceWeights(weights))
  common.check_matches(converted, _abstract_vars(conv.build(), (64, 64)))

  # DeepLabV3+'s encoder (no Conv_1) and the U-Net's (also no block_16_project_BN).
  for kwargs, dropped in (({}, {'Conv_1', 'Conv_1_bn'}),
                          ({'final_project_bn': False},
                           {'Conv_1', 'Conv_1_bn', 'block_16_project_BN'})):
    target = _abstract_vars(mobilenet_v2.MobileNetV2(width_multiplier=0.35, **kwargs),
                            (64, 64))
    with pytest.raises(common.ConversionError, match='unexpected'):
      common.check_matches(converted, target)
    trimmed = mobilenet.drop_optional_layers(converted, target)
    common.check_matches(trimmed, target)
    assert set(converted['params']) - set(trimmed['params']) == dropped

  with pytest.raises(common.ConversionError, match='Conv1/0.*shape'):
    mobilenet.CONVERTERS[('keras', 'mobilenetv2_0.75')].fn(common.SourceWeights(weights))
  with pytest.raises(common.ConversionError, match="'features.0.0.weight' is missing"):
    mobilenet.CONVERTERS[('torchvision', 'mobilenet_v2')].fn(common.SourceWeights(weights))
  extra = dict(weights, **{'extra_dense/0': np.zeros((2, 2), np.float32)})
  with pytest.raises(common.ConversionError, match='extra_dense/0'):
    conv.fn(common.SourceWeights(extra))


# --- torchvision ------------------------------------------------------------------

@pytest.fixture(scope='module')
def torch_mobilenet():
  torchvision = pytest.importorskip('torchvision',
                                    reason='torchvision mobilenet_v2 is the peer')
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  model = torchvision.models.mobilenet_v2(weights=None)
  util.randomize_torch_bn(model, seed=2)
  return model.eval()


# torchvision module whose forward output is our feature of that name.
_TORCH_TAPS = {
    'block_1_expand_relu': 'features.2.conv.0',
    'block_3_expand_relu': 'features.4.conv.0',
    'block_6_expand_relu': 'features.7.conv.0',
    'block_13_expand_relu': 'features.14.conv.0',
    'block_16_project': 'features.17.conv.2',   # The project conv, before its BN.
    'stride32': 'features.18',                  # Conv_1 + BN + ReLU6.
}


@pytest.mark.parametrize('hw', SIZES, ids=lambda hw: f'{hw[0]}x{hw[1]}')
def test_torchvision_mobilenet_v2_features(torch_mobilenet, hw):
  """torchvision mobilenet_v2 features (features.18 output and, via forward
  hooks, the stage taps) vs segjax MobileNetV2(padding='SYMMETRIC')."""
  torch = pytest.importorskip('torch', reason=util.PEERS)
  conv = mobilenet.CONVERTERS[('torchvision', 'mobilenet_v2')]
  variables = conv.fn(common.SourceWeights(util.torch_weights(torch_mobilenet)))
  module = conv.build()
  modules = dict(torch_mobilenet.named_modules())
  peer, handles = {}, []
  for ours_name, torch_name in _TORCH_TAPS.items():
    def hook(_, __, out, ours_name=ours_name):
      peer[ours_name] = out.detach().permute(0, 2, 3, 1).numpy()
    handles.append(modules[torch_name].register_forward_hook(hook))
  x = _input(hw, seed=3)
  with torch.no_grad():
    final = torch_mobilenet.features(torch.from_numpy(x).permute(0, 3, 1, 2))
  for h in handles:
    h.remove()
  ours = _apply(module, variables, x)
  np.testing.assert_array_equal(peer['stride32'], final.permute(0, 2, 3, 1).numpy())
  for name in _TORCH_TAPS:
    util.check(f'torchvision mobilenet_v2 {_TORCH_TAPS[name]} vs segjax {name}',
               ours[name], peer[name])


def test_torchvision_conversion_matches_init_and_rejects_wrong_arch(torch_mobilenet):
  """torchvision mobilenet_v2 weights: the converted tree equals our module's
  init structure; dropping a tensor or feeding a width-0.5 model errors."""
  torchvision = pytest.importorskip('torchvision', reason=util.PEERS)
  weights = util.torch_weights(torch_mobilenet)
  conv = mobilenet.CONVERTERS[('torchvision', 'mobilenet_v2')]
  common.check_matches(conv.fn(common.SourceWeights(weights)),
                       _abstract_vars(conv.build(), (64, 64)))
  missing = {k: v for k, v in weights.items() if k != 'features.5.conv.1.1.running_var'}
  with pytest.raises(common.ConversionError, match='features.5.conv.1.1.running_var'):
    conv.fn(common.SourceWeights(missing))
  half = util.torch_weights(torchvision.models.mobilenet_v2(weights=None, width_mult=0.5))
  with pytest.raises(common.ConversionError, match='shape'):
    conv.fn(common.SourceWeights(half))
  with pytest.raises(common.ConversionError, match="'Conv1/0' is missing"):
    mobilenet.CONVERTERS[('keras', 'mobilenetv2')].fn(common.SourceWeights(weights))
