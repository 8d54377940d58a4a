"""Train and eval input pipelines on grain.

Training sees an endless stream of examples, reshuffled every epoch. The global
batch for step s is elements [s * G, (s + 1) * G) of that stream, and process p
of P takes rows [p * G / P, (p + 1) * G / P). Example order and augmentation
depend only on (config, global element position), so batches are the same for
any process count, worker count or restart step.
"""

from __future__ import annotations

import functools
import os
from typing import Iterator

from absl import flags
import grain
import numpy as np

from segjax.data import sources
from segjax.data import transforms


def _derive_seed(seed: int, tag: int) -> int:
  """A 32-bit seed per purpose, so shuffle and augmentation are independent."""
  return int(np.random.SeedSequence([int(seed) % 2**63, tag]).generate_state(1)[0])


def _num_threads() -> int:
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count() or 1
  # One reader thread per core: decoding is most of the host's work, and a
  # fixed cap (8) starved a GPU that steps faster than 8 cores decode.
  return max(1, cpus)


def _check_processes(batch_size: int, process_index: int, process_count: int,
                     key: str) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, process_count='
                     f'{process_count})')
  if batch_size % process_count:
    raise ValueError(f'{key}={batch_size} is not divisible by the process count '
                     f'{process_count}')
  return batch_size // process_count


class _ProcessRows(grain.MapDataset):
  """This process's rows of each global batch, as a flat element stream.

  Local element i (step i // B, row i % B) is global element
  step * G + process_index * B + row of the parent.
  """

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, local_batch: int, process_index: int,
               process_count: int):
    super().__init__(parent)
    self._local = local_batch
    self._global = local_batch * process_count
    self._offset = process_index * local_batch
    self._length = len(parent) // process_count

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f'_ProcessRows(local={self._local}, global={self._global}, offset={self._offset})'

  def _parent_index(self, index: int) -> int:
    step, row = divmod(index, self._local)
    return step * self._global + self._offset + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def _getitems(self, indices):
    parent_indices = [self._parent_index(i) for i in indices]
    return self._parent._getitems(parent_indices)  # pylint: disable=protected-access


def _train_batch(elements) -> dict[str, np.ndarray]:
  # Stacks train elements; 'name' is dropped (strings do not go to devices).
  out = {
      'image': np.stack([e['image'] for e in elements]),
      'label': np.stack([e['label'] for e in elements]).astype(np.int32),
  }
  if 'size' in elements[0]:  # data.augment_on='device': each example's real size.
    out['size'] = np.stack([e['size'] for e in elements])
  return out


def _train_rows(config, process_index: int, process_count: int):
  """(per-process element stream, local batch size)."""
  local = _check_processes(config.batch_size, process_index, process_count, 'batch_size')
  src = sources.make_source(config.data, config.data.train_split)
  if len(src) == 0:
    raise ValueError(f'training split {config.data.train_split!r} of data.name='
                     f'{config.data.name!r} has no examples')
  ds = grain.MapDataset.source(src)
  # Shuffle before repeat: grain folds the epoch into the shuffle seed.
  ds = ds.shuffle(seed=_derive_seed(config.seed, 1)).repeat()
  # After repeat, random_map's index is the global element position.
  if config.data.get('augment_on', 'host') == 'device':  # Augmented in the train step.
    from segjax.data import device_augment  # pylint: disable=g-import-not-at-top
    ds = ds.map(device_augment.DecodeTransform(config, device_augment.canvas_size(config, src)))
  else:
    ds = ds.random_map(transforms.TrainTransform(config), seed=_derive_seed(config.seed, 2))
  return _ProcessRows(ds, local, process_index, process_count), local


def train_dataset(config, *, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """ds[step]: this process's share of the global batch for training step `step`.

  Batches are {'image': uint8 (B, h, w, 3), 'label': int32 (B, h, w)} with
  B = config.batch_size // process_count. Endless (len is sys.maxsize // B).
  """
  rows, local = _train_rows(config, process_index, process_count)
  return rows.batch(local, drop_remainder=True, batch_fn=_train_batch)


def train_iterator(config, start_step: int = 0, *, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Prefetching iterator over batches for steps start_step, start_step + 1, ...

  Uses threads when data.num_workers == 0 (elements decoded in parallel), else
  grain worker processes (each builds whole batches). Either way the batches
  equal train_dataset(config)[step].
  """
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  rows, local = _train_rows(config, process_index, process_count)
  prefetch = max(1, int(config.data.prefetch))
  workers = int(config.data.num_workers)
  if workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read absl flags; outside absl.app.run (tests,
      # notebooks) nothing has parsed them, so take the defaults.
      flags.FLAGS.mark_as_parsed()
    batches = rows.batch(local, drop_remainder=True, batch_fn=_train_batch)[start_step:]
    ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                   prefetch_buffer_size=prefetch))
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=prefetch))
  else:
    threads = _num_threads()
    ds = rows[start_step * local:].to_iter_dataset(grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=max(prefetch * local, threads)))
    ds = ds.batch(local, drop_remainder=True, batch_fn=_train_batch)
  return iter(ds)


def expected_iterator_state(config, step: int, *, process_index: int = 0,
                            process_count: int = 1) -> dict:
  """The state train_iterator(config, 0) reports after `step` batches.

  Threads (data.num_workers == 0): it has read step * B elements of this
  process's stream. Worker processes: batches go round-robin to W workers,
  so worker i has built len(range(i, step, W)) of them and batch `step` is
  next asked of worker step % W.
  """
  local = _check_processes(config.batch_size, process_index, process_count, 'batch_size')
  workers = int(config.data.num_workers)
  if workers <= 0:
    return {'next_index': int(step) * local}
  return {'next_index_in_cycle': int(step) % workers,
          'iterators_in_use_states': [{'next_index': len(range(i, int(step), workers))}
                                      for i in range(workers)]}


def check_iterator_state(config, step: int, state, *, process_index: int = 0,
                         process_count: int = 1) -> str | None:
  """None if a restored iterator state is at the position of `step` (the data
  stream is a function of the step alone), else what disagrees."""
  expected = expected_iterator_state(config, step, process_index=process_index,
                                     process_count=process_count)
  if not isinstance(state, dict):
    return f'expected a dict, got {type(state).__name__}'
  for key, want in expected.items():
    if state.get(key) != want:
      return f'{key} is {state.get(key)!r}, step {step} needs {want!r}'
  return None


# --------------------------------------------------------------------------- eval

_PAD = {'pad': True}  # Stands in for rows past the end of the eval set.


class _EvalRows(grain.MapDataset):
  """This process's rows of each global eval batch; _PAD past the end."""

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, num_examples: int, local_batch: int,
               process_index: int, process_count: int):
    super().__init__(parent)
    self._n = num_examples
    self._local = local_batch
    self._global = local_batch * process_count
    self._offset = process_index * local_batch
    self.num_batches = -(-num_examples // self._global)

  def __len__(self) -> int:
    return self.num_batches * self._local

  def __str__(self) -> str:
    return f'_EvalRows(n={self._n}, local={self._local}, offset={self._offset})'

  def global_index(self, index: int) -> int:
    step, row = divmod(index, self._local)
    return step * self._global + self._offset + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    g = self.global_index(index)
    return self._parent[g] if g < self._n else _PAD


def _eval_batch(elements, *, ignore_label: int, empty_hw: tuple[int, int]):
  """Pads examples to the batch's largest H, W: image 0, label ignore."""
  real = [e for e in elements if 'pad' not in e]
  if real:
    h = max(e['image'].shape[0] for e in real)
    w = max(e['image'].shape[1] for e in real)
  else:
    h, w = empty_hw
  n = len(elements)
  image = np.zeros((n, h, w, 3), np.uint8)
  label = np.full((n, h, w), ignore_label, np.int32)
  valid = np.zeros((n,), bool)
  for i, e in enumerate(elements):
    if 'pad' in e:
      continue
    eh, ew = e['label'].shape
    image[i, :eh, :ew] = e['image']
    label[i, :eh, :ew] = e['label']
    valid[i] = True
  return {'image': image, 'label': label, 'valid': valid}


class EvalBatches:
  """Re-iterable eval batches; len() is the number of batches per process."""

  def __init__(self, rows: _EvalRows, local_batch: int, batch_fn):
    self._rows = rows
    self._local = local_batch
    self._batch_fn = batch_fn

  def __len__(self) -> int:
    return self._rows.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    threads = _num_threads()
    ds = self._rows.to_iter_dataset(grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=max(2 * self._local, threads)))
    return iter(ds.batch(self._local, batch_fn=self._batch_fn))


def eval_batches(config, split: str | None = None, *, process_index: int = 0,
                 process_count: int = 1, limit: int | None = None):
  """(batches, num_examples) for evaluating `split` (default: eval.split or val_split).

  Each batch: {'image': uint8 (B, H, W, 3), 'label': int32 (B, H, W),
  'valid': bool (B,)}, B = eval.batch_size // process_count. Every example is
  in exactly one batch row of one process, in a fixed order; every process
  gets the same number of batches, the last padded with valid=False rows whose
  labels are all ignore. Images of different sizes are padded to the batch's
  largest H, W with ignore labels. `limit` keeps only the first N examples.
  """
  split = split or config.eval.get('split', '') or config.data.val_split
  local = _check_processes(config.eval.batch_size, process_index, process_count,
                           'eval.batch_size')
  src = sources.make_source(config.data, split)
  n = len(src) if limit is None else min(len(src), max(0, int(limit)))
  ds = grain.MapDataset.source(src).map(transforms.EvalTransform(config))
  rows = _EvalRows(ds, n, local, process_index, process_count)
  # Shape of a batch with no real rows: the eval resize, else example 0's.
  resize = tuple(config.data.get('resize', ()) or ())
  if resize:
    empty_hw = (int(resize[0]), int(resize[1]))
  elif n and rows.num_batches and rows.global_index((rows.num_batches - 1) * local) >= n:
    empty_hw = ds[0]['label'].shape
  else:
    empty_hw = (1, 1)
  batch_fn = functools.partial(_eval_batch, ignore_label=int(config.data.ignore_label),
                               empty_hw=tuple(empty_hw))
  return EvalBatches(rows, local, batch_fn), n


def batch_example_names(config, step: int) -> list[str]:
  """Names of the examples in the global training batch of `step`, row by row
  (for error messages: which files a bad step read)."""
  src = sources.make_source(config.data, config.data.train_split)
  # The same shuffle as _train_rows: grain's index shuffle depends only on the
  # length, the seed and the epoch.
  order = grain.MapDataset.range(len(src)).shuffle(seed=_derive_seed(config.seed, 1)).repeat()
  g = int(config.batch_size)
  return [str(src[order[i]]['name']) for i in range(step * g, (step + 1) * g)]
