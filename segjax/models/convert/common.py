"""Shared pieces of the weight converters: a consumption-tracking weight dict,
layout transforms from PyTorch and Keras to flax, and tree helpers.

A converter is a function `fn(weights: SourceWeights) -> variables` where
`variables` is {'params': nested dict, 'batch_stats': nested dict} of numpy
float32 arrays laid out exactly like our flax module's variables. It takes
every tensor it maps with `weights.take(key)` and ends with
`weights.check_all_used(ignore=...)`, so a missing or unexpected tensor is an
error naming it and the file, never a silently random layer.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable, Iterable, Mapping

import numpy as np


class ConversionError(ValueError):
  """A weights file does not fit the architecture; the message names the key."""


class SourceWeights:
  """Flat {name: array} from a weights file, remembering which names were used."""

  def __init__(self, arrays: Mapping[str, Any], source: str = '<memory>'):
    self._arrays = {k: np.asarray(v) for k, v in arrays.items()}
    self._used: set[str] = set()
    self.source = source

  def __contains__(self, key: str) -> bool:
    return key in self._arrays

  def keys(self) -> list[str]:
    return list(self._arrays)

  def take(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The array `key` as float32; errors name the key, the file and shapes."""
    if key not in self._arrays:
      raise ConversionError(f'{self.source}: tensor {key!r} is missing '
                            f'(have {len(self._arrays)} tensors, e.g. '
                            f'{sorted(self._arrays)[:5]})')
    if key in self._used:
      raise ConversionError(f'{self.source}: tensor {key!r} is used twice')
    value = self._arrays[key]
    if shape is not None and tuple(value.shape) != tuple(shape):
      raise ConversionError(f'{self.source}: tensor {key!r} has shape {value.shape}, '
                            f'expected {tuple(shape)}')
    self._used.add(key)
    return np.asarray(value, dtype=np.float32)

  def unused(self, ignore: Iterable[str] = ()) -> list[str]:
    ignore = tuple(ignore)
    return sorted(k for k in self._arrays if k not in self._used
                  and not any(fnmatch.fnmatchcase(k, pat) for pat in ignore))

  def check_all_used(self, ignore: Iterable[str] = ()) -> None:
    """Raises naming every tensor that was not mapped (glob patterns in `ignore`)."""
    left = self.unused(ignore)
    if left:
      raise ConversionError(f'{self.source}: {len(left)} tensors were not mapped to the '
                            f'architecture (wrong --arch?): {left[:10]}')


# --- PyTorch layouts -> flax --------------------------------------------------

def torch_conv(w: np.ndarray) -> np.ndarray:
  """Conv2d weight (out, in, kh, kw) -> flax (kh, kw, in, out)."""
  return np.transpose(w, (2, 3, 1, 0))


def torch_depthwise(w: np.ndarray) -> np.ndarray:
  """Depthwise Conv2d weight (C, 1, kh, kw) -> our DepthwiseConv (kh, kw, 1, C)."""
  return np.transpose(w, (2, 3, 1, 0))


def torch_conv_transpose(w: np.ndarray) -> np.ndarray:
  """ConvTranspose2d weight (in, out, kh, kw) -> flax ConvTranspose kernel
  (kh, kw, in, out) with transpose_kernel=False: the spatially flipped kernel."""
  return np.transpose(w, (2, 3, 0, 1))[::-1, ::-1].copy()


def torch_linear(w: np.ndarray) -> np.ndarray:
  """Linear weight (out, in) -> flax Dense (in, out)."""
  return np.transpose(w)


def torch_conv_params(weights: SourceWeights, prefix: str, *, bias: bool = False,
                      depthwise: bool = False) -> dict[str, np.ndarray]:
  fn = torch_depthwise if depthwise else torch_conv
  out = {'kernel': fn(weights.take(prefix + '.weight'))}
  if bias:
    out['bias'] = weights.take(prefix + '.bias')
  return out


def torch_bn(weights: SourceWeights, prefix: str) -> tuple[dict, dict]:
  """BatchNorm2d -> ({'scale', 'bias'}, {'mean', 'var'}); num_batches_tracked
  is ignored by the caller's `check_all_used(ignore=['*num_batches_tracked'])`."""
  params = {'scale': weights.take(prefix + '.weight'), 'bias': weights.take(prefix + '.bias')}
  stats = {'mean': weights.take(prefix + '.running_mean'),
           'var': weights.take(prefix + '.running_var')}
  return params, stats


TORCH_IGNORE = ('*num_batches_tracked',)


# --- Keras layouts -> flax ----------------------------------------------------

def keras_conv_transpose(w: np.ndarray) -> np.ndarray:
  """Conv2DTranspose kernel (kh, kw, out, in) -> flax ConvTranspose kernel
  (kh, kw, in, out) with transpose_kernel=False: flipped, last axes swapped."""
  return np.transpose(w, (0, 1, 3, 2))[::-1, ::-1].copy()


def keras_depthwise(w: np.ndarray) -> np.ndarray:
  """DepthwiseConv2D kernel (kh, kw, C, 1) -> our DepthwiseConv (kh, kw, 1, C)."""
  return np.transpose(w, (0, 1, 3, 2))


# --- Trees --------------------------------------------------------------------

def set_path(tree: dict, path: str | tuple[str, ...], value: Any) -> None:
  """tree['a']['b'] = value for path 'a/b' (creating dicts)."""
  keys = path.split('/') if isinstance(path, str) else path
  for k in keys[:-1]:
    tree = tree.setdefault(k, {})
  if keys[-1] in tree:
    raise ConversionError(f'target {"/".join(keys)} is written twice')
  tree[keys[-1]] = value


def put_module(variables: dict, path: str, params: Mapping | None = None,
               stats: Mapping | None = None) -> None:
  """Stores a module's params (and batch_stats) under `path` ('a/b/conv')."""
  for collection, leaves in (('params', params), ('batch_stats', stats)):
    for name, value in (leaves or {}).items():
      set_path(variables.setdefault(collection, {}), f'{path}/{name}', value)


def flatten(tree: Mapping, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    key = f'{prefix}/{k}' if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, key))
    else:
      out[key] = v
  return out


def check_matches(converted: Mapping, reference: Mapping, what: str = 'converted') -> None:
  """Raises naming every leaf whose presence or shape differs between two
  variable trees (e.g. converted weights vs `model.init` of the target)."""
  got, want = flatten(converted), flatten(reference)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(got) & set(want)
                 if tuple(np.shape(got[k])) != tuple(np.shape(want[k])))
  problems = []
  if missing:
    problems.append(f'missing {len(missing)}: {missing[:8]}')
  if extra:
    problems.append(f'unexpected {len(extra)}: {extra[:8]}')
  if wrong:
    problems.append('shape mismatch: ' + ', '.join(
        f'{k} {np.shape(got[k])} vs {np.shape(want[k])}' for k in wrong[:8]))
  if problems:
    raise ConversionError(f'{what} variables do not fit the model: ' + '; '.join(problems))


# --- Registry entries -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Converter:
  """How to turn one peer's weights into our variables.

  Attributes:
    fn: SourceWeights -> {'params': ..., 'batch_stats': ...} (numpy, nested
      dicts laid out like `build(...)`'s variables). Ends with
      `weights.check_all_used(...)`.
    kind: 'backbone' (variables of a backbone module, loaded under
      params['backbone'] of any model using that backbone) or 'model' (a whole
      registered model).
    build: returns the flax module the variables belong to, configured to
      compute the peer's function. kind 'backbone': build(); kind 'model':
      build(num_classes).
    model: the `config.model` entries that reproduce the peer inside a
      segjax model, e.g. {'backbone': 'resnet50', 'padding': 'SYMMETRIC'} or
      {'name': 'deeplabv3', 'backbone': 'resnet50', 'output_stride': 8,
      'kwargs': {'multi_grid': None, 'aux_head': True}}.
    peer: what it was verified against, e.g. 'torchvision.models.resnet50'.
    classifier: kind 'model': the params path of the classifier bias
      ('classifier/bias'), whose length is num_classes.
    keras_layers: Keras sources only: () -> [(layer_name, class_name), ...] of
      the weight-bearing layers in `model.layers` order (reads Keras 3
      `.weights.h5` files, which name layers by class and position).
  """
  fn: Callable[[SourceWeights], dict]
  kind: str
  build: Callable[..., Any]
  model: Mapping[str, Any]
  peer: str
  classifier: str | None = None
  keras_layers: Callable[[], list[tuple[str, str]]] | None = None
