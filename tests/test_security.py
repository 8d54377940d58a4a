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
import re
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

  def __init__(self, key, array, type_name='FloatStorage', declared=None):
    self.key, self.array, self.type_name = key, np.ascontiguousarray(array).ravel(), type_name
    self.numel = self.array.size if declared is None else declared  # In the persistent id.


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
      pid = ('storage', _Global('torch', obj.type_name), obj.key, 'cpu', obj.numel)
      return pid + (None,) if self.legacy else pid
    return None

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, _Global):
      self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode())
      return
    if isinstance(obj, _Build):
      self.save(obj.target)
      self.save(obj.state)
      self.write(pickle.BUILD)
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
      ints=Tensor(st_i, 0, (3,), (1,)),
      row=Tensor(st, 3, (1, 4), (1 << 70, 1)))  # A size-1 dimension may have any stride.
  path = write_torch(tmp_path / 'sd.pth', {'state_dict': sd, 'epoch': 3}, legacy=legacy)
  got = readers.read_weights(str(path))
  assert set(got) == {'t', 'part', 'scalar', 'ints', 'row'}
  np.testing.assert_array_equal(got['row'], flat[3:7].reshape(1, 4))
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


class _Build:
  """Written as `target` followed by BUILD(state): sets attributes on `target` itself."""

  def __init__(self, target, state):
    self.target, self.state = target, state


def test_build_opcode_cannot_rewrite_reader_objects(tmp_path):
  """pickle's BUILD on what a global resolves to would set its attributes (here the
  reader's tensor function's defaults, a storage type's dtype): refused."""
  st = Storage('0', np.ones(4, np.float32))
  for name, target in (('fn', _Global('torch._utils', '_rebuild_tensor_v2')),
                       ('dtype', _Global('torch', 'FloatStorage'))):
    state = (None, {'__defaults__': (0, (4,), (1,))} if name == 'fn' else {'dtype': 'O'})
    sd = {'w': Tensor(st, 0, (4,), (1,)), 'x': _Build(target, state)}
    path = write_torch(tmp_path / f'build_{name}.pth', sd)
    with pytest.raises(readers.WeightsFileError,
                       match=rf'build_{name}\.pth: .*sets the state of a reader object'):
      readers.read_weights(str(path))


# --------------------------------------------------------------------------- tensor geometry

# name: (storage elements, offset, size, stride, the error, worked out by hand).
HOSTILE_TENSORS = {
    # Read 4 MiB before the buffer: a segfault or heap bytes in the weights.
    'negative_stride': (16, 0, (4,), (-(1 << 20),), r'stride \(-1048576,\) is negative'),
    # 10^11 float32 from one element: 373 GiB asked for.
    'zero_stride': (16, 0, (100000, 1000000), (0, 0),
                    r'stride \(0, 0\) is zero on a dimension longer than 1'),
    # Last element 1*5 + 3*1 = 8 of 8 (indices 0..7); 8 elements, as many as stored.
    'stride_past_end': (8, 0, (2, 4), (5, 1),
                        r'size \(2, 4\), stride \(5, 1\) and offset 0 address element 8, '
                        r'past its storage \(8 elements\)'),
    # Last element 6 + 1*2 = 8 of 8; 2 elements from offset 6, as many as stored.
    'offset_past_end': (8, 6, (2,), (2,),
                        r'size \(2,\), stride \(2,\) and offset 6 address element 8, '
                        r'past its storage \(8 elements\)'),
    'offset_beyond': (8, 100, (2,), (1,), r'size \(2,\) \(2 elements\) is more than its storage holds '
                      r'from offset 100 \(8 elements\)'),
    # numpy would slice from the end: flat[-4:].
    'negative_offset': (8, -4, (2,), (1,), r'storage offset -4 is not a non-negative'),
    # Overlapping windows: span 2 * 99999 + 1 fits, 10^10 elements do not.
    'overlapping': (200000, 0, (100000, 100000), (1, 1),
                    r'size \(100000, 100000\) \(10000000000 elements\) is more than its '
                    r'storage holds from offset 0 \(200000 elements\)'),
    'negative_size': (8, 0, (-2, 4), (4, 1), r'size \(-2, 4\) is not a tuple of non-neg'),
    'float_stride': (8, 0, (2,), (1.5,), r'stride \(1\.5,\) is not 1 integers'),
    'stride_rank': (8, 0, (2, 2), (1,), r'stride \(1,\) is not 2 integers'),
}

# Reads each file named on the command line with readers.py alone (no jax), one line
# each: 'OK <shape>' or 'ERROR <message>'. A crash shows in the return code.
_READ_SCRIPT = r'''
import importlib.util, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # A runaway allocation fails.
spec = importlib.util.spec_from_file_location('readers', sys.argv[1])
readers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readers)
for path in sys.argv[2:]:
  try:
    got = readers.read_weights(path)
    print('OK', {k: v.shape for k, v in got.items()}, flush=True)
  except readers.WeightsFileError as e:
    print('ERROR', e, flush=True)
'''


def _read_in_subprocess(paths, timeout=300):
  proc = subprocess.run(
      [sys.executable, '-c', _READ_SCRIPT,
       str(ROOT / 'segjax' / 'models' / 'convert' / 'readers.py')] + [str(p) for p in paths],
      capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
  lines = proc.stdout.splitlines()
  assert len(lines) == len(paths), proc.stdout
  return lines


def _hostile_file(tmp_path, name, legacy):
  numel, offset, size, stride, _ = HOSTILE_TENSORS[name]
  st = Storage('0', np.arange(numel, dtype=np.float32))
  sd = {'good': Tensor(st, 0, (2,), (1,)), 'bad': Tensor(st, offset, size, stride)}
  fmt = 'legacy' if legacy else 'zip'
  return write_torch(tmp_path / f'{name}_{fmt}.pth', {'state_dict': sd}, legacy=legacy)


def test_tensor_geometry_is_checked_before_any_view(tmp_path):
  """Crafted offsets, sizes and strides, in both formats: one line naming the file
  and the tensor's key path, no crash, no allocation beyond the storage."""
  cases = [(name, legacy) for name in HOSTILE_TENSORS for legacy in (True, False)]
  paths = [_hostile_file(tmp_path, name, legacy) for name, legacy in cases]
  for (name, legacy), path, line in zip(cases, paths, _read_in_subprocess(paths)):
    pattern = rf"^ERROR {re.escape(str(path))}: tensor 'state_dict/bad': {HOSTILE_TENSORS[name][-1]}"
    assert re.search(pattern, line), (name, legacy, line)


def test_convert_command_refuses_negative_stride(tmp_path):
  path = _hostile_file(tmp_path, 'negative_stride', legacy=True)
  proc = subprocess.run([sys.executable, '-m', 'segjax.tools.convert_weights', '--from=torchvision',
                         '--arch=resnet50', f'--weights={path}', f'--out={tmp_path / "out"}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  assert proc.stderr.strip().splitlines() == [
      f"ERROR: {path}: tensor 'state_dict/bad': stride (-1048576,) is negative"]
  assert not (tmp_path / 'out').exists()


def test_storage_sizes_are_checked(tmp_path):
  """Element counts that disagree with the data: before the bytes are read."""
  arr = np.arange(8, dtype=np.float32)
  sd = {'w': Tensor(Storage('0', arr), 0, (8,), (1,))}
  huge = write_torch(tmp_path / 'huge.pth', sd, numel_override={'0': 1 << 60})
  negative = write_torch(tmp_path / 'negative.pth', sd, numel_override={'0': -1})
  sd_zip = {'w': Tensor(Storage('0', arr, declared=1 << 40), 0, (8,), (1,))}
  zip_short = write_torch(tmp_path / 'zip_short.pth', sd_zip, legacy=False)
  sd_missing = {'w': Tensor(Storage('0', arr), 0, (8,), (1,))}
  no_data = write_torch(tmp_path / 'no_data.pth', sd_missing, replace={'keys': []})
  # Both counts agree on 2^40 elements (4 TiB): refused before read() allocates them.
  sd_big = {'w': Tensor(Storage('0', arr, declared=1 << 40), 0, (8,), (1,))}
  big = write_torch(tmp_path / 'big.pth', sd_big, numel_override={'0': 1 << 40})
  lines = _read_in_subprocess([huge, negative, zip_short, no_data, big])
  assert lines[4].startswith(f'ERROR {big}: storage 0 is truncated (1099511627776 elements '
                             'declared, 32 bytes left)'), lines[4]
  assert lines[0] == (f'ERROR {huge}: storage 0 holds 1152921504606846976 elements, but '
                      'the object says 8')
  assert lines[1] == f'ERROR {negative}: storage 0 holds -1 elements, but the object says 8'
  assert lines[2].startswith(f'ERROR {zip_short}: storage archive/data/0 is truncated '
                             '(1099511627776 elements')
  assert lines[3] == f'ERROR {no_data}: storage 0 has no data in the file'


def test_shared_and_deep_containers(tmp_path):
  """A pickle that shares one list 2^60 times (kilobytes on disk) is built once,
  not expanded; containers nested deeper than any state dict are refused."""
  w = Tensor(Storage('0', np.ones(2, np.float32)), 0, (2,), (1,))
  shared = [w]
  for _ in range(60):
    shared = [shared, shared]
  deep = [w]
  for _ in range(150):
    deep = [deep]
  bomb = write_torch(tmp_path / 'bomb.pth', {'w': w, 'x': shared})
  nested = write_torch(tmp_path / 'deep.pth', {'w': w, 'x': deep})
  lines = _read_in_subprocess([bomb, nested], timeout=60)
  assert lines[0] == "OK {'w': (2,)}"
  assert re.match(rf"ERROR {re.escape(str(nested))}: 'x(/0){{100}}' is nested more than 100",
                  lines[1]), lines[1]


# --------------------------------------------------------------------------- safetensors


def _safetensors(path, header, data=b''):
  import json  # pylint: disable=g-import-not-at-top
  head = json.dumps(header).encode()
  path.write_bytes(struct.pack('<Q', len(head)) + head + data)
  return path


@pytest.mark.parametrize('entry, message', [
    ({'dtype': 'F32', 'shape': [2], 'data_offsets': [-4, 8]}, 'data_offsets'),
    ({'dtype': 'F32', 'shape': [2], 'data_offsets': [8, 4]}, 'data_offsets'),
    ({'dtype': 'F32', 'shape': [3], 'data_offsets': [0, 8]},
     r'shape \(3,\) and dtype F32 needs 12 bytes, its data_offsets give 8'),
    ({'dtype': 'F32', 'shape': [-2], 'data_offsets': [0, 8]}, 'not a list of non-negative'),
    ({'dtype': 'F32', 'shape': [2]}, 'has no dtype, shape and data_offsets'),
    ({'dtype': 'O', 'shape': [2], 'data_offsets': [0, 8]}, 'unsupported dtype'),
])
def test_safetensors_header_is_checked(tmp_path, entry, message):
  path = _safetensors(tmp_path / 'w.safetensors', {'w': entry}, np.ones(4, np.float32).tobytes())
  with pytest.raises(readers.WeightsFileError, match=rf"w\.safetensors: tensor 'w'.*{message}"):
    readers.read_weights(str(path))


# --------------------------------------------------------------------------- Keras .h5


def _legacy_h5(path, make_dataset):
  """A keras.applications-layout file: one layer 'dense' with one weight."""
  h5py = pytest.importorskip('h5py')
  with h5py.File(path, 'w') as f:
    f.attrs['layer_names'] = [b'dense']
    g = f.create_group('dense')
    g.attrs['weight_names'] = [b'dense/kernel:0']
    make_dataset(g, 'dense/kernel:0')
  return path


def test_h5_data_from_other_files_is_refused(tmp_path):
  h5py = pytest.importorskip('h5py')
  secret = tmp_path / 'secret.bin'
  secret.write_bytes(b'not weights')
  good = _legacy_h5(tmp_path / 'good.h5', lambda g, n: g.create_dataset(n, data=np.ones(3)))
  assert np.array_equal(readers.read_weights(str(good))['dense/0'], np.ones(3))
  external = _legacy_h5(tmp_path / 'external.h5', lambda g, n: g.create_dataset(
      n, (4,), dtype='u1', external=[(str(secret), 0, 4)]))
  with pytest.raises(readers.WeightsFileError,
                     match=r"external\.h5: weight 'dense/0' keeps its data in other files"):
    readers.read_weights(str(external))

  def link(g, n):
    g.create_group('dense')['kernel:0'] = h5py.ExternalLink(str(good), '/dense/dense/kernel:0')
  linked = _legacy_h5(tmp_path / 'linked.h5', link)
  with pytest.raises(readers.WeightsFileError,
                     match=r"linked\.h5: weight 'dense/0' links to another file .*good\.h5"):
    readers.read_weights(str(linked))


def test_h5_shape_beyond_stored_bytes_and_strings_refused(tmp_path):
  # 4 * 10^12 bytes declared, none stored (unallocated chunks read as the fill value).
  huge = _legacy_h5(tmp_path / 'huge.h5', lambda g, n: g.create_dataset(
      n, (1000000, 1000000), dtype='f4', chunks=(100, 100)))
  with pytest.raises(readers.WeightsFileError, match=r"huge\.h5: weight 'dense/0' declares "
                     r'shape \(1000000, 1000000\) \(4000000000000 bytes\) but the file stores 0'):
    readers.read_weights(str(huge))
  text = _legacy_h5(tmp_path / 'text.h5', lambda g, n: g.create_dataset(n, data=[b'a', b'b']))
  with pytest.raises(readers.WeightsFileError, match=r"text\.h5: weight 'dense/0' has dtype"):
    readers.read_weights(str(text))
  missing = _legacy_h5(tmp_path / 'missing.h5', lambda g, n: None)
  with pytest.raises(readers.WeightsFileError, match=r'missing\.h5: not a Keras weights file'):
    readers.read_weights(str(missing))


# --------------------------------------------------------------------------- .npz


def test_npz_object_arrays_and_inflated_headers_refused(tmp_path):
  good = tmp_path / 'good.npz'
  np.savez(good, w=np.arange(3.0))
  assert np.array_equal(readers.read_weights(str(good))['w'], np.arange(3.0))
  objects = tmp_path / 'objects.npz'
  np.savez(objects, w=np.array([{'a': 1}], dtype=object))
  with pytest.raises(readers.WeightsFileError, match=r"objects\.npz: array 'w' holds Python"):
    readers.read_weights(str(objects))
  inflated = tmp_path / 'inflated.npz'
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      buf, {'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000)})
  with zipfile.ZipFile(inflated, 'w') as zf:
    zf.writestr('w.npy', buf.getvalue() + b'\0' * 16)
  with pytest.raises(readers.WeightsFileError, match=r"inflated\.npz: array 'w' declares shape "
                     r'\(1000000, 1000000\) \(4000000000000 bytes\) but stores'):
    readers.read_weights(str(inflated))
  not_zip = tmp_path / 'plain.npz'
  np.save(tmp_path / 'plain.npy', np.arange(3))
  os.rename(tmp_path / 'plain.npy', not_zip)
  with pytest.raises(readers.WeightsFileError, match=r'plain\.npz: not an \.npz'):
    readers.read_weights(str(not_zip))


# --------------------------------------------------------------------------- data.root


def _png(path, array):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def _dataset(root, n=2, split='train'):
  """n 4x5 image/mask pairs; the images' first pixel is the index (to tell them apart)."""
  for i in range(n):
    img = np.full((4, 5, 3), 50, np.uint8)
    img[0, 0] = i
    _png(root / split / f'img{i}.png', img)
    _png(root / f'{split}annot' / f'img{i}.png', np.ones((4, 5), np.uint8))
  return root


def _data_config(root, **data):
  from segjax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.data.name = 'folder'
  c.data.root = str(root)
  c.data.num_classes = 3
  c.data.class_names = ('a', 'b', 'c')
  for k, v in data.items():
    setattr(c.data, k, v)
  return config_lib.validate(c)


@pytest.fixture
def outside(tmp_path):
  """A folder next to data.root with an image, a mask and a 'secret' text file."""
  out = tmp_path / 'outside'
  _png(out / 'x.png', np.full((4, 5, 3), 200, np.uint8))
  _png(out / 'm.png', np.ones((4, 5), np.uint8))
  (out / 'secret.txt').write_text('SECRET-1 a b c\nSECRET-2\nSECRET-3 x\n')
  return out


def _make(data, split='train', problems=None):
  from segjax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.make_source(data, split, problems=problems)


def test_linked_image_or_mask_outside_root_is_refused(tmp_path, outside):
  """train/x.png -> a file outside data.root: refused naming the link and its target
  (collected as a problem by check_data); the other pairs still read."""
  from segjax.tools import check_data  # pylint: disable=g-import-not-at-top
  from segjax.data import sources  # pylint: disable=g-import-not-at-top
  root = _dataset(tmp_path / 'root')
  (root / 'train' / 'img9.png').symlink_to(outside / 'x.png')
  (root / 'trainannot' / 'img9.png').symlink_to(root / 'trainannot' / 'img0.png')
  data = _data_config(root).data
  with pytest.raises(sources.DataError, match=r"image '.*root/train/img9\.png' leads outside "
                     r"data\.root .* to '.*outside/x\.png'"):
    _make(data)
  problems = []
  src = _make(data, problems=problems)
  assert [r['image'][0, 0, 0] for r in (src[0], src[1])] == [0, 1]  # Not 200 (outside).
  assert [pathlib.Path(p).name for p, _ in problems] == ['img9.png']
  # A mask linked outside, the image inside.
  (root / 'train' / 'img9.png').unlink()
  _png(root / 'train' / 'img9.png', np.zeros((4, 5, 3), np.uint8))
  (root / 'trainannot' / 'img9.png').unlink()
  (root / 'trainannot' / 'img9.png').symlink_to(outside / 'm.png')
  with pytest.raises(sources.DataError, match=r"mask '.*trainannot/img9\.png' leads outside"):
    _make(data)
  r = check_data.scan_split(_data_config(root), 'train')
  assert r['num_ok'] == 2 and len(r['problems']) == 1
  assert r['problems'][0]['file'].endswith('trainannot/img9.png')
  assert 'outside/m.png' in r['problems'][0]['problem']


def test_linked_folders_and_config_paths_outside_root_are_refused(tmp_path, outside):
  """A 'train -> /elsewhere' folder, image_dir/mask_dir/split names with '..' or an
  absolute path: one error naming the folder and where it resolves to."""
  from segjax.data import sources  # pylint: disable=g-import-not-at-top
  root = _dataset(tmp_path / 'root', split='val')
  (root / 'train').symlink_to(outside, target_is_directory=True)
  (root / 'trainannot').symlink_to(outside, target_is_directory=True)
  pattern = r"data\.image_dir folder '.*' is outside data\.root .*: it resolves to '.*outside'"
  with pytest.raises(sources.DataError, match=pattern):
    _make(_data_config(root).data)
  with pytest.raises(sources.DataError, match=pattern):
    _make(_data_config(root, image_dir=str(outside)).data, 'val')
  with pytest.raises(sources.DataError, match=r'data\.mask_dir folder .* is outside'):
    _make(_data_config(root, mask_dir='../outside').data, 'val')
  with pytest.raises(sources.DataError, match=r"split '\.\./outside': data\.image_dir .* "
                     'is outside'):
    _make(_data_config(root, image_dir='{split}', mask_dir='val').data, '../outside')


def test_list_file_outside_root_is_refused_and_never_echoed(tmp_path, outside):
  """data.list_file pointing at a file outside data.root (by '..', an absolute path,
  or a link) is refused without reading it; check_data does not print its lines."""
  from segjax.tools import check_data  # pylint: disable=g-import-not-at-top
  from segjax.data import sources  # pylint: disable=g-import-not-at-top
  root = _dataset(tmp_path / 'root')
  (root / 'linked.txt').symlink_to(outside / 'secret.txt')
  for list_file in ('../outside/secret.txt', str(outside / 'secret.txt'), 'linked.txt'):
    with pytest.raises(sources.DataError, match=r"data\.list_file '.*' is outside data\.root"):
      _make(_data_config(root, list_file=list_file).data)
    config = _data_config(root, list_file=list_file)
    text = check_data.format_report(check_data.scan(config, ['train']))
    assert 'SECRET' not in text and 'is outside data.root' in text, text
  # Inside data.root, a file that is not a list: named by line number, not echoed.
  (root / 'notes.txt').write_text('SECRET-1 a b c\ntrain/img0.png trainannot/img0.png\n')
  config = _data_config(root, list_file='notes.txt')
  r = check_data.scan_split(config, 'train')
  assert r['num_ok'] == 1 and [p['file'] for p in r['problems']] == [f'{root}/notes.txt:1']
  assert 'SECRET' not in check_data.format_report(check_data.scan(config, ['train']))
  (root / 'binary.txt').write_bytes(b'\x89PNG SECRET-1\n')
  with pytest.raises(sources.DataError, match=r"list file '.*binary\.txt' is not UTF-8 text "
                     r'\(byte 0\)$'):
    _make(_data_config(root, list_file='binary.txt').data)


def test_list_entries_linked_outside_root_are_refused(tmp_path, outside):
  """A list entry whose text stays inside but which is a link leading out."""
  from segjax.data import sources  # pylint: disable=g-import-not-at-top
  root = _dataset(tmp_path / 'root')
  (root / 'train' / 'link.png').symlink_to(outside / 'x.png')
  (root / 'train.txt').write_text('train/link.png trainannot/img0.png\n')
  with pytest.raises(sources.DataError, match=r"train\.txt:1: path 'train/link\.png' escapes "
                     r"data\.root .* to '.*outside/x\.png'"):
    _make(_data_config(root, list_file='{split}.txt').data)


def test_symlinked_root_and_links_inside_it_are_fine(tmp_path):
  """data.root may itself be a link, and links that stay inside the real root are read;
  names stay relative to data.root as given."""
  real = _dataset(tmp_path / 'real')
  (real / 'train' / 'img5.png').symlink_to(real / 'train' / 'img1.png')
  (real / 'trainannot' / 'img5.png').symlink_to('img1.png')
  link = tmp_path / 'link'
  link.symlink_to(real, target_is_directory=True)
  src = _make(_data_config(link).data)
  assert [src[i]['name'] for i in range(len(src))] == [
      'train/img0.png', 'train/img1.png', 'train/img5.png']
  assert src[2]['image'][0, 0, 0] == 1  # img5 is img1.
  (link / 'train.txt').write_text('train/img5.png trainannot/img5.png\n')
  assert len(_make(_data_config(link, list_file='{split}.txt').data)) == 1


def test_file_swapped_for_a_link_after_listing_is_refused(tmp_path, outside):
  from segjax.data import sources  # pylint: disable=g-import-not-at-top
  root = _dataset(tmp_path / 'root')
  src = _make(_data_config(root).data)
  (root / 'train' / 'img1.png').unlink()
  (root / 'train' / 'img1.png').symlink_to(outside / 'x.png')
  assert src[0]['image'][0, 0, 0] == 0
  with pytest.raises(sources.DataError, match=r"'.*train/img1\.png' leads outside data\.root "
                     r".* to '.*outside/x\.png'"):
    src[1]  # pylint: disable=pointless-statement
