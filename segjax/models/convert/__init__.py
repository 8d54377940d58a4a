"""Weight import from local torchvision / Keras / timm files.

  variables, meta = convert('torchvision', 'resnet50', '/path/resnet50-0676ba61.pth')
  save_pretrained('/path/out', variables, meta)        # what `python -m segjax.tools.convert_weights` does
  ... config.model.pretrained = '/path/out'            # used by segjax.train at init

Each (source, arch) has a `Converter` (common.py) in a family module
(resnet.py, vgg.py, mobilenet.py, xception.py) whose output is checked
leaf by leaf against the flax module it is for, and verified in
tests/parity against the peer framework's own forward pass.

This is a package rather than the single convert.py DESIGN.md sketches: the
name mappings of four backbone families and three file formats are easier
to read, test and extend one family per file.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from segjax.models.convert import common
from segjax.models.convert import readers
from segjax.models.convert.common import ConversionError, Converter, SourceWeights

FAMILIES = ('resnet', 'vgg', 'mobilenet', 'xception')
SOURCES = ('torchvision', 'keras', 'timm')
META_FILE = 'segjax_pretrained.json'
_VARIABLES_DIR = 'variables'


def converters() -> dict[tuple[str, str], Converter]:
  """All registered converters, keyed by (source, arch)."""
  out: dict[tuple[str, str], Converter] = {}
  for family in FAMILIES:
    module = importlib.import_module(f'segjax.models.convert.{family}')
    for key, conv in module.CONVERTERS.items():
      if key in out:
        raise RuntimeError(f'converter {key} is registered twice')
      out[key] = conv
  return out


def get_converter(source: str, arch: str) -> Converter:
  table = converters()
  if (source, arch) not in table:
    if source not in SOURCES:
      raise ConversionError(f'unknown source {source!r}; known: {SOURCES}')
    known = sorted(a for s, a in table if s == source)
    raise ConversionError(f'no converter for --from={source} --arch={arch}; '
                          f'{source} archs: {known}')
  return table[(source, arch)]


def _init_shapes(module, kind: str) -> dict:
  x = jnp.zeros((1, 64, 64, 3), jnp.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  shapes = jax.eval_shape(lambda: module.init(rngs, x, train=False))
  return {k: v for k, v in shapes.items() if k in ('params', 'batch_stats')}


def convert(source: str, arch: str, path: str) -> tuple[dict, dict]:
  """Reads `path`, maps it onto our layout and checks it against the module.

  Returns (variables, meta): variables = {'params', 'batch_stats'} of numpy
  float32 arrays; meta = what the weights are (kind, source, arch, peer, the
  config.model entries that reproduce the peer, num_classes for models).
  """
  conv = get_converter(source, arch)
  arrays = readers.read_weights(path, conv.keras_layers() if conv.keras_layers else None)
  variables = conv.fn(SourceWeights(arrays, source=os.fspath(path)))
  variables = {k: variables.get(k, {}) for k in ('params', 'batch_stats')}
  meta = {'kind': conv.kind, 'source': source, 'arch': arch, 'peer': conv.peer,
          'model': config_entries(conv.model), 'weights_file': os.path.abspath(path)}
  if conv.kind == 'model':
    leaf = common.flatten(variables['params']).get(conv.classifier)
    if leaf is None:
      raise ConversionError(f'{path}: converted weights lack the classifier {conv.classifier!r}')
    meta['num_classes'] = int(np.shape(leaf)[-1])
    module = conv.build(meta['num_classes'])
  else:
    module = conv.build()
  common.check_matches(variables, _init_shapes(module, conv.kind), what=f'{source}/{arch}')
  return variables, meta


_CONFIG_MODEL_KEYS = ('name', 'backbone', 'output_stride', 'width_multiplier')


def config_entries(model: Mapping[str, Any]) -> dict:
  """A converter's model entries as config.model keys: the schema's own keys
  at the top, every other model keyword under 'kwargs'."""
  out = {k: v for k, v in model.items() if k in _CONFIG_MODEL_KEYS}
  kwargs = {k: v for k, v in model.items() if k not in _CONFIG_MODEL_KEYS and k != 'kwargs'}
  kwargs.update(model.get('kwargs', {}))
  if kwargs:
    out['kwargs'] = kwargs
  return out


# --- Pretrained directories ---------------------------------------------------

def save_pretrained(out_dir: str, variables: Mapping, meta: Mapping) -> str:
  """Writes an orbax checkpoint of `variables` plus the JSON metadata."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  out_dir = os.path.abspath(out_dir)
  target = os.path.join(out_dir, _VARIABLES_DIR)
  if os.path.exists(target):
    raise FileExistsError(f'{target} exists; choose a new --out directory')
  os.makedirs(out_dir, exist_ok=True)
  tree = jax.tree.map(lambda x: np.asarray(x, np.float32), dict(variables))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(target, tree)
    ckptr.wait_until_finished()
  with open(os.path.join(out_dir, META_FILE), 'w') as f:
    json.dump(dict(meta), f, indent=1)
  return out_dir


def load_pretrained(directory: str) -> tuple[dict, dict]:
  """(variables as numpy, meta) from a directory written by save_pretrained."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, META_FILE)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f'{directory} is not a converted-weights directory (no '
                            f'{META_FILE}); create one with python -m segjax.tools.convert_weights')
  with open(meta_path) as f:
    meta = json.load(f)
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(os.path.join(directory, _VARIABLES_DIR))
  tree = jax.tree.map(np.asarray, tree)
  return {k: tree.get(k, {}) for k in ('params', 'batch_stats')}, meta


def _excluded(path: str, patterns: tuple[str, ...]) -> bool:
  return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def merge_pretrained(variables: Mapping[str, Any], pretrained: Mapping[str, Any],
                     meta: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> dict:
  """Returns `variables` ({'params', 'batch_stats'} of the model being trained)
  with the pretrained leaves put in.

  kind 'backbone' fills params['backbone'] / batch_stats['backbone']; kind
  'model' fills the whole tree. Pretrained leaves the model lacks (e.g. Keras
  MobileNetV2's Conv_1 when our encoder stops before it) are dropped; a
  model leaf the pretrained tree lacks, or a shape mismatch, is an error
  naming the leaf unless it matches `exclude` ('params/classifier/*').
  """
  kind = meta.get('kind')
  if kind not in ('backbone', 'model'):
    raise ConversionError(f'pretrained weights have unknown kind {kind!r}')
  out = {}
  problems = []
  for collection in ('params', 'batch_stats'):
    ours = common.flatten(variables.get(collection, {}))
    theirs = common.flatten(pretrained.get(collection, {}))
    if kind == 'backbone':
      theirs = {f'backbone/{k}': v for k, v in theirs.items()}
      scope = [k for k in ours if k.startswith('backbone/')]
      if not scope and ours:
        raise ConversionError("the model has no 'backbone' submodule to load "
                              f"{meta.get('source')}/{meta.get('arch')} weights into")
    else:
      scope = list(ours)
    merged = dict(ours)
    for key in scope:
      full = f'{collection}/{key}'
      if _excluded(full, exclude):
        continue
      if key not in theirs:
        problems.append(f'{full} is not in the pretrained weights')
      elif tuple(np.shape(theirs[key])) != tuple(np.shape(ours[key])):
        problems.append(f'{full}: pretrained shape {np.shape(theirs[key])} != model shape '
                        f'{np.shape(ours[key])}')
      else:
        merged[key] = jnp.asarray(theirs[key], dtype=jnp.asarray(ours[key]).dtype)
    if problems:
      hint = (' (a different num_classes? exclude the classifier with '
              "model.pretrained_exclude='params/classifier/*')" if kind == 'model' else '')
      raise ConversionError(f"pretrained {meta.get('source')}/{meta.get('arch')} does not fit "
                            f'the model: ' + '; '.join(problems[:8]) + hint)
    tree: dict = {}
    for key, value in merged.items():
      common.set_path(tree, key, value)
    out[collection] = tree
  return out


def dropped_leaves(variables: Mapping[str, Any], pretrained: Mapping[str, Any],
                   meta: Mapping[str, Any]) -> list[str]:
  """Pretrained leaves that merge_pretrained would not use (for a log line)."""
  left = []
  for collection in ('params', 'batch_stats'):
    ours = common.flatten(variables.get(collection, {}))
    prefix = 'backbone/' if meta.get('kind') == 'backbone' else ''
    for key in common.flatten(pretrained.get(collection, {})):
      if prefix + key not in ours:
        left.append(f'{collection}/{prefix}{key}')
  return left


__all__ = ['ConversionError', 'Converter', 'SourceWeights', 'convert', 'converters',
           'dropped_leaves', 'get_converter', 'load_pretrained', 'merge_pretrained',
           'save_pretrained']
