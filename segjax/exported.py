"""Loading an export written by `segjax export`: jax and json only.

`load(directory)` turns model.stablehlo + signature.json back into a callable
`model(uint8 images) -> float32 logits`, with no segjax model code, no flax
and no orbax imported (this module imports nothing else of segjax).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

FORMAT = 'segjax.export/1'
MODEL_FILE = 'model.stablehlo'
SIGNATURE_FILE = 'signature.json'


class LoadedModel:
  """A deserialized export: `model(images)` -> float32 logits (B, H, W, C).

  Attributes:
    directory: the export directory.
    signature: the parsed signature.json.
    exported: the `jax.export.Exported`.
  """

  def __init__(self, directory: str, signature: dict, exported: Any):
    self.directory = directory
    self.signature = signature
    self.exported = exported
    self._call = jax.jit(exported.call)

  @property
  def class_names(self) -> list[str]:
    return list(self.signature['class_names'])

  @property
  def palette(self) -> list[list[int]]:
    return [list(c) for c in self.signature['palette']]

  def __call__(self, images) -> jax.Array:
    """uint8 (B, H, W, 3) images -> float32 (B, H, W, num_classes) logits."""
    dtype = getattr(images, 'dtype', None)
    if dtype is None:
      images = jnp.asarray(images)
      dtype = images.dtype
    if dtype != jnp.uint8:
      raise TypeError(f'{self.directory}: images must be uint8 RGB in [0, 255], got dtype '
                      f'{dtype}')
    shape = tuple(images.shape)
    expected = self.signature['input']['shape']
    if len(shape) != 4 or shape[-1] != 3:
      raise ValueError(f'{self.directory}: images must be (B, H, W, 3), got shape {shape}; '
                       f'this export takes {expected}')
    for got, want in zip(shape, expected):
      if isinstance(want, int) and got != want:
        raise ValueError(f'{self.directory}: images of shape {shape} do not fit the '
                         f'exported input shape {expected}')
    backend = jax.default_backend()
    runs_on = {'gpu': ('cuda', 'rocm')}.get(backend, (backend,))
    platforms = list(self.signature['platforms'])
    if not set(runs_on) & set(platforms):
      raise ValueError(f'{self.directory}: exported for platforms {platforms}, but jax runs on '
                       f"{backend!r} here; export again with --platforms={','.join(platforms)},"
                       f'{runs_on[0]}')
    return self._call(images)


def load(directory: str) -> LoadedModel:
  """Loads an export directory written by `export_workdir` (jax + json only).

  Raises:
    FileNotFoundError: a file of the export is missing.
    ValueError: signature.json is not an export signature, or model.stablehlo
      does not match the SHA-256 it records.
  """
  sig_path = os.path.join(directory, SIGNATURE_FILE)
  model_path = os.path.join(directory, MODEL_FILE)
  for path in (sig_path, model_path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path}: no such file; expected a directory written by '
                              'segjax export')
  with open(sig_path) as f:
    try:
      signature = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{sig_path}: not valid JSON ({e})') from None
  if not isinstance(signature, dict) or signature.get('format') != FORMAT:
    got = signature.get('format') if isinstance(signature, dict) else type(signature).__name__
    raise ValueError(f'{sig_path}: format {got!r} is not {FORMAT!r}')
  with open(model_path, 'rb') as f:
    data = f.read()
  digest = hashlib.sha256(data).hexdigest()
  if digest != signature.get('sha256'):
    raise ValueError(f'{model_path}: SHA-256 {digest} differs from {signature.get("sha256")} '
                     f'recorded in {sig_path}; the file is corrupt or from another export')
  return LoadedModel(directory, signature, jax.export.deserialize(bytearray(data)))
