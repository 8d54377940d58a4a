"""Backbone registry: every backbone returns a feature dict keyed by nominal
stride ('stride2' ... 'stride32', plus backbone-specific extras) and trades
strides for dilations with `output_stride` 8 | 16 | 32.

  encoder = make_backbone('resnet50', output_stride=16, name='backbone')
  feats = encoder(images, train=train)  # feats['stride4'], feats['stride32'], ...
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

# name -> (module, class, fixed keyword arguments).
_BACKBONES: dict[str, tuple[str, str, dict[str, Any]]] = {
    'mobilenetv2': ('mobilenet_v2', 'MobileNetV2', {}),
    'xception65': ('xception', 'Xception65', {}),
    'resnet50': ('resnet', 'ResNet', {'depth': 50}),
    'resnet101': ('resnet', 'ResNet', {'depth': 101}),
    'resnet152': ('resnet', 'ResNet', {'depth': 152}),
    'vgg16': ('vgg', 'VGG', {'depth': 16}),
    'vgg16_bn': ('vgg', 'VGG', {'depth': 16, 'batch_norm': True}),
}
BACKBONES = tuple(_BACKBONES)


def backbone_class(name: str) -> tuple[type, dict[str, Any]]:
  if name not in _BACKBONES:
    raise ValueError(f'unknown backbone {name!r}; known: {sorted(_BACKBONES)}')
  module, cls, fixed = _BACKBONES[name]
  mod = importlib.import_module(f'segjax.models.backbones.{module}')
  return getattr(mod, cls), dict(fixed)


def backbone_kwargs_items(name: str, kwargs: Any) -> tuple[tuple[str, Any], ...]:
  """A model's `backbone_kwargs` (a dict or (key, value) pairs, e.g.
  {'bn_epsilon': 1e-5} for torchvision MobileNetV2 weights) as sorted,
  hashable pairs; each key must be an argument of backbone `name`."""
  try:
    items = dict(kwargs.items() if hasattr(kwargs, 'items') else kwargs or ())
  except (TypeError, ValueError):
    raise ValueError(f'backbone_kwargs {kwargs!r} must be a dict or (key, value) pairs'
                     ) from None
  cls, _ = backbone_class(name)
  fields = {f.name for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(items) - fields)
  if unknown:
    raise ValueError(f'backbone_kwargs {unknown!r} are not arguments of backbone {name!r}')
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in items.items()))


def make_backbone(name: str, *, width_multiplier: float = 1.0, name_: str = 'backbone',
                  **kwargs) -> Any:
  """Builds backbone `name` as a submodule called 'backbone' (the optimizer's
  freeze and the converters' 'backbone' kind rely on that name).

  Keyword arguments the backbone class does not have are dropped when they
  are None or equal the neutral defaults below; otherwise they are an error
  naming the keyword (e.g. width_multiplier=0.5 for a ResNet).
  """
  cls, fixed = backbone_class(name)
  fields = {f.name for f in dataclasses.fields(cls) if f.init}
  neutral = {'depthwise_impl': 'auto', 'width_multiplier': 1.0}
  args = dict(fixed)
  kwargs['width_multiplier'] = width_multiplier
  for key, value in kwargs.items():
    if key in fields:
      args[key] = value
    elif value is not None and neutral.get(key, object()) != value:
      raise ValueError(f'backbone {name!r} does not support {key}={value!r}')
  return cls(name=name_, **args)


__all__ = ['BACKBONES', 'backbone_class', 'backbone_kwargs_items', 'make_backbone']
