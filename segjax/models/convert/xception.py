"""Aligned Xception-65 weights from timm.

('timm', 'xception65'): timm.create_model('xception65') (timm
models/xception_aligned.py, a port of DeepLab's TF checkpoints) ->
`segjax.models.backbones.xception.Xception65` (kind 'backbone'). Names map
one-to-one (see that module's docstring):

  stem.{0,1}.{conv,bn}                    -> stem_{0,1}/{conv,bn}
  blocks.{i}.shortcut.{conv,bn}           -> blocks_{i}/shortcut/{conv,bn}
  blocks.{i}.stack.conv{j}.{conv_dw,bn_dw,conv_pw,bn_pw}
                                          -> blocks_{i}/conv{j}/{same}

timm pads symmetrically (padding='SYMMETRIC') with BatchNorm epsilon 1e-3.
timm's xception65 (not the pre-activation xception65p) has nothing between
the last block and the classifier (`act` is Identity), so its
forward_features is our 'stride32' and its features_only taps
(blocks.{0,1,2,19}.stack.act3, blocks.20) are our 'stride2' ... 'stride32'.
"""

from __future__ import annotations

import functools

from segjax.models.backbones import xception
from segjax.models.convert import common
from segjax.models.convert.common import ConversionError, Converter, SourceWeights

# The ImageNet classifier (head.fc) is not part of a backbone.
_IGNORE = (*common.TORCH_IGNORE, 'head.*')


def _bn(weights: SourceWeights, variables: dict, src: str, dst: str, channels: int) -> None:
  params, stats = common.torch_bn(weights, src)
  for key, value in (*params.items(), *stats.items()):
    if value.shape != (channels,):
      raise ConversionError(f'{weights.source}: tensor {src!r} ({key}) has shape '
                            f'{value.shape}, expected {(channels,)}')
  common.put_module(variables, dst, params, stats)


def _conv(weights: SourceWeights, variables: dict, src: str, dst: str,
          shape: tuple[int, int, int, int], depthwise: bool = False) -> None:
  """`shape` is torch's: (out, in/groups, kh, kw)."""
  w = weights.take(src + '.weight', shape)
  fn = common.torch_depthwise if depthwise else common.torch_conv
  common.put_module(variables, dst, {'kernel': fn(w)})


def convert_timm(weights: SourceWeights) -> dict:
  """timm xception65 state_dict -> our Xception65 variables."""
  v: dict = {}
  for i, (cin, cout) in enumerate(((3, 32), (32, 64))):
    _conv(weights, v, f'stem.{i}.conv', f'stem_{i}/conv', (cout, cin, 3, 3))
    _bn(weights, v, f'stem.{i}.bn', f'stem_{i}/bn', cout)
  for i, spec in enumerate(xception.xception65_blocks(32)):
    src, dst = f'blocks.{i}', f'blocks_{i}'
    cin = spec.in_channels
    for j, cout in enumerate(spec.out_channels, start=1):
      s, d = f'{src}.stack.conv{j}', f'{dst}/conv{j}'
      _conv(weights, v, s + '.conv_dw', d + '/conv_dw', (cin, 1, 3, 3), depthwise=True)
      _bn(weights, v, s + '.bn_dw', d + '/bn_dw', cin)
      _conv(weights, v, s + '.conv_pw', d + '/conv_pw', (cout, cin, 1, 1))
      _bn(weights, v, s + '.bn_pw', d + '/bn_pw', cout)
      cin = cout
    # timm's and our XceptionModule's rule; in Xception-65 every strided block
    # also changes the width, so it holds at any output_stride.
    if not spec.no_skip and (spec.in_channels != cin or spec.stride != 1):
      _conv(weights, v, f'{src}.shortcut.conv', f'{dst}/shortcut/conv',
            (cin, spec.in_channels, 1, 1))
      _bn(weights, v, f'{src}.shortcut.bn', f'{dst}/shortcut/bn', cin)
  weights.check_all_used(ignore=_IGNORE)
  return v


CONVERTERS: dict[tuple[str, str], Converter] = {
    ('timm', 'xception65'): Converter(
        fn=convert_timm,
        kind='backbone',
        build=functools.partial(xception.Xception65, padding='SYMMETRIC', bn_epsilon=1e-3),
        model={'backbone': 'xception65', 'padding': 'SYMMETRIC'},
        peer="timm.create_model('xception65')"),
}
