"""A model wrapper that turns the normalised RGB input into other input channels.

build_model wraps the model when data.input_channels is not 'rgb', so that the
pipeline, evaluation, prediction and export all keep feeding normalised RGB
images. The wrapped model shares this module's scope: its parameters keep
their paths ('backbone', ...), so checkpoints, pretrained weights and
freeze_encoder see the same tree as without the wrapper.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from segjax.data import color


class BgrLabInput(nn.Module):
  """inner(B, G, R, L, a, b) of a normalised RGB batch (color.bgr_lab_features)."""
  inner: nn.Module
  mean: Sequence[float]
  std: Sequence[float]

  def setup(self):
    nn.share_scope(self, self.inner)

  def __call__(self, x, train: bool = False, **kwargs) -> Any:
    return self.inner(color.bgr_lab_features(x, self.mean, self.std, xp=jnp), train=train,
                      **kwargs)
