"""Hostile inputs: weight files that try to run code or read outside their
storage, and dataset paths that leave data.root.

The torch files here are written by `write_torch`, an independent writer of
torch.save's two on-disk formats (torch/serialization.py: the legacy stream
of five pickles followed by each storage's bytes, and the zip archive with
data.pkl and data/<key>), so these tests need no torch. The code-execution
payload touches a marker file: a reader that unpickles it creates the file.
"""

import collections
import io
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from segjax.models.convert import readers

ROOT = pathlib.Path(__file__).resolve().parents[1]
LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
SYS_INFO = {'protocol_version': 1001, 'little_endian': True,
            'type_sizes': {'short': 2, 'int': 4, 'long': 4}}


# --------------------------------------------------------------------------- writer


class _Global:
  """module.name, written as a pickle GLOBAL opcode without importing it (no torch here)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle only checks that a reduce function is callable.
    raise NotImplementedError


class Storage:
  """A torch storage: a flat array and its key in the file."""

  def __init__(self, key, array, type_name='FloatStorage'):
    self.key, self.array, self.type_name = key, np.ascontiguousarray(array).ravel(), type_name


class Tensor:
  """A tensor as torch.save pickles it: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def __reduce__(self):
    return (_Global('torch._utils', '_rebuild_tensor_v2'),
            (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
             collections.OrderedDict()))


class Payload:
  """Unpickled by a plain unpickler, this creates `marker`: the code-execution probe."""

  def __init__(self, marker):
    self.marker = pathlib.Path(marker)

  def __reduce__(self):
    return (pathlib.Path.touch, (self.marker,))


class _Writer(pickle._Pickler):  # pylint: disable=protected-access
  """torch.save's pickler: storages as persistent ids, torch globals by name."""

  def __init__(self, file, legacy):
    super().__init__(file, protocol=2)
    self.legacy = legacy

  def persistent_id(self, obj):
    if isinstance(obj, Storage):
      pid = ('storage', _Global('torch', obj.type_name), obj.key, 'cpu', obj.array.size)
      return pid + (None,) if self.legacy else pid
    return None

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, _Global):
      self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode())
      return
    super().save(obj, save_persistent_id)


def _pickle(obj, legacy=True) -> bytes:
  buf = io.BytesIO()
  _Writer(buf, legacy).dump(obj)
  return buf.getvalue()


def _storages(obj, found=None):
  found = {} if found is None else found
  if isinstance(obj, Tensor):
    found[obj.storage.key] = obj.storage
  elif isinstance(obj, dict):
    for v in obj.values():
      _storages(v, found)
  return found


def write_torch(path, obj, legacy=True, replace=None, numel_override=None):
  """torch.save(obj, path) in the legacy or zip format.

  replace: {'magic'|'protocol'|'sys_info'|'keys': object} pickles that object
  in that position of a legacy file instead of the real value.
  numel_override: {key: n} writes n as the element count before a legacy
  storage's bytes.
  """
  replace = replace or {}
  storages = _storages(obj)
  if not legacy:
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as zf:
      zf.writestr('archive/data.pkl', _pickle(obj, legacy=False))
      for key, st in storages.items():
        zf.writestr(f'archive/data/{key}', st.array.tobytes())
      zf.writestr('archive/version', '3\n')
    return path
  parts = [_pickle(replace.get('magic', LEGACY_MAGIC)),
           _pickle(replace.get('protocol', 1001)),
           _pickle(replace.get('sys_info', SYS_INFO)),
           _pickle(obj),
           _pickle(replace.get('keys', list(storages)))]
  for key, st in storages.items():
    numel = (numel_override or {}).get(key, st.array.size)
    parts.append(struct.pack('<q', numel) + st.array.tobytes())
  pathlib.Path(path).write_bytes(b''.join(parts))
  return path


# --------------------------------------------------------------------------- the writer


@pytest.mark.parametrize('legacy', [True, False])
def test_written_torch_files_read_back_as_numpy_views(tmp_path, legacy):
  """The writer is right: its files read back equal to the views numpy takes of
  the same flat storages (a transpose, an offset slice, a scalar, int64)."""
  flat = np.arange(42, dtype=np.float32) * 0.5
  counts = np.array([7, -3, 11], np.int64)
  st, st_i = Storage('0', flat), Storage('1', counts, 'LongStorage')
  sd = collections.OrderedDict(
      t=Tensor(st, 0, (7, 6), (1, 7)),         # (6, 7) transposed.
      part=Tensor(st, 12, (2, 7), (7, 1)),     # rows 12..25 as (2, 7).
      scalar=Tensor(st_i, 2, (), ()),
      ints=Tensor(st_i, 0, (3,), (1,)))
  path = write_torch(tmp_path / 'sd.pth', {'state_dict': sd, 'epoch': 3}, legacy=legacy)
  got = readers.read_weights(str(path))
  assert set(got) == {'t', 'part', 'scalar', 'ints'}
  np.testing.assert_array_equal(got['t'], flat.reshape(6, 7).T)
  np.testing.assert_array_equal(got['part'], flat[12:26].reshape(2, 7))
  assert got['scalar'].shape == () and got['scalar'] == 11
  assert got['ints'].dtype == np.int64 and np.array_equal(got['ints'], counts)


# --------------------------------------------------------------------------- code execution


def _one_line_naming(message, path):
  return '\n' not in message and str(path) in message


@pytest.mark.parametrize('position', ['magic', 'protocol', 'sys_info', 'object', 'keys'])
def test_legacy_pickle_payload_never_runs(tmp_path, position):
  """A payload in any of the legacy format's five pickles is refused before it runs:
  the marker file it would create stays absent, the error is one line naming the file."""
  marker = tmp_path / 'MARKER'
  sd = {'w': Tensor(Storage('0', np.ones(4, np.float32)), 0, (4,), (1,))}
  if position == 'object':
    sd['x'] = Payload(marker)
    path = write_torch(tmp_path / 'evil.pth', sd)
  else:
    path = write_torch(tmp_path / 'evil.pth', sd, replace={position: Payload(marker)})
  with pytest.raises(readers.WeightsFileError) as e:
    readers.read_weights(str(path))
  assert not marker.exists(), f'the {position} pickle ran code'
  assert _one_line_naming(str(e.value), path), str(e.value)


def test_zip_pickle_payload_never_runs(tmp_path):
  marker = tmp_path / 'MARKER'
  sd = {'w': Tensor(Storage('0', np.ones(4, np.float32)), 0, (4,), (1,)),
        'x': Payload(marker)}
  path = write_torch(tmp_path / 'evil.pth', sd, legacy=False)
  with pytest.raises(readers.WeightsFileError, match=r'pickled __builtin__\.getattr') as e:
    readers.read_weights(str(path))
  assert not marker.exists()
  assert _one_line_naming(str(e.value), path)


def test_header_pickles_allow_no_globals(tmp_path):
  """Even an allowed state-dict global (OrderedDict) is refused in the sys-info pickle."""
  sd = {'w': Tensor(Storage('0', np.ones(4, np.float32)), 0, (4,), (1,))}
  path = write_torch(tmp_path / 'w.pth', sd,
                     replace={'sys_info': collections.OrderedDict(SYS_INFO)})
  with pytest.raises(readers.WeightsFileError, match=r'system info.*collections\.OrderedDict'):
    readers.read_weights(str(path))


class _SetState:
  """Pickles as OrderedDict() followed by BUILD with `state` (sets attributes)."""

  def __init__(self, target, state):
    self.target, self.state = target, state

  def __reduce__(self):
    return (self.target, (), self.state)


def test_build_opcode_cannot_rewrite_reader_objects(tmp_path):
  """pickle's BUILD on a reader function or tensor would set its attributes (a
  tensor's offset after the fact, a function's defaults): refused."""
  st = Storage('0', np.ones(4, np.float32))
  for target, state in ((_Global('torch._utils', '_rebuild_tensor_v2'),
                         {'__defaults__': (0, (4,), (1,))}),
                        (_Global('torch', 'FloatStorage'), {'dtype': 'O'})):
    sd = {'w': Tensor(st, 0, (4,), (1,)), 'x': _SetState(target, state)}
    path = write_torch(tmp_path / 'build.pth', sd)
    with pytest.raises(readers.WeightsFileError, match='build.pth'):
      readers.read_weights(str(path))
