"""Parity of segjax Xception65 with timm's xception65 (xception_aligned.py),
through segjax.models.convert.xception."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.convert import common
from segjax.models.convert import xception as xception_convert
from tests.parity import util

_STRIDES = ('stride2', 'stride4', 'stride8', 'stride16', 'stride32')


@pytest.fixture(scope='module')
def timm_xception65():
  """(timm xception65, its features_only twin with the same weights, converted
  variables)."""
  timm = pytest.importorskip('timm', reason="timm's xception65 is the peer")
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  model = timm.create_model('xception65', pretrained=False)
  util.randomize_torch_bn(model, seed=4)
  model.eval()
  feats = timm.create_model('xception65', pretrained=False, features_only=True)
  # features_only flattens the top-level Sequentials: 'blocks.3.x' -> 'blocks_3.x'.
  state = {re.sub(r'^(stem|blocks)\.(\d+)\.', r'\1_\2.', k): v
           for k, v in model.state_dict().items() if not k.startswith('head.')}
  feats.load_state_dict(state, strict=True)
  feats.eval()
  conv = xception_convert.CONVERTERS[('timm', 'xception65')]
  variables = conv.fn(common.SourceWeights(util.torch_weights(model)))
  return model, feats, variables


@pytest.mark.parametrize('hw', ((65, 97), (64, 96)), ids=lambda hw: f'{hw[0]}x{hw[1]}')
def test_timm_xception65_features(timm_xception65, hw):
  """timm xception65 forward_features and features_only taps (blocks.{0,1,2,19}
  .stack.act3, blocks.20) vs segjax Xception65(padding='SYMMETRIC') strides."""
  torch = pytest.importorskip('torch', reason=util.PEERS)
  model, feats, variables = timm_xception65
  assert feats.feature_info.reduction() == [2, 4, 8, 16, 32]
  x = np.random.default_rng(5).standard_normal((1, *hw, 3)).astype(np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)
  with torch.no_grad():
    final = model.forward_features(xt).permute(0, 2, 3, 1).numpy()
    taps = [t.permute(0, 2, 3, 1).numpy() for t in feats(xt)]
  module = xception_convert.CONVERTERS[('timm', 'xception65')].build()
  ours = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, jnp.asarray(x))
  util.check('timm xception65 forward_features vs segjax Xception65 stride32',
             ours['stride32'], final)
  for key, name, tap in zip(_STRIDES, feats.feature_info.module_name(), taps):
    util.check(f'timm xception65 features_only {name} vs segjax {key}', ours[key], tap)


def test_timm_xception65_conversion_matches_init_and_rejects_wrong_arch(timm_xception65):
  """timm xception65 weights: converted tree == our Xception65 init structure;
  a missing tensor, an extra block or MobileNetV2 weights are ConversionErrors."""
  model, _, _ = timm_xception65
  conv = xception_convert.CONVERTERS[('timm', 'xception65')]
  weights = util.torch_weights(model)
  module = conv.build()
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                train=False))
  common.check_matches(conv.fn(common.SourceWeights(weights)), abstract)

  missing = {k: v for k, v in weights.items() if k != 'blocks.19.shortcut.bn.running_mean'}
  with pytest.raises(common.ConversionError, match='blocks.19.shortcut.bn.running_mean'):
    conv.fn(common.SourceWeights(missing))
  extra = dict(weights, **{'blocks.21.stack.conv1.conv_dw.weight': np.zeros((1,))})
  with pytest.raises(common.ConversionError, match='blocks.21'):
    conv.fn(common.SourceWeights(extra))
  torchvision = pytest.importorskip('torchvision')
  mnv2 = util.torch_weights(torchvision.models.mobilenet_v2(weights=None))
  with pytest.raises(common.ConversionError, match="'stem.0.conv.weight' is missing"):
    conv.fn(common.SourceWeights(mnv2))
