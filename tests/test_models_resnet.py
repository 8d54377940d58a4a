"""Unit tests of the ResNet backbone and DeepLabV3 (no peer framework needed).

Shape and count checks use jax.eval_shape and strides/dilations are read from
the traced jaxpr (no XLA compilation); only a few tests run a forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.backbones import make_backbone
from segjax.models.backbones import resnet
from segjax.models.convert import resnet as convert_resnet
from segjax.models.deeplabv3 import DeepLabV3

# Parameter counts (params only; BN running statistics are in batch_stats)
# verified with torch 2.14.1 / torchvision 0.29.1 / keras 3.15.1 by
#   sum(p.numel() for k, p in resnet50(weights=None).named_parameters()
#       if not k.startswith('fc.'))
#   sum(p.numel() for p in deeplabv3_resnet50(weights=None, weights_backbone=None,
#       num_classes=21, aux_loss=True).parameters())
#   sum(prod(w.shape) for w in ResNet50(weights=None, include_top=False).trainable_weights)
# (the parity tests also check leaf by leaf that converted peer weights fit).
TORCHVISION_RESNET_PARAMS = {50: 23_508_032, 101: 42_500_160, 152: 58_143_808}
TORCHVISION_DEEPLABV3_AUX_PARAMS = {50: 42_004_074, 101: 60_996_202}   # num_classes=21.
TORCHVISION_DEEPLABV3_NOAUX_PARAMS = {50: 39_638_869, 101: 58_630_997}  # aux_loss=False.
KERAS_RESNET50_PARAMS = 23_534_592           # Trainable weights (conv biases included).
KERAS_RESNET50_BN_STATS = 53_120             # Its non-trainable moving mean/variance.


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_init(module, shape):
  return jax.eval_shape(lambda: module.init_with_output(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
      jnp.zeros(shape, jnp.float32), train=False))


def fake_variables(module, shape, seed=0):
  """Random variables with module.init's structure, without compiling init:
  He-normal kernels, random BN affine parameters and running statistics."""
  _, abstract = abstract_init(module, shape)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name, n = path[-1].key, leaf.shape
    if name == 'kernel':
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(n[:-1])), n)
    elif name in ('scale', 'var'):
      value = 0.5 + rng.random(n)
    else:
      value = 0.2 * rng.normal(size=n)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def conv_eqns(module, shape):
  """(kernel hw, window_strides, rhs_dilation, out channels) of every conv in
  execution order, from the traced apply (no compilation)."""
  _, variables = abstract_init(module, shape)
  jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x, train=False))(
      variables, jax.ShapeDtypeStruct(shape, jnp.float32))
  out = []

  def walk(jpr):
    for eqn in jpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated':
        rhs = eqn.invars[1].aval.shape  # HWIO.
        out.append((tuple(rhs[:2]), tuple(eqn.params['window_strides']),
                    tuple(eqn.params['rhs_dilation']), rhs[3]))
      for p in eqn.params.values():  # Nested jaxprs (pjit, custom_jvp, ...).
        if hasattr(p, 'jaxpr') and hasattr(p.jaxpr, 'eqns'):
          walk(p.jaxpr)
        elif hasattr(p, 'eqns'):
          walk(p)

  walk(jaxpr.jaxpr)
  return out


# ----------------------------------------------------------------------------- block table

# Hand-derived from torchvision's _make_layer (the first block of a dilated
# stage keeps the previous dilation at stride 1) for resnet50 (3, 4, 6, 3).
RESNET50_TABLE = {
    32: [[(1, 1)] * 3, [(2, 1)] + [(1, 1)] * 3, [(2, 1)] + [(1, 1)] * 5,
         [(2, 1), (1, 1), (1, 1)]],
    16: [[(1, 1)] * 3, [(2, 1)] + [(1, 1)] * 3, [(2, 1)] + [(1, 1)] * 5,
         [(1, 1), (1, 2), (1, 2)]],
    8: [[(1, 1)] * 3, [(2, 1)] + [(1, 1)] * 3, [(1, 1)] + [(1, 2)] * 5,
        [(1, 2), (1, 4), (1, 4)]],
}
# multi_grid (1, 2, 4): layer4 block i at rate * multi_grid[i], rate = 1 / 2 / 4.
RESNET50_MULTI_GRID_LAYER4 = {32: [(2, 1), (1, 2), (1, 4)], 16: [(1, 2), (1, 4), (1, 8)],
                              8: [(1, 4), (1, 8), (1, 16)]}


@pytest.mark.parametrize('output_stride', [32, 16, 8])
def test_resnet_blocks_table(output_stride):
  assert resnet.resnet_blocks(50, output_stride) == RESNET50_TABLE[output_stride]
  with_grid = resnet.resnet_blocks(50, output_stride, (1, 2, 4))
  assert with_grid[:3] == RESNET50_TABLE[output_stride][:3]
  assert with_grid[3] == RESNET50_MULTI_GRID_LAYER4[output_stride]


@pytest.mark.parametrize('depth,counts', [(101, (3, 4, 23, 3)), (152, (3, 8, 36, 3))])
def test_resnet_blocks_depths(depth, counts):
  table = resnet.resnet_blocks(depth, 8)
  assert tuple(map(len, table)) == counts
  assert table[2] == [(1, 1)] + [(1, 2)] * (counts[2] - 1)


@pytest.mark.parametrize('kwargs,match', [
    (dict(depth=34), 'depth 34'),
    (dict(depth=50, output_stride=4), 'output_stride 4'),
    (dict(depth=50, multi_grid=(1, 2)), r'multi_grid \(1, 2\)'),
    (dict(depth=50, multi_grid=(1, 0, 2)), r'multi_grid \(1, 0, 2\)'),
    (dict(depth=50, multi_grid=(1, 2.0, 4)), 'multi_grid'),
])
def test_resnet_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    resnet.resnet_blocks(**kwargs)
  with pytest.raises(ValueError, match=match):
    resnet.ResNet(**kwargs)


def test_resnet_module_errors():
  with pytest.raises(ValueError, match="padding 'VALID'"):
    resnet.ResNet(padding='VALID')
  with pytest.raises(ValueError, match="dtype 'int8'"):
    resnet.ResNet(dtype='int8')
  with pytest.raises(ValueError, match='width_multiplier=0.5'):
    make_backbone('resnet50', width_multiplier=0.5)


# ----------------------------------------------------------------------------- ResNet module


@pytest.mark.parametrize('depth', [50, 101, 152])
def test_resnet_param_count(depth):
  _, variables = abstract_init(resnet.ResNet(depth=depth), (1, 64, 64, 3))
  assert count(variables['params']) == TORCHVISION_RESNET_PARAMS[depth]


def test_keras_resnet50_param_count():
  module = convert_resnet.CONVERTERS[('keras', 'resnet50')].build()
  _, variables = abstract_init(module, (1, 64, 64, 3))
  assert count(variables['params']) == KERAS_RESNET50_PARAMS
  assert count(variables['batch_stats']) == KERAS_RESNET50_BN_STATS
  # Conv biases only exist with conv_bias=True.
  assert 'bias' in variables['params']['layer1_0']['conv1']
  _, plain = abstract_init(resnet.ResNet(), (1, 64, 64, 3))
  assert 'bias' not in plain['params']['layer1_0']['conv1']


def torch_out(size, k, s, p):
  # PyTorch conv/pool output size: floor((in + 2p - k) / s) + 1.
  return (size + 2 * p - k) // s + 1


@pytest.mark.parametrize('output_stride', [32, 16, 8])
def test_resnet_feature_shapes(output_stride):
  h, w = 65, 97
  feats, _ = abstract_init(resnet.ResNet(output_stride=output_stride), (2, h, w, 3))
  hw = [(torch_out(h, 7, 2, 3), torch_out(w, 7, 2, 3))]   # conv1.
  hw.append(tuple(torch_out(v, 3, 2, 1) for v in hw[0]))  # Max pool = layer1.
  for stage in range(3):                                   # layer2..4: 3x3 convs.
    stride = 2 if 8 * 2 ** stage <= output_stride else 1
    hw.append(tuple(torch_out(v, 3, stride, 1) for v in hw[-1]))
  channels = (64, 256, 512, 1024, 2048)
  for i, (key, c) in enumerate(zip(('stride2', 'stride4', 'stride8', 'stride16', 'stride32'),
                                   channels)):
    assert feats[key].shape == (2, *hw[i], c), key
  assert feats['stride32'].shape[1:3] == (-(-h // output_stride), -(-w // output_stride))
  # TF 'SAME': every stride-2 layer gives ceil(in / 2).
  feats, _ = abstract_init(resnet.ResNet(output_stride=output_stride, padding='SAME'),
                           (1, h, w, 3))
  for key in ('stride2', 'stride4', 'stride8', 'stride16', 'stride32'):
    stride = min(int(key[6:]), output_stride)
    assert feats[key].shape[1:3] == (-(-h // stride), -(-w // stride)), key


@pytest.mark.parametrize('output_stride,multi_grid', [(32, None), (16, None), (8, None),
                                                      (16, (1, 2, 4)), (8, (1, 2, 3))])
def test_resnet_convs_follow_table(output_stride, multi_grid):
  """The traced 3x3 convs have the table's strides and dilations, in order."""
  module = resnet.ResNet(output_stride=output_stride, multi_grid=multi_grid)
  convs = conv_eqns(module, (1, 33, 33, 3))
  got = [(s[0], d[0]) for k, s, d, _ in convs if k == (3, 3)]
  want = [b for stage in resnet.resnet_blocks(50, output_stride, multi_grid) for b in stage]
  assert got == want
  if multi_grid == (1, 2, 3):
    assert [d for _, d in got[-3:]] == [4, 8, 12]


def test_resnet_stride_in_1x1(monkeypatch):
  """v1 (Keras): stride-2 sits on the first 1x1 conv and the shortcut, 3x3 at stride 1."""
  # The convolutions as written (on CPU, 1x1 convs are otherwise lowered to dots).
  monkeypatch.setenv('SEGJAX_CONV_IMPL', 'xla')
  convs = conv_eqns(resnet.ResNet(stride_in_1x1=True), (1, 33, 33, 3))
  strided = [(k, c) for k, s, _, c in convs if s == (2, 2)]
  # conv1 (7x7) and, for layer2..4, conv1 (1x1, width) and downsample (1x1, 4x width).
  assert strided == [((7, 7), 64)] + [((1, 1), c) for w in (128, 256, 512)
                                      for c in (w, 4 * w)]
  v15 = conv_eqns(resnet.ResNet(), (1, 33, 33, 3))
  assert [(k, c) for k, s, _, c in v15 if s == (2, 2)] == [((7, 7), 64)] + [
      ((k, k), c) for w in (128, 256, 512) for k, c in ((3, w), (1, 4 * w))]


def test_resnet_forward_values():
  """Forward pass on a small input: every feature is a (non-trivial) ReLU output
  and 'stride2' is relu(bn1(conv1(x))) before the max pool, recomputed with lax."""
  module = resnet.ResNet()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 33, 47, 3)), jnp.float32)
  variables = fake_variables(module, x.shape)
  feats = jax.jit(lambda v, y: module.apply(v, y, train=False))(variables, x)
  for key, v in feats.items():
    assert bool(jnp.all(v >= 0)) and bool(jnp.any(v > 0)), key
  # The stem equals relu(BN(conv1(x))) computed independently with lax.
  p, s = variables['params'], variables['batch_stats']
  y = jax.lax.conv_general_dilated(x, p['conv1']['kernel'], (2, 2), ((3, 3), (3, 3)),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y = (y - s['bn1']['mean']) / jnp.sqrt(s['bn1']['var'] + 1e-5) * p['bn1']['scale'] \
      + p['bn1']['bias']
  np.testing.assert_allclose(feats['stride2'], jnp.maximum(y, 0), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- DeepLabV3


@pytest.mark.parametrize('depth', [50, 101])
def test_deeplabv3_param_count(depth):
  tv = DeepLabV3(21, f'resnet{depth}', output_stride=8, multi_grid=None, aux_head=True)
  out, variables = abstract_init(tv, (1, 65, 97, 3))
  assert count(variables['params']) == TORCHVISION_DEEPLABV3_AUX_PARAMS[depth]
  assert set(out) == {'logits', 'aux'}
  assert out['logits'].shape == out['aux'].shape == (1, 65, 97, 21)
  # The paper's default (OS 16, multi-grid) has the same weights; no aux head.
  out, variables = abstract_init(DeepLabV3(21, f'resnet{depth}'), (1, 65, 97, 3))
  assert count(variables['params']) == TORCHVISION_DEEPLABV3_NOAUX_PARAMS[depth]
  assert out.shape == (1, 65, 97, 21) and out.dtype == jnp.float32


@pytest.mark.parametrize('shape', [(2, 33, 47, 3), (1, 97, 129, 3), (1, 64, 64, 3)])
def test_deeplabv3_output_shapes(shape):
  out, variables = abstract_init(DeepLabV3(5, aux_head=True, dtype='bfloat16'), shape)
  assert out['logits'].shape == out['aux'].shape == (*shape[:3], 5)
  assert out['logits'].dtype == out['aux'].dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(variables['params'])} == {jnp.dtype(jnp.float32)}
  assert set(variables['params']) == {'backbone', 'aspp', 'head', 'classifier', 'aux_head'}


@pytest.mark.parametrize('output_stride,rates,layer4', [
    (16, (6, 12, 18), [2, 4, 8]), (8, (12, 24, 36), [4, 8, 16]), (32, (3, 6, 9), [1, 2, 4])])
def test_deeplabv3_dilations(output_stride, rates, layer4):
  """Default ASPP rates per output stride and multi-grid layer4 rates, from the trace."""
  convs = conv_eqns(DeepLabV3(3, output_stride=output_stride), (1, 33, 33, 3))
  dilated_3x3 = [d[0] for k, _, d, _ in convs if k == (3, 3)]
  # 16 backbone 3x3 convs, then ASPP's three atrous branches, then the head conv.
  assert dilated_3x3[13:16] == layer4
  assert dilated_3x3[16:] == [*rates, 1]
  convs = conv_eqns(DeepLabV3(3, output_stride=16, multi_grid=None, aspp_rates=(2, 3, 5)),
                    (1, 33, 33, 3))
  assert [d[0] for k, _, d, _ in convs if k == (3, 3)][13:] == [1, 2, 2, 2, 3, 5, 1]


def test_deeplabv3_freeze_encoder():
  """freeze_encoder: backbone BN keeps its running stats in training and gets no
  gradient; the head still trains."""
  model = DeepLabV3(3, aux_head=True, freeze_encoder=True, aspp_channels=16, aux_channels=8)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 33, 33, 3)), jnp.float32)
  variables = fake_variables(model, x.shape)

  @jax.jit
  def loss_and_state(params):
    out, state = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                             train=True, mutable=['batch_stats'],
                             rngs={'dropout': jax.random.key(2)})
    return jnp.mean(out['logits'] ** 2) + jnp.mean(out['aux'] ** 2), state

  grads, state = jax.grad(loss_and_state, has_aux=True)(variables['params'])
  assert all(bool(jnp.all(g == 0)) for g in jax.tree.leaves(grads['backbone']))
  assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads['head']))
  assert jax.tree.all(jax.tree.map(jnp.array_equal, state['batch_stats']['backbone'],
                                   variables['batch_stats']['backbone']))
  assert not jnp.array_equal(state['batch_stats']['head']['bn']['mean'],
                             variables['batch_stats']['head']['bn']['mean'])


def test_deeplabv3_backbone_kwargs_and_other_backbones():
  m = DeepLabV3(4, backbone_kwargs=[['conv_bias', True], ['stride_in_1x1', True]])
  assert m.backbone_kwargs == (('conv_bias', True), ('stride_in_1x1', True))
  hash(m)  # Hashable for jit's static arguments.
  assert DeepLabV3(4, backbone_kwargs={'conv_bias': True}).backbone_kwargs == (
      ('conv_bias', True),)
  _, variables = abstract_init(m, (1, 33, 33, 3))
  assert 'bias' in variables['params']['backbone']['layer4_2']['conv3']
  out, variables = abstract_init(DeepLabV3(4, 'mobilenetv2', multi_grid=None), (1, 33, 47, 3))
  assert out.shape == (1, 33, 47, 4)


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_classes=0), 'num_classes 0'),
    (dict(output_stride=4), 'output_stride 4'),
    (dict(aspp_rates=(6, 0, 18)), r'aspp_rates \(6, 0, 18\)'),
    (dict(aspp_dropout=1.0), 'aspp_dropout 1.0'),
    (dict(head_dropout=-0.1), 'head_dropout -0.1'),
    (dict(aspp_channels=0), 'aspp_channels 0'),
    (dict(multi_grid=(1, 2)), r'multi_grid \(1, 2\)'),
    (dict(backbone='mobilenetv2'), r'multi_grid \(1, 2, 4\)'),
    (dict(backbone='resnet18'), "backbone 'resnet18'"),
    (dict(backbone_kwargs={'depth_x': 1}), 'depth_x'),
    (dict(backbone_kwargs=3), 'backbone_kwargs 3'),
    (dict(padding='VALID'), "padding 'VALID'"),
])
def test_deeplabv3_errors(kwargs, match):
  args = dict(num_classes=3)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    DeepLabV3(**args)
