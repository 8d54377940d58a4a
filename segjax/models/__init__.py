"""Segmentation models and their registry.

  model = get_model('deeplabv3plus', num_classes=21, backbone='mobilenetv2')
  variables = model.init({'params': k1, 'dropout': k2}, images, train=False)
  logits, new_state = model.apply(variables, images, train=True,
                                  mutable=['batch_stats'], rngs={'dropout': k3})

`images` are normalised float32 (B, H, W, 3); logits are float32
(B, H, W, num_classes) at input resolution. The encoder is the submodule
'backbone' (params['backbone']).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from segjax.models import layers
from segjax.models.deeplabv1 import DeepLabV1
from segjax.models.deeplabv2 import DeepLabV2
from segjax.models.deeplabv3 import DeepLabV3
from segjax.models.deeplabv3plus import DeepLabV3Plus
from segjax.models.dsrfcn import DSRFCN
from segjax.models.fcn import FCN8s, FCN16s, FCN32s
from segjax.models.fcn_sat import FCN8sSat, FCN16sSat, FCN32sSat
from segjax.models.segnet import BayesianSegNet, SegNet
from segjax.models.sepres_fcn import SepResFCN
from segjax.models.unet import UNet

MODELS: dict[str, type[nn.Module]] = {
    'deeplabv3': DeepLabV3,
    'deeplabv3plus': DeepLabV3Plus,
    'unet': UNet,
    'fcn32s': FCN32s,
    'fcn16s': FCN16s,
    'fcn8s': FCN8s,
    'segnet': SegNet,
    'bayesian_segnet': BayesianSegNet,
    'dsrfcn': DSRFCN,
    'sepres_fcn': SepResFCN,
    'deeplabv1': DeepLabV1,
    'deeplabv2': DeepLabV2,
    'fcn32s_sat': FCN32sSat,
    'fcn16s_sat': FCN16sSat,
    'fcn8s_sat': FCN8sSat,
}


def model_kwargs(name: str) -> tuple[str, ...]:
  """The keywords model `name` accepts (its dataclass fields)."""
  cls = MODELS[name]
  return tuple(f.name for f in dataclasses.fields(cls)
               if f.init and f.name not in ('parent', 'name'))


def get_model(name: str, *, num_classes: int, backbone: str | None = None,
              output_stride: int | None = None, width_multiplier: float = 1.0,
              freeze_encoder: bool = False, dtype: Any = 'float32', **kwargs) -> nn.Module:
  """Builds model `name`; raises ValueError naming an unknown model or keyword.

  `backbone` and `output_stride` default to the model's own defaults.
  `dtype` ('float32' | 'bfloat16' or a jnp dtype) is the compute dtype;
  parameters are always float32. Model-specific keywords (bn_momentum,
  aspp_channels, decoder_filters, ...) pass through `kwargs`.
  """
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; known models: {sorted(MODELS)}')
  accepted = model_kwargs(name)
  for key in kwargs:
    if key not in accepted:
      raise ValueError(f'unknown keyword {key!r} for model {name!r}; accepted: '
                       f'{sorted(accepted)}')
  # Sequences from configs may arrive as lists; module attributes stay hashable.
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  if backbone is not None:
    kwargs['backbone'] = backbone
  if output_stride is not None:
    kwargs['output_stride'] = output_stride
  return MODELS[name](num_classes=num_classes, width_multiplier=width_multiplier,
                      freeze_encoder=freeze_encoder, dtype=layers.canonical_dtype(dtype),
                      **kwargs)


__all__ = ['MODELS', 'BayesianSegNet', 'DSRFCN', 'DeepLabV1', 'DeepLabV2', 'DeepLabV3',
           'DeepLabV3Plus', 'FCN8s', 'FCN8sSat', 'FCN16s', 'FCN16sSat', 'FCN32s',
           'FCN32sSat', 'SegNet', 'SepResFCN', 'UNet',
           'get_model', 'model_kwargs']
