"""Checks of the evaluation data made before training starts.

Training evaluates the val split every `eval_every` steps; a problem that only
shows there (an empty split, an eval batch that does not divide over the
devices, an image too large to evaluate whole) would otherwise surface after
the first `eval_every` steps of training. `check_eval_data` opens the split,
counts it, checks the eval batch against the devices and processes, reads
every image's size from its header (Pillow opens files lazily, without
decoding them) and, when evaluating the largest one puts more pixels per
device through the model than a training step does, estimates its memory: an
error when the estimate exceeds the device memory, a warning above a quarter
of it, both naming the image and the remedies (`--config.data.resize=H,W`,
`--config.eval.mode=slide`).

The estimate is a lower bound: the parameters, plus the largest convolution
or matrix product of the model's forward pass (its inputs and outputs, live at
once; read from the traced program, nothing is compiled or run), plus the
full-resolution probability buffers of the evaluation. Real peaks are
higher, so the bound only errs on the side of letting a run start.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from segjax import evaluate as eval_lib
from segjax import sharding as sharding_lib
from segjax.data import sources

WARN_FRACTION = 0.25  # Warn when the lower bound exceeds this share of the memory.


class EvalDataError(ValueError):
  """The val split cannot be evaluated as configured; the message names why."""


# --------------------------------------------------------------------------- sizes


def _image_sizes(src) -> Optional[list[tuple[str, int, int]]]:
  """[(name, height, width)] of every example, from headers; None if unknown."""
  if isinstance(src, sources.Subset):
    inner = _image_sizes(src.source)
    return None if inner is None else [inner[i] for i in src.indices]
  if isinstance(src, sources.Concat):
    parts = [_image_sizes(s) for s in src.sources]
    return None if any(p is None for p in parts) else [x for p in parts for x in p]
  if isinstance(src, sources.FolderSource):
    out = []
    for image_path, _ in src.pairs:
      try:
        with Image.open(image_path) as img:  # Reads the header only.
          w, h = img.size
      except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise sources.DataError(f'{image_path}: cannot read image ({type(e).__name__}: '
                                f'{e})') from None
      out.append((str(image_path), int(h), int(w)))
    return out
  size = getattr(src, 'size', None)  # Synthetic shapes: one size for all.
  if size is not None and len(size) == 2:
    return [(f'synthetic example {i}', int(size[0]), int(size[1])) for i in range(len(src))]
  return None


# --------------------------------------------------------------------------- memory


def _bytes(aval) -> int:
  shape = getattr(aval, 'shape', None)
  dtype = getattr(aval, 'dtype', None)
  if shape is None or dtype is None:
    return 0
  return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _subjaxprs(eqn):
  for value in eqn.params.values():
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if hasattr(v, 'eqns'):
        yield v
      elif hasattr(v, 'jaxpr') and hasattr(v.jaxpr, 'eqns'):
        yield v.jaxpr


# Operations whose inputs and outputs are separate buffers after XLA's fusion
# (elementwise chains fuse and may update in place, so they do not count).
_UNFUSED = ('conv_general_dilated', 'dot_general')


def largest_operation_bytes(jaxpr) -> int:
  """Max over the program's convolutions and matrix products (nested ones too)
  of the bytes of their inputs plus outputs: memory that must be live at once."""
  best = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in _UNFUSED:
      live = sum(_bytes(getattr(v, 'aval', None)) for v in list(eqn.invars) + list(eqn.outvars))
      best = max(best, live)
    for sub in _subjaxprs(eqn):
      best = max(best, largest_operation_bytes(sub))
  return best


def eval_memory_bytes(config, model, height: int, width: int, per_device_batch: int,
                      mode: Optional[str] = None) -> int:
  """Lower bound on one device's memory for evaluating a (height, width)
  image batch as the config says (mode, crop, scales, flip, MC dropout)."""
  inference = eval_lib.Inference.from_config(config)
  mode = mode or inference.mode
  net = eval_lib.mc_model(model, int(config.eval.mc_samples))
  ch, cw = (int(v) for v in config.data.crop_size)
  key = jax.random.key(0)
  variables = jax.eval_shape(
      lambda: model.init({'params': key, 'dropout': key}, jnp.zeros((1, ch, cw, 3)),
                         train=False))
  params = sum(_bytes(x) for x in jax.tree.leaves(variables))

  def forward(v, x):
    return net.apply(v, x, train=False, rngs={'dropout': key})

  b = int(per_device_batch)
  peak = 0
  for scale in sorted(set(inference.scales)):
    h, w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    if mode == 'slide':
      wh, ww = min(inference.crop[0], h), min(inference.crop[1], w)
      n = (len(eval_lib.window_starts(h, wh, inference.stride[0]))
           * len(eval_lib.window_starts(w, ww, inference.stride[1])))
      shape = (b * n, wh, ww, 3)  # All windows of the batch go through the model at once.
    else:
      shape = (b, h, w, 3)
    jaxpr = jax.make_jaxpr(forward)(variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    peak = max(peak, largest_operation_bytes(jaxpr.jaxpr))
  num_classes = int(config.data.num_classes)
  # Full-resolution float32 buffers of the result: summed probabilities and log probabilities.
  buffers = 2 * b * height * width * num_classes * 4
  return params + peak + buffers


def eval_pixels(config, height: int, width: int, per_device_batch: int) -> int:
  """Pixels one device puts through the model in one call when evaluating a
  (height, width) batch (the largest test-time scale; slide mode: all windows)."""
  inference = eval_lib.Inference.from_config(config)
  most = 0
  for scale in inference.scales:
    h, w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    if inference.mode == 'slide':
      wh, ww = min(inference.crop[0], h), min(inference.crop[1], w)
      n = (len(eval_lib.window_starts(h, wh, inference.stride[0]))
           * len(eval_lib.window_starts(w, ww, inference.stride[1])))
      most = max(most, n * wh * ww)
    else:
      most = max(most, h * w)
  return int(per_device_batch) * most


def device_memory_bytes() -> Optional[int]:
  """Memory of one local accelerator, or the host's RAM on CPU; None if unknown."""
  device = jax.local_devices()[0]
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # Not every backend reports.
    stats = {}
  if stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  try:
    return int(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))
  except (ValueError, OSError, AttributeError):
    return None


def _gib(n: float) -> str:
  return f'{n / 2**30:.1f} GiB'


# --------------------------------------------------------------------------- the check


def check_eval_data(config, mesh, model, *, split: Optional[str] = None,
                    memory_bytes: Optional[int] = None) -> dict[str, Any]:
  """Opens and checks the split evaluated during training (default
  data.val_split); raises EvalDataError/DataError/ValueError naming the
  problem, prints a warning when evaluation is likely to run out of memory.
  Returns what it found (num_examples, largest image, estimate, memory)."""
  split = split or config.data.val_split
  src = sources.make_source(config.data, split)  # DataError names a missing folder/list.
  n = len(src)
  if n == 0:
    raise EvalDataError(f'data.val_split={split!r} has no examples; training would stop at '
                        'its first evaluation. Point it at a split with examples.')
  batch = int(config.eval.batch_size)
  sharding_lib.check_batch_size(batch, mesh, 'eval.batch_size')
  info: dict[str, Any] = {'split': split, 'num_examples': n}
  sizes = _image_sizes(src)
  if sizes is None:
    return info
  resize = tuple(config.data.get('resize', ()) or ())
  name, h, w = max(sizes, key=lambda x: (x[1] * x[2], x[0]))
  eval_h, eval_w = (int(resize[0]), int(resize[1])) if resize else (h, w)
  if not resize:  # A batch is padded to its largest height and width.
    eval_h, eval_w = max(s[1] for s in sizes), max(s[2] for s in sizes)
  devices = int(mesh.devices.size)
  per_device = max(1, batch // devices)
  info.update(largest=name, image_hw=(h, w), eval_hw=(eval_h, eval_w), estimate_bytes=None)
  train_pixels = max(1, int(config.batch_size) // devices) * int(np.prod(config.data.crop_size))
  if eval_pixels(config, eval_h, eval_w, per_device) <= train_pixels:
    # A forward pass over no more pixels than a training step (which also keeps
    # every activation for the backward pass) fits where training fits: skip
    # tracing the model, which costs seconds.
    return info
  estimate = eval_memory_bytes(config, model, eval_h, eval_w, per_device)
  memory = device_memory_bytes() if memory_bytes is None else int(memory_bytes)
  info.update(estimate_bytes=estimate, memory_bytes=memory)
  if memory is None or estimate <= WARN_FRACTION * memory:
    return info
  mode = str(config.eval.mode)
  other = 'slide' if mode == 'whole' else 'whole'
  other_estimate = eval_memory_bytes(config, model, eval_h, eval_w, per_device, mode=other)
  msg = (f'evaluating {split!r} with eval.mode={mode} at {eval_h}x{eval_w} (largest image: '
         f'{name}, {h}x{w}) needs at least {_gib(estimate)} per device ({per_device} image(s) '
         f'per device), against {_gib(memory)} of memory (eval.mode={other} would need at '
         f'least {_gib(other_estimate)}). Remedies: --config.data.resize=H,W (evaluate at a '
         f'lower resolution), --config.eval.mode=slide (windows of eval.crop_size), or a '
         f'smaller --config.eval.batch_size.')
  if estimate > memory:
    raise EvalDataError(msg + ' Refusing to start: the first evaluation would run out of memory.')
  warning = f'WARNING: {msg} It may run out of memory.'
  logging.warning(warning)
  if jax.process_index() == 0:
    print(warning, flush=True)
  info['warning'] = warning
  return info
