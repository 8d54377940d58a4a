"""Readers for the weight files researchers have on disk, without their frameworks.

  read_weights(path) -> {name: np.ndarray}

* PyTorch `.pth` / `.pt` / `.bin` (torch.save of a state dict, zip format of
  torch >= 1.6 and the older pickle stream that torchvision's VGG and
  MobileNetV2 files still use). No pickle is read with `pickle.load`: the
  legacy format's header pickles allow no global at all, the object pickle
  only state-dict contents (dicts, tensors, storages); anything else is
  refused by name before it is looked up, so a file cannot run code. Every
  tensor's offset, sizes and strides are checked against its storage before
  a view is made. Checkpoints wrapping the weights ({'state_dict': ...},
  {'model': ...}) and DataParallel's 'module.' prefix are unwrapped.
* safetensors (timm and Hugging Face); offsets and shapes checked.
* Keras `.h5`: the legacy HDF5 weights files keras.applications downloads
  (layer names in the file) and Keras 3 `.weights.h5` files (layers named by
  class and position: 'conv2d_3'; mapped back to layer names with the
  architecture's layer order, `keras_layers`). Keys are '<layer>/<i>', i
  indexing the layer's weights in Keras order. Needs h5py. Data kept in other
  files (external storage, virtual datasets, external links) is refused.
* `.npz`: names as stored; object arrays (pickle) refused.

Every error is a WeightsFileError: one line naming the file (and the tensor).
docs/security.md lists what is checked in each format.
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
import zlib
from typing import Any, Callable, Sequence

import ml_dtypes
import numpy as np
from safetensors import numpy as safetensors_numpy


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
_STORAGE_DTYPES = frozenset(np.dtype(t) for t in _TORCH_STORAGES.values())
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_BUILTINS = {'set': set, 'frozenset': frozenset, 'tuple': tuple, 'list': list, 'dict': dict}
_MAX_DEPTH = 100  # Nesting of containers in a state dict; real ones have 2 or 3 levels.


def _short(value: Any, limit: int = 80) -> str:
  """repr(value), cut to `limit` characters: a file's bytes are not echoed at length."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + '...'


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


class _Sealed:
  """Refuses pickle's BUILD opcode, so a file cannot set attributes on reader objects."""

  __slots__ = ()

  def __setstate__(self, state):
    raise pickle.UnpicklingError('the pickle sets the state of a reader object')


class _StorageType(_Sealed):
  __slots__ = ('dtype',)

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


class _Storage(_Sealed):
  """A torch storage: `numel` elements of `dtype`, read lazily by `load`."""

  __slots__ = ('dtype', 'numel', 'name', '_load', '_array')

  def __init__(self, dtype, numel: int, name: str, load: Callable[[], bytes] | None = None):
    self.dtype, self.numel, self.name = np.dtype(dtype), numel, name
    self._load = load
    self._array = None

  @property
  def array(self) -> np.ndarray:
    if self._array is None:
      if self._load is None:
        raise WeightsFileError(f'storage {self.name} has no data')
      self._array = np.frombuffer(self._load(), dtype=self.dtype)
    return self._array


class _LazyTensor(_Sealed):
  """A tensor view of a storage; its geometry is checked in `build`, not trusted."""

  __slots__ = ('storage', 'offset', 'size', 'stride')

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def check(self) -> str | None:
    """None if the view stays inside its storage, else what is wrong.

    Checked before any view is made: integer offset, sizes and strides, none
    negative; a zero stride only on a dimension of size 1 (a zero stride on a
    longer one repeats elements: torch's expand(), never in a state dict); at
    most as many elements as the storage holds from the offset; and the last
    element addressed (offset + sum((size - 1) * stride)) inside the storage.
    """
    st, offset, size, stride = self.storage, self.offset, self.size, self.stride
    if not isinstance(st, _Storage):
      return f'its storage is a {type(st).__name__}, not a storage'
    if not _is_int(offset) or offset < 0:
      return f'storage offset {_short(offset)} is not a non-negative integer'
    if not isinstance(size, (tuple, list)) or not all(_is_int(n) and n >= 0 for n in size):
      return f'size {_short(size)} is not a tuple of non-negative integers'
    if (not isinstance(stride, (tuple, list)) or len(stride) != len(size)
        or not all(_is_int(s) for s in stride)):
      return f'stride {_short(stride)} is not {len(size)} integers (size {tuple(size)})'
    if any(s < 0 for s in stride):
      return f'stride {tuple(stride)} is negative'
    numel = int(np.prod(size, dtype=object)) if size else 1
    if numel == 0:
      if offset > st.numel:
        return f'storage offset {offset} is past its storage ({st.numel} elements)'
      return None
    if any(s == 0 and n > 1 for n, s in zip(size, stride)):
      return (f'stride {tuple(stride)} is zero on a dimension longer than 1 (size '
              f'{tuple(size)}): repeated elements, not a saved tensor; save .contiguous()')
    if numel > st.numel - offset:
      return (f'size {tuple(size)} ({numel} elements) is more than its storage holds from '
              f'offset {offset} ({st.numel} elements)')
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= st.numel:
      return (f'size {tuple(size)}, stride {tuple(stride)} and offset {offset} address '
              f'element {last}, past its storage ({st.numel} elements)')
    return None

  def build(self, path: str, key: str) -> np.ndarray:
    error = self.check()
    if error:
      raise WeightsFileError(f'{path}: tensor {key!r}: {error}')
    flat = self.storage.array
    if flat.size != self.storage.numel:
      raise WeightsFileError(f'{path}: tensor {key!r}: storage {self.storage.name} holds '
                             f'{flat.size} elements, not {self.storage.numel}: truncated file?')
    if not self.size:
      return flat[self.offset:self.offset + 1].reshape(()).copy()
    # Safe now: check() kept every addressed element inside `flat`. A dimension of
    # size 1 may carry any stride in torch; it addresses nothing, so it becomes 0.
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=tuple(self.size),
        strides=tuple(s * flat.itemsize if n > 1 else 0 for n, s in zip(self.size, self.stride)),
        writeable=False)
    return np.array(view)


class _Function(_Sealed):
  """A torch function a state dict pickle may call, sealed against BUILD."""

  __slots__ = ('_fn',)

  def __init__(self, fn):
    self._fn = fn

  def __call__(self, *args):
    return self._fn(*args)


def _rebuild_tensor(storage, offset, size, stride, *args) -> _LazyTensor:
  del args  # requires_grad, backward hooks, metadata.
  return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *args):
  del requires_grad, backward_hooks, args
  return data


_REBUILD_TENSOR = _Function(_rebuild_tensor)
_REBUILD_PARAMETER = _Function(_rebuild_parameter)


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles state dicts only; storages resolve through `storage_loader`.

  The globals allowed are the ones torch.save writes for a state dict:
  collections.OrderedDict, torch._utils._rebuild_tensor(_v2) and
  _rebuild_parameter (answered by local functions that only record a
  tensor's geometry), torch.<X>Storage and torch.<dtype> (answered by a
  dtype), torch.Size (a tuple), and the builtin containers. Anything else
  is refused by name before it is looked up, so nothing in the file runs.
  """

  def __init__(self, file, path: str, storage_loader):
    super().__init__(file)
    self._path = path
    self._storage_loader = storage_loader

  def find_class(self, module: str, name: str) -> Any:
    if module == 'collections' and name == 'OrderedDict':
      return collections.OrderedDict
    if module == 'torch._utils' and name in ('_rebuild_tensor_v2', '_rebuild_tensor'):
      return _REBUILD_TENSOR
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return _REBUILD_PARAMETER
    if module == 'torch' and name in _TORCH_STORAGES:
      return _StorageType(_TORCH_STORAGES[name])
    if module == 'torch' and name in _TORCH_DTYPES:
      return _StorageType(_TORCH_DTYPES[name])
    if module == 'torch' and name == 'Size':
      return tuple
    if module in ('builtins', '__builtin__') and name in _BUILTINS:  # Protocol 2 names.
      return _BUILTINS[name]
    raise WeightsFileError(f'{self._path}: holds a pickled {module[:60]}.{name[:60]}, not a '
                           'state dict of tensors; save '
                           '`model.state_dict()` instead')

  def persistent_load(self, pid):
    return self._storage_loader(pid)


class _PlainUnpickler(pickle.Unpickler):
  """For the legacy format's header pickles: plain values only, no global at all."""

  def __init__(self, file, path: str, what: str):
    super().__init__(file)
    self._path, self._what = path, what

  def find_class(self, module: str, name: str) -> Any:
    raise WeightsFileError(f'{self._path}: its {self._what} pickle refers to '
                           f'{module[:60]}.{name[:60]}; a PyTorch file has '
                           'plain values there: not a PyTorch file, refused')

  def persistent_load(self, pid):
    raise WeightsFileError(f'{self._path}: its {self._what} pickle has a persistent id: '
                           'not a PyTorch file, refused')


def _unpickle(unpickler: pickle.Unpickler, path: str, what: str) -> Any:
  """unpickler.load(); any failure of it is a WeightsFileError naming the file."""
  try:
    return unpickler.load()
  except WeightsFileError:
    raise
  except Exception as e:  # pickle raises many types on garbage. pylint: disable=broad-except
    raise WeightsFileError(f'{path}: cannot read its {what} pickle ({type(e).__name__}: '
                           f'{_short(str(e))})') from None


def _storage_pid(pid, path: str, legacy: bool):
  """(dtype, key, numel, view) of a torch storage persistent id, checked."""
  n = 6 if legacy else 5
  if not isinstance(pid, tuple) or len(pid) < n or pid[0] != 'storage':
    raise WeightsFileError(f'{path}: unknown persistent id {_short(pid)}')
  storage_type, key, _, numel = pid[1:5]
  if not isinstance(storage_type, _StorageType) or storage_type.dtype not in _STORAGE_DTYPES:
    raise WeightsFileError(f'{path}: storage {_short(key)} has no known storage type')
  if not isinstance(key, str) or not re.fullmatch(r'[\w.-]{1,100}', key):
    raise WeightsFileError(f'{path}: storage key {_short(key)} is not a plain name')
  if not _is_int(numel) or numel < 0:
    raise WeightsFileError(f'{path}: storage {key} has element count {_short(numel)}')
  return storage_type.dtype, key, numel, (pid[5] if legacy else None)


def _read_torch_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    pkl = [n for n in zf.namelist() if n.endswith('data.pkl')]
    if not pkl:
      raise WeightsFileError(f'{path}: zip archive without data.pkl: not a torch.save file')
    prefix = pkl[0][:-len('data.pkl')]
    names = set(zf.namelist())
    if f'{prefix}byteorder' in names and zf.read(f'{prefix}byteorder')[:16] != b'little':
      raise WeightsFileError(f'{path}: saved on a big-endian machine; not supported')
    storages: dict[str, _Storage] = {}

    def load(pid):
      dtype, key, numel, _ = _storage_pid(pid, path, legacy=False)
      if key not in storages:
        name = f'{prefix}data/{key}'
        if name not in names:
          raise WeightsFileError(f'{path}: storage {name} is missing from the archive')
        nbytes = numel * dtype.itemsize
        if zf.getinfo(name).file_size < nbytes:
          raise WeightsFileError(f'{path}: storage {name} is truncated ({numel} elements '
                                 f'of {dtype} declared, {zf.getinfo(name).file_size} bytes)')

        def read(name=name, nbytes=nbytes):
          with zf.open(name) as f:  # Reads the declared bytes only.
            raw = f.read(nbytes)
          if len(raw) != nbytes:
            raise WeightsFileError(f'{path}: storage {name} is truncated')
          return raw
        storages[key] = _Storage(dtype, numel, name, read)
      elif storages[key].dtype != dtype or storages[key].numel != numel:
        raise WeightsFileError(f'{path}: storage {key} is declared twice, differently')
      return storages[key]

    obj = _unpickle(_TorchUnpickler(io.BytesIO(zf.read(pkl[0])), path, load), path,
                    'data.pkl')
    # Materialise while the archive is open.
    return _materialise(obj, path)


def _read_torch_legacy(path: str) -> Any:
  """torch.save's pre-1.6 format: five pickles, then each storage's bytes.

  magic number, protocol version, system info (plain values: no global may
  appear in them), the object (state-dict globals only, see _TorchUnpickler),
  the storage keys (plain); then per key an int64 element count and the data.
  """
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    magic = _unpickle(_PlainUnpickler(f, path, 'magic number'), path, 'magic number')
    if not _is_int(magic) or magic != _LEGACY_MAGIC:
      raise WeightsFileError(f'{path}: not a PyTorch file (bad magic number)')
    version = _unpickle(_PlainUnpickler(f, path, 'protocol version'), path,
                        'protocol version')
    if not _is_int(version):
      raise WeightsFileError(f'{path}: protocol version {_short(version)} is not a number')
    info = _unpickle(_PlainUnpickler(f, path, 'system info'), path, 'system info')
    if not isinstance(info, dict):
      raise WeightsFileError(f'{path}: system info is a {type(info).__name__}, not a dict')
    if info.get('little_endian', True) is not True:
      raise WeightsFileError(f'{path}: saved on a big-endian machine; not supported')
    storages: dict[str, _Storage] = {}
    views = []

    def load(pid):
      dtype, key, numel, view = _storage_pid(pid, path, legacy=True)
      if key not in storages:
        storages[key] = _Storage(dtype, numel, key)
      elif storages[key].dtype != dtype or storages[key].numel != numel:
        raise WeightsFileError(f'{path}: storage {key} is declared twice, differently')
      if view is None:
        return storages[key]
      if (not isinstance(view, tuple) or len(view) != 3 or not _is_int(view[1])
          or not _is_int(view[2]) or view[1] < 0 or view[2] < 0
          or view[1] + view[2] > numel):
        raise WeightsFileError(f'{path}: storage view {_short(view)} of storage {key} '
                               f'({numel} elements) is out of range')
      holder = _Storage(dtype, view[2], f'{key}[{view[1]}:{view[1] + view[2]}]')
      views.append((holder, storages[key], view[1]))
      return holder

    obj = _unpickle(_TorchUnpickler(f, path, load), path, 'object')
    keys = _unpickle(_PlainUnpickler(f, path, 'storage keys'), path, 'storage keys')
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
      raise WeightsFileError(f'{path}: the storage keys are not a list of names')
    for key in keys:
      st = storages.get(key)
      if st is None or st._array is not None:  # pylint: disable=protected-access
        raise WeightsFileError(f'{path}: storage key {_short(key)} is unknown or repeated')
      head = f.read(8)
      if len(head) != 8:
        raise WeightsFileError(f'{path}: storage {key} is truncated')
      (numel,) = struct.unpack('<q', head)
      if numel != st.numel:
        raise WeightsFileError(f'{path}: storage {key} holds {numel} elements, but the '
                               f'object says {st.numel}')
      nbytes = numel * st.dtype.itemsize
      if nbytes > size - f.tell():  # Checked before reading: read() allocates first.
        raise WeightsFileError(f'{path}: storage {key} is truncated ({numel} elements '
                               f'declared, {size - f.tell()} bytes left)')
      st._array = np.frombuffer(f.read(nbytes), dtype=st.dtype)  # pylint: disable=protected-access
    missing = [k for k, st in storages.items() if st._array is None]  # pylint: disable=protected-access
    if missing:
      raise WeightsFileError(f'{path}: storage {missing[0]} has no data in the file')
    for holder, root, offset in views:
      holder._array = root.array[offset:offset + holder.numel]  # pylint: disable=protected-access
    return _materialise(obj, path)


def _materialise(obj: Any, path: str) -> Any:
  """`obj` with its tensors built as arrays; each container visited once.

  A pickle can share one container many times (a file of kilobytes that
  expands exponentially if copied) or contain itself: each is built once.
  """
  done: dict[int, Any] = {}

  def visit(x, key, depth):
    if isinstance(x, _LazyTensor):
      return x.build(path, key)
    if not isinstance(x, (dict, list, tuple)):
      return x
    if id(x) in done:
      return done[id(x)]
    if depth > _MAX_DEPTH:
      raise WeightsFileError(f'{path}: {key!r} is nested more than {_MAX_DEPTH} deep')
    if isinstance(x, dict):
      out = done[id(x)] = type(x)() if isinstance(x, collections.OrderedDict) else {}
      for k, v in x.items():
        out[k] = visit(v, f'{key}/{k}' if key else str(k), depth + 1)
      return out
    if isinstance(x, list):
      out = done[id(x)] = []
      out.extend(visit(v, f'{key}/{i}', depth + 1) for i, v in enumerate(x))
      return out
    out = done[id(x)] = tuple(visit(v, f'{key}/{i}', depth + 1) for i, v in enumerate(x))
    return out

  return visit(obj, '', 0)


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
    keys = sorted(_short(k, 40) for k in obj)[:10]
    raise WeightsFileError(f'{path}: no tensors found (keys: {keys})')
  bad = [k for k in arrays if not isinstance(k, str)]
  if bad:
    raise WeightsFileError(f'{path}: tensor names must be strings, not {_short(bad[0])}')
  if all(k.startswith('module.') for k in arrays):  # DataParallel / DDP.
    arrays = {k[len('module.'):]: v for k, v in arrays.items()}
  return arrays


def read_torch(path: str) -> dict[str, np.ndarray]:
  """A torch.save'd state dict (zip or legacy format) as numpy arrays."""
  try:
    obj = _read_torch_zip(path) if zipfile.is_zipfile(path) else _read_torch_legacy(path)
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
    raise WeightsFileError(f'{path}: damaged file ({type(e).__name__}: {_short(str(e))})'
                           ) from None
  return _unwrap_state_dict(obj, path)


# --- safetensors --------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A safetensors file, read by safetensors' own loader after every header
  entry is checked against the data it claims, so that a bad file is one line
  naming the tensor.

  Each tensor: a known dtype, a shape of non-negative integers, data_offsets
  [begin, end] with 0 <= begin <= end <= the data's length, and end - begin
  equal to the shape's element count times the dtype's size.
  """
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) != 8:
      raise WeightsFileError(f'{path}: too short for a safetensors file')
    (n,) = struct.unpack('<Q', head)
    if n > min(100_000_000, size - 8):
      raise WeightsFileError(f'{path}: header length {n} is implausible: not safetensors')
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise WeightsFileError(f'{path}: bad safetensors header ({_short(str(e))})') from None
    if not isinstance(header, dict):
      raise WeightsFileError(f'{path}: safetensors header is not a JSON object')
  data_length = size - 8 - n
  checked = []
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if not isinstance(info, dict) or not {'dtype', 'shape', 'data_offsets'} <= set(info):
      raise WeightsFileError(f'{path}: tensor {_short(name)} has no dtype, shape and '
                             'data_offsets')
    dtype = _SAFETENSORS_DTYPES.get(info['dtype']) if isinstance(info['dtype'], str) else None
    if dtype is None:
      raise WeightsFileError(f'{path}: tensor {_short(name)} has unsupported dtype '
                             f'{_short(info["dtype"])}')
    shape, offsets = info['shape'], info['data_offsets']
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
      raise WeightsFileError(f'{path}: tensor {_short(name)} has shape {_short(shape)}, '
                             'not a list of non-negative integers')
    if (not isinstance(offsets, list) or len(offsets) != 2
        or not all(_is_int(o) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
      raise WeightsFileError(f'{path}: tensor {_short(name)} has data_offsets '
                             f'{_short(offsets)}, not [begin, end] with 0 <= begin <= end')
    begin, end = offsets
    if end > data_length:
      raise WeightsFileError(f'{path}: tensor {_short(name)} runs past the end: truncated file')
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize if shape else (
        np.dtype(dtype).itemsize)
    if nbytes != end - begin:
      raise WeightsFileError(f'{path}: tensor {_short(name)} of shape {tuple(shape)} and '
                             f'dtype {info["dtype"]} needs {nbytes} bytes, its data_offsets '
                             f'give {end - begin}')
    checked.append(name)
  try:
    out = safetensors_numpy.load_file(path)
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsFileError(f'{path}: safetensors cannot read it ({type(e).__name__}: '
                           f'{_short(str(e))})') from None
  if sorted(out) != sorted(checked):
    raise WeightsFileError(f'{path}: safetensors read other tensors than its header lists')
  return _unwrap_state_dict(out, path)


# --- Keras --------------------------------------------------------------------

def keras_snake_case(class_name: str) -> str:
  """keras.src.utils.naming.to_snake_case: 'DepthwiseConv2D' -> 'depthwise_conv2d'."""
  name = re.sub(r'\W+', '', class_name)
  name = re.sub('(.)([A-Z][a-z]+)', r'\1_\2', name)
  name = re.sub('([a-z])([A-Z])', r'\1_\2', name)
  return name.lower()


def _h5_array(f, obj, path: str, key: str) -> np.ndarray:
  """A weight dataset of the open HDF5 file `f` as an array, after checking it.

  HDF5 can keep a dataset's bytes in other files (external storage, virtual
  datasets, external links) and can declare a shape far larger than what
  the file stores (unallocated chunks read as the fill value): each is
  refused here, as are non-numeric dtypes.
  """
  import h5py  # pylint: disable=g-import-not-at-top
  where = f'{path}: weight {key!r}'
  if not isinstance(obj, h5py.Dataset):
    raise WeightsFileError(f'{where} is a {type(obj).__name__}, not a dataset')
  if obj.file != f:
    raise WeightsFileError(f'{where} links to another file ({obj.file.filename}); refused')
  if obj.is_virtual or obj.external:
    raise WeightsFileError(f'{where} keeps its data in other files; refused')
  if obj.dtype.kind not in 'biuf':
    raise WeightsFileError(f'{where} has dtype {obj.dtype}, not a number type')
  stored = obj.id.get_storage_size()
  filtered = obj.id.get_create_plist().get_nfilters() > 0
  # Compressed data expands at most ~1032x (deflate); uncompressed is stored whole.
  if obj.nbytes > (1100 * stored if filtered else stored):
    raise WeightsFileError(f'{where} declares shape {obj.shape} ({obj.nbytes} bytes) but '
                           f'the file stores {stored} bytes of it')
  return np.asarray(obj)


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
    try:
      return _read_h5_weights(f, path, keras_layers)
    except (KeyError, TypeError, ValueError, OSError) as e:
      if isinstance(e, WeightsFileError):
        raise
      raise WeightsFileError(f'{path}: not a Keras weights file ({type(e).__name__}: '
                             f'{_short(str(e))})') from None


def _read_h5_weights(f, path: str, keras_layers) -> dict[str, np.ndarray]:
  """read_keras_h5 on the open file `f`."""
  root = f['model_weights'] if 'model_weights' in f else f  # Full-model .h5 saves.
  out = {}
  if 'layer_names' in root.attrs:  # Legacy (Keras 2, keras.applications files).
    for layer in root.attrs['layer_names']:
      layer = layer.decode() if isinstance(layer, bytes) else str(layer)
      group = root[layer]
      for i, wname in enumerate(group.attrs.get('weight_names', [])):
        wname = wname.decode() if isinstance(wname, bytes) else str(wname)
        out[f'{layer}/{i}'] = _h5_array(f, group[wname], path, f'{layer}/{i}')
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
      out[f'{layer_name}/{i}'] = _h5_array(f, variables[str(i)], path,
                                           f'{layer_name}/{i}')
  extra = sorted(name for name in groups if name not in expected
                 and 'vars' in groups[name] and len(groups[name]['vars']))
  if extra:
    raise WeightsFileError(f'{path}: layers with weights that the architecture does not '
                           f'have: {extra[:8]}; wrong --arch?')
  return out


# --- NumPy --------------------------------------------------------------------

def read_npz(path: str) -> dict[str, np.ndarray]:
  """An .npz archive, never unpickling: each member's header is checked first.

  Object arrays (which need pickle) are refused, and so is a member whose
  header declares more bytes than it stores (np.load would allocate them).
  """
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise WeightsFileError(f'{path}: not an .npz (zip) archive ({_short(str(e))})') from None
  with zf:
    for info in zf.infolist():
      if not info.filename.endswith('.npy'):
        continue
      key = info.filename[:-len('.npy')]
      try:
        with zf.open(info) as f:
          version = np.lib.format.read_magic(f)
          if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
          elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
          else:
            raise ValueError(f'.npy format version {version} is not supported')
      except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise WeightsFileError(f'{path}: array {_short(key)}: {_short(str(e))}') from None
      if dtype.hasobject:
        raise WeightsFileError(f'{path}: array {_short(key)} holds Python objects (pickle); '
                               'refused')
      nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
      if nbytes > info.file_size:
        raise WeightsFileError(f'{path}: array {_short(key)} declares shape {shape} '
                               f'({nbytes} bytes) but stores {info.file_size} bytes')
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise WeightsFileError(f'{path}: cannot read the archive ({_short(str(e))})') from None


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
    return read_npz(path)
  if path.endswith('.safetensors'):
    return read_safetensors(path)
  if magic.startswith(b'PK') or magic[:1] == b'\x80':
    return read_torch(path)
  raise WeightsFileError(f'{path}: unknown weights format (expected a PyTorch .pth, '
                         '.safetensors, Keras .h5 or .npz file)')
