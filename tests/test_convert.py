"""Weight-import machinery that needs no peer framework: file readers,
consumption tracking, merging pretrained trees. Conversions themselves are
checked against the peers in tests/parity."""

import json
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from segjax.models import convert
from segjax.models.convert import common
from segjax.models.convert import readers


def write_safetensors(path, tensors, dtype_names):
  """An independent safetensors writer (the format's spec: u64 header length,
  JSON header with dtype/shape/data_offsets, raw little-endian data)."""
  header, blobs, offset = {}, [], 0
  for name, arr in tensors.items():
    raw = np.ascontiguousarray(arr).tobytes()
    header[name] = {'dtype': dtype_names[name], 'shape': list(arr.shape),
                    'data_offsets': [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  header['__metadata__'] = {'format': 'pt'}
  head = json.dumps(header).encode()
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(head)) + head + b''.join(blobs))


def test_safetensors_reader_roundtrip(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {'conv.weight': rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             'bn.num_batches_tracked': np.array(7, np.int64),
             'half': rng.standard_normal(5).astype(np.float16),
             'bf': rng.standard_normal(3).astype(ml_dtypes.bfloat16)}
  path = tmp_path / 'w.safetensors'
  write_safetensors(path, tensors, {'conv.weight': 'F32', 'bn.num_batches_tracked': 'I64',
                                    'half': 'F16', 'bf': 'BF16'})
  got = readers.read_weights(str(path))
  assert set(got) == set(tensors)
  for k, v in tensors.items():
    assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k


def test_truncated_and_unknown_files_are_named(tmp_path):
  path = tmp_path / 'w.safetensors'
  write_safetensors(path, {'a': np.ones((100,), np.float32)}, {'a': 'F32'})
  data = path.read_bytes()
  path.write_bytes(data[:-40])
  with pytest.raises(readers.WeightsFileError, match=r"w\.safetensors.*'a'.*truncated"):
    readers.read_weights(str(path))
  junk = tmp_path / 'junk.bin'
  junk.write_bytes(b'hello world, not weights')
  with pytest.raises(readers.WeightsFileError, match='junk.bin: unknown weights format'):
    readers.read_weights(str(junk))
  with pytest.raises(readers.WeightsFileError, match='no such file'):
    readers.read_weights(str(tmp_path / 'missing.pth'))


def test_keras_snake_case_matches_keras_naming():
  # keras.src.utils.naming.to_snake_case on the classes Keras 3 files name groups by.
  assert readers.keras_snake_case('Conv2D') == 'conv2d'
  assert readers.keras_snake_case('DepthwiseConv2D') == 'depthwise_conv2d'
  assert readers.keras_snake_case('BatchNormalization') == 'batch_normalization'
  assert readers.keras_snake_case('Conv2DTranspose') == 'conv2d_transpose'
  assert readers.keras_snake_case('Dense') == 'dense'


def test_source_weights_tracks_use():
  w = common.SourceWeights({'a.weight': np.ones((2, 3)), 'a.bias': np.zeros(2),
                            'bn.num_batches_tracked': np.array(1)}, source='f.pth')
  assert w.take('a.weight', (2, 3)).dtype == np.float32
  with pytest.raises(common.ConversionError, match=r"f\.pth.*'a.weight' is used twice"):
    w.take('a.weight')
  with pytest.raises(common.ConversionError, match=r"'a.bias' has shape \(2,\), expected \(3,\)"):
    w.take('a.bias', (3,))
  with pytest.raises(common.ConversionError, match="'nope' is missing"):
    w.take('nope')
  with pytest.raises(common.ConversionError, match=r"1 tensors were not mapped.*a\.bias"):
    w.check_all_used(ignore=common.TORCH_IGNORE)
  w.take('a.bias')
  w.check_all_used(ignore=common.TORCH_IGNORE)


def test_layout_transforms_against_direct_convolution():
  """A torch (out, in, kh, kw) kernel, converted, gives lax.conv the same
  output as the cross-correlation written out with numpy loops."""
  rng = np.random.default_rng(1)
  w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)   # torch OIHW
  x = rng.standard_normal((1, 5, 6, 3)).astype(np.float32)   # NHWC
  ours = jax.lax.conv_general_dilated(x, common.torch_conv(w), (1, 1), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ref = np.zeros((1, 3, 4, 4), np.float32)
  for i in range(3):
    for j in range(4):
      ref[0, i, j] = np.einsum('hwc,ochw->o', x[0, i:i + 3, j:j + 3], w)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  # Depthwise: (C, 1, kh, kw) -> (kh, kw, 1, C).
  dw = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
  k = common.torch_depthwise(dw)
  assert k.shape == (3, 3, 1, 3) and np.array_equal(k[:, :, 0, 2], dw[2, 0])


def test_torch_conv_transpose_layout_matches_scatter_definition():
  """ConvTranspose2d(stride 2, no padding) written as a scatter-add in numpy
  equals flax's ConvTranspose with the converted kernel (VALID padding)."""
  import flax.linen as nn
  rng = np.random.default_rng(2)
  w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)  # torch (in, out, kh, kw)
  x = rng.standard_normal((1, 4, 5, 3)).astype(np.float32)
  ref = np.zeros((1, 9, 11, 2), np.float32)
  for i in range(4):
    for j in range(5):
      ref[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3] += np.einsum('c,cohw->hwo', x[0, i, j], w)
  layer = nn.ConvTranspose(2, (3, 3), strides=(2, 2), padding='VALID', use_bias=False)
  ours = layer.apply({'params': {'kernel': common.torch_conv_transpose(w)}}, x)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  kw = np.transpose(w, (2, 3, 1, 0))  # The same kernel in Keras (kh, kw, out, in) layout.
  ours_k = layer.apply({'params': {'kernel': common.keras_conv_transpose(kw)}}, x)
  np.testing.assert_allclose(ours_k, ref, rtol=1e-5, atol=1e-5)


def _tree():
  return {'params': {'backbone': {'conv': {'kernel': jnp.zeros((3, 3, 3, 4))}},
                     'classifier': {'kernel': jnp.zeros((1, 1, 4, 5)), 'bias': jnp.zeros(5)}},
          'batch_stats': {'backbone': {'bn': {'mean': jnp.zeros(4), 'var': jnp.ones(4)}}}}


def test_merge_backbone_fills_only_the_backbone():
  pre = {'params': {'conv': {'kernel': np.full((3, 3, 3, 4), 2.0, np.float32)},
                    'Conv_1': {'kernel': np.ones((1, 1, 4, 8), np.float32)}},
         'batch_stats': {'bn': {'mean': np.full(4, 3.0, np.float32),
                                'var': np.full(4, 4.0, np.float32)}}}
  meta = {'kind': 'backbone', 'source': 'keras', 'arch': 'x'}
  out = convert.merge_pretrained(_tree(), pre, meta)
  assert np.all(out['params']['backbone']['conv']['kernel'] == 2.0)
  assert np.all(out['batch_stats']['backbone']['bn']['var'] == 4.0)
  assert np.all(out['params']['classifier']['bias'] == 0.0)  # Untouched head.
  assert convert.dropped_leaves(_tree(), pre, meta) == ['params/backbone/Conv_1/kernel']
  # A wrong shape is an error naming the leaf.
  pre['params']['conv']['kernel'] = np.ones((3, 3, 3, 8), np.float32)
  with pytest.raises(common.ConversionError, match=r'params/backbone/conv/kernel.*\(3, 3, 3, 8\)'):
    convert.merge_pretrained(_tree(), pre, meta)


def test_merge_model_with_excluded_classifier():
  pre = jax.tree.map(lambda x: np.ones(x.shape, np.float32), _tree())
  pre['params']['classifier'] = {'kernel': np.ones((1, 1, 4, 21), np.float32),
                                 'bias': np.ones(21, np.float32)}
  meta = {'kind': 'model', 'source': 'torchvision', 'arch': 'deeplabv3_resnet50'}
  with pytest.raises(common.ConversionError, match='num_classes.*pretrained_exclude'):
    convert.merge_pretrained(_tree(), pre, meta)
  out = convert.merge_pretrained(_tree(), pre, meta, exclude=('params/classifier/*',))
  assert np.all(out['params']['backbone']['conv']['kernel'] == 1.0)
  assert np.all(out['params']['classifier']['kernel'] == 0.0)  # Kept the model's init.
  assert out['params']['classifier']['bias'].shape == (5,)


def test_unknown_converter_lists_the_known_ones():
  with pytest.raises(common.ConversionError, match=r"--arch=resnet18.*resnet50"):
    convert.get_converter('torchvision', 'resnet18')
  with pytest.raises(common.ConversionError, match="unknown source 'onnx'"):
    convert.get_converter('onnx', 'resnet50')
