"""Readers for the weight files researchers have on disk, without their frameworks.

  read_weights(path) -> {name: np.ndarray}

* PyTorch `.pth` / `.pt` / `.bin` (torch.save of a state dict, zip format of
  torch >= 1.6 and the older pickle stream that torchvision's VGG and
  MobileNetV2 files still use). Unpickling is restricted to state-dict
  contents (dicts, tensors, storages); anything else is refused by name, so a
  file cannot run code. Checkpoints wrapping the weights ({'state_dict': ...},
  {'model': ...}) and DataParallel's 'module.' prefix are unwrapped.
* safetensors (timm and Hugging Face).
* Keras `.h5`: the legacy HDF5 weights files keras.applications downloads
  (layer names in the file) and Keras 3 `.weights.h5` files (layers named by
  class and position: 'conv2d_3'; mapped back to layer names with the
  architecture's layer order, `keras_layers`). Keys are '<layer>/<i>', i
  indexing the layer's weights in Keras order. Needs h5py.
* `.npz`: names as stored.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import re
import struct
import zipfile
from typing import Any, Callable, Sequence

import ml_dtypes
import numpy as np


class WeightsFileError(ValueError):
  """A weights file cannot be read; the message names the file and why."""


# --- PyTorch ------------------------------------------------------------------

_TORCH_STORAGES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
_TORCH_DTYPES = {  # torch.<dtype> objects pickled by UntypedStorage-era files.
    'float32': np.float32, 'float': np.float32, 'float64': np.float64, 'double': np.float64,
    'float16': np.float16, 'half': np.float16, 'bfloat16': ml_dtypes.bfloat16,
    'int64': np.int64, 'long': np.int64, 'int32': np.int32, 'int': np.int32,
    'int16': np.int16, 'int8': np.int8, 'uint8': np.uint8, 'bool': np.bool_,
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_BUILTINS = {'set': set, 'frozenset': frozenset, 'tuple': tuple, 'list': list, 'dict': dict}


class _StorageType:
  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


class _Storage:
  """A lazily read torch storage: a flat array of `dtype`."""

  def __init__(self, dtype, load: Callable[[], bytes]):
    self.dtype = np.dtype(dtype)
    self._load = load
    self._array = None

  @property
  def array(self) -> np.ndarray:
    if self._array is None:
      self._array = np.frombuffer(self._load(), dtype=self.dtype)
    return self._array


class _LazyTensor:
  """A tensor view of a storage, built once the storage bytes are read."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), stride

  def build(self) -> np.ndarray:
    flat = self.storage.array
    if not self.size:
      return flat[self.offset:self.offset + 1].reshape(()).copy()
    needed = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if needed > flat.size:
      raise WeightsFileError(f'tensor of size {self.size} runs past its storage '
                             f'({flat.size} elements): truncated file?')
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size,
        strides=tuple(s * flat.itemsize for s in self.stride))
    return np.array(view)


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *args) -> _LazyTensor:
  del args  # requires_grad, backward hooks, metadata.
  return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *args):
  del requires_grad, backward_hooks, args
  return data


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles state dicts only; storages resolve through `storage_loader`."""

  def __init__(self, file, path: str, storage_loader):
    super().__init__(file)
    self._path = path
    self._storage_loader = storage_loader

  def find_class(self, module: str, name: str) -> Any:
    if module == 'collections' and name == 'OrderedDict':
      return collections.OrderedDict
    if module == 'torch._utils' and name in ('_rebuild_tensor_v2', '_rebuild_tensor'):
      return _rebuild_tensor
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return _rebuild_parameter
    if module == 'torch' and name in _TORCH_STORAGES:
      return _StorageType(_TORCH_STORAGES[name])
    if module == 'torch' and name in _TORCH_DTYPES:
      return _StorageType(_TORCH_DTYPES[name])
    if module == 'torch' and name == 'Size':
      return tuple
    if module == 'builtins' and name in _BUILTINS:
      return _BUILTINS[name]
    raise WeightsFileError(f'{self._path}: holds a pickled {module}.{name}, not a state '
                           'dict of tensors; save `model.state_dict()` instead')

  def persistent_load(self, pid):
    return self._storage_loader(pid)


def _read_torch_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    pkl = [n for n in zf.namelist() if n.endswith('data.pkl')]
    if not pkl:
      raise WeightsFileError(f'{path}: zip archive without data.pkl: not a torch.save file')
    prefix = pkl[0][:-len('data.pkl')]
    storages: dict[str, _Storage] = {}

    def load(pid):
      if not isinstance(pid, tuple) or pid[0] != 'storage':
        raise WeightsFileError(f'{path}: unknown persistent id {pid!r}')
      storage_type, key, _, numel = pid[1:5]
      if key not in storages:
        dtype = storage_type.dtype
        name = f'{prefix}data/{key}'

        def read(name=name, numel=numel, dtype=dtype):
          raw = zf.read(name)
          if len(raw) < numel * dtype.itemsize:
            raise WeightsFileError(f'{path}: storage {name} is truncated')
          return raw[:numel * dtype.itemsize]
        storages[key] = _Storage(dtype, read)
      return storages[key]

    obj = _TorchUnpickler(io.BytesIO(zf.read(pkl[0])), path, load).load()
    # Materialise while the archive is open.
    return _materialise(obj)


def _read_torch_legacy(path: str) -> Any:
  with open(path, 'rb') as f:
    try:
      magic = pickle.load(f)
    except Exception as e:  # pickle raises many types on garbage.
      raise WeightsFileError(f'{path}: not a PyTorch file ({type(e).__name__}: {e})') from e
    if magic != _LEGACY_MAGIC:
      raise WeightsFileError(f'{path}: not a PyTorch file (bad magic number)')
    pickle.load(f)  # Protocol version.
    pickle.load(f)  # System info.
    storages: dict[str, _Storage] = {}
    views = []

    def load(pid):
      if not isinstance(pid, tuple) or pid[0] != 'storage':
        raise WeightsFileError(f'{path}: unknown persistent id {pid!r}')
      storage_type, key, _, numel, view = pid[1:6]
      if key not in storages:
        storages[key] = _Storage(storage_type.dtype, lambda: b'')
        storages[key].numel = numel
      if view is not None:
        view_key, offset, view_size = view
        holder = _Storage(storage_type.dtype, lambda: b'')
        views.append((holder, storages[key], offset, view_size))
        return holder
      return storages[key]

    obj = _TorchUnpickler(f, path, load).load()
    keys = pickle.load(f)
    for key in keys:
      (numel,) = struct.unpack('<q', f.read(8))
      st = storages[key]
      raw = f.read(numel * st.dtype.itemsize)
      if len(raw) != numel * st.dtype.itemsize:
        raise WeightsFileError(f'{path}: storage {key} is truncated')
      st._array = np.frombuffer(raw, dtype=st.dtype)
    for holder, root, offset, size in views:
      holder._array = root.array[offset:offset + size]
    return _materialise(obj)


def _materialise(obj: Any) -> Any:
  if isinstance(obj, _LazyTensor):
    return obj.build()
  if isinstance(obj, dict):
    return {k: _materialise(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  return obj


def _unwrap_state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
  """The tensors of a state dict, unwrapping {'state_dict'|'model'|...: sd}."""
  if not isinstance(obj, dict):
    raise WeightsFileError(f'{path}: holds a {type(obj).__name__}, not a state dict')
  for key in ('state_dict', 'model', 'model_state', 'model_state_dict', 'net'):
    if key in obj and isinstance(obj[key], dict) and not isinstance(obj.get(key), np.ndarray):
      if any(isinstance(v, np.ndarray) for v in obj[key].values()):
        obj = obj[key]
        break
  arrays = {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
  if not arrays:
    raise WeightsFileError(f'{path}: no tensors found (keys: {sorted(obj)[:10]})')
  if all(k.startswith('module.') for k in arrays):  # DataParallel / DDP.
    arrays = {k[len('module.'):]: v for k, v in arrays.items()}
  return arrays


def read_torch(path: str) -> dict[str, np.ndarray]:
  """A torch.save'd state dict (zip or legacy format) as numpy arrays."""
  obj = _read_torch_zip(path) if zipfile.is_zipfile(path) else _read_torch_legacy(path)
  return _unwrap_state_dict(obj, path)


# --- safetensors --------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) != 8:
      raise WeightsFileError(f'{path}: too short for a safetensors file')
    (n,) = struct.unpack('<Q', head)
    if n > 100_000_000:
      raise WeightsFileError(f'{path}: header length {n} is implausible: not safetensors')
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise WeightsFileError(f'{path}: bad safetensors header ({e})') from e
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    dtype = _SAFETENSORS_DTYPES.get(info['dtype'])
    if dtype is None:
      raise WeightsFileError(f'{path}: tensor {name!r} has unsupported dtype {info["dtype"]}')
    begin, end = info['data_offsets']
    if end > len(data):
      raise WeightsFileError(f'{path}: tensor {name!r} runs past the end: truncated file')
    out[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(info['shape']).copy()
  return _unwrap_state_dict(out, path)


# --- Keras --------------------------------------------------------------------

def keras_snake_case(class_name: str) -> str:
  """keras.src.utils.naming.to_snake_case: 'DepthwiseConv2D' -> 'depthwise_conv2d'."""
  name = re.sub(r'\W+', '', class_name)
  name = re.sub('(.)([A-Z][a-z]+)', r'\1_\2', name)
  name = re.sub('([a-z])([A-Z])', r'\1_\2', name)
  return name.lower()


def read_keras_h5(path: str, keras_layers: Sequence[tuple[str, str]] | None = None
                  ) -> dict[str, np.ndarray]:
  """{'<layer name>/<i>': array} from a legacy or Keras 3 weights .h5 file.

  Keras 3 files name layer groups by class and position; `keras_layers`
  ([(layer_name, class_name)] of the weight-bearing layers in model.layers
  order) maps those back to layer names.
  """
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise WeightsFileError(f'{path}: reading Keras .h5 files needs h5py '
                           '(pip install -r requirements-peers.txt)') from e
  try:
    f = h5py.File(path, 'r')
  except OSError as e:
    raise WeightsFileError(f'{path}: not a readable HDF5 file ({e})') from e
  with f:
    root = f['model_weights'] if 'model_weights' in f else f  # Full-model .h5 saves.
    out = {}
    if 'layer_names' in root.attrs:  # Legacy (Keras 2, keras.applications files).
      for layer in root.attrs['layer_names']:
        layer = layer.decode() if isinstance(layer, bytes) else str(layer)
        group = root[layer]
        for i, wname in enumerate(group.attrs.get('weight_names', [])):
          wname = wname.decode() if isinstance(wname, bytes) else str(wname)
          out[f'{layer}/{i}'] = np.asarray(group[wname])
      return out
    if 'layers' not in root:
      raise WeightsFileError(f'{path}: neither a legacy (layer_names) nor a Keras 3 '
                             '(layers/...) weights file')
    groups = root['layers']
    if keras_layers is None:
      raise WeightsFileError(f'{path}: a Keras 3 .weights.h5 file names layers by class '
                             'and position; pass the architecture (--arch) to map them')
    counters: dict[str, int] = {}
    expected = set()
    for layer_name, class_name in keras_layers:
      base = keras_snake_case(class_name)
      k = counters.get(base, -1) + 1
      counters[base] = k
      auto = base if k == 0 else f'{base}_{k}'
      expected.add(auto)
      if auto not in groups or 'vars' not in groups[auto]:
        raise WeightsFileError(f'{path}: no weights for layer {layer_name!r} (expected '
                               f'group layers/{auto}); wrong --arch?')
      variables = groups[auto]['vars']
      for i in range(len(variables)):
        out[f'{layer_name}/{i}'] = np.asarray(variables[str(i)])
    extra = sorted(name for name in groups if name not in expected
                   and 'vars' in groups[name] and len(groups[name]['vars']))
    if extra:
      raise WeightsFileError(f'{path}: layers with weights that the architecture does not '
                             f'have: {extra[:8]}; wrong --arch?')
    return out


# --- Dispatch -----------------------------------------------------------------

def read_weights(path: str, keras_layers: Sequence[tuple[str, str]] | None = None
                 ) -> dict[str, np.ndarray]:
  """Reads any supported weights file by its content (falling back to suffix)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise WeightsFileError(f'{path}: no such file')
  with open(path, 'rb') as f:
    magic = f.read(8)
  if magic.startswith(b'\x89HDF\r\n\x1a\n'):
    return read_keras_h5(path, keras_layers)
  if path.endswith('.npz'):
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  if path.endswith('.safetensors'):
    return read_safetensors(path)
  if magic.startswith(b'PK') or magic[:1] == b'\x80':
    return read_torch(path)
  raise WeightsFileError(f'{path}: unknown weights format (expected a PyTorch .pth, '
                         '.safetensors, Keras .h5 or .npz file)')
