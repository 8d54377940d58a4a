"""Fully connected CRF post-processing (Krähenbühl & Koltun, 2011, "Efficient
Inference in Fully Connected CRFs with Gaussian Edge Potentials"), as DeepLab
v1/v2 apply it to the network's class probabilities.

Energy over labellings x of the pixels i of one image:
  E(x) = sum_i -log P_i(x_i) + sum_{i<j} [x_i != x_j] k(i, j)            (Potts)
  k(i, j) = w_app exp(-|p_i - p_j|^2 / 2 theta_a^2 - |I_i - I_j|^2 / 2 theta_b^2)
          + w_smooth exp(-|p_i - p_j|^2 / 2 theta_g^2)
with p pixel positions (row, column) and I RGB colours in [0, 255]. Mean-field
inference starts from Q = P and repeats `iterations` times
  Q_i(l) <- softmax_l(log P_i(l) + sum_m w_m sum_{j != i} k_m(i, j) Q_j(l))
(the Potts penalty sum_{l' != l} = sum_all - (l' = l), and sum_all is the
same for every label, so it cancels in the softmax).

Computation:
  * the smoothness kernel is separable in rows and columns: two exact matrix
    products per label (an H x H and a W x W Gaussian), O(N (H + W));
  * the appearance kernel is summed exactly over all pixel pairs, O(N^2), in
    blocks of target pixels (fine up to a few 10^4 pixels), or, with
    `source_stride` s > 1, over the pixels of every s-th row and column, each
    standing for its s x s cell (weight s^2): O(N^2 / s^2), an approximation
    for full-size images (theta_a = 121 pixels is many cells wide).
Defaults are DeepLab's published CRF settings for its VGG-16 models.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

_BLOCK = 2048  # Target pixels per block of the appearance sum.


@dataclasses.dataclass(frozen=True)
class DenseCRF:
  """Mean-field dense CRF with Potts compatibility (hashable: static in jit).

  Attributes:
    iterations: mean-field updates (0 returns the input probabilities).
    appearance_weight, appearance_xy_std, appearance_rgb_std: w_app,
      theta_a (pixels), theta_b (RGB units in [0, 255]).
    smoothness_weight, smoothness_xy_std: w_smooth, theta_g (pixels).
    source_stride: 1 = exact appearance sum; s > 1 sums over every s-th row
      and column (weight s^2).
    mean, std: the per-channel normalisation of the model's input images
      ([0, 255] units); `refine` undoes it to get colours.
  """
  iterations: int = 10
  appearance_weight: float = 4.0
  appearance_xy_std: float = 121.0
  appearance_rgb_std: float = 5.0
  smoothness_weight: float = 3.0
  smoothness_xy_std: float = 3.0
  source_stride: int = 1
  mean: tuple[float, ...] = (0.0, 0.0, 0.0)
  std: tuple[float, ...] = (1.0, 1.0, 1.0)

  def __post_init__(self):
    if int(self.iterations) != self.iterations or self.iterations < 0:
      raise ValueError(f'crf iterations {self.iterations!r} must be an integer >= 0')
    for name in ('appearance_weight', 'smoothness_weight'):
      if getattr(self, name) < 0:
        raise ValueError(f'crf {name} {getattr(self, name)!r} must be >= 0')
    for name in ('appearance_xy_std', 'appearance_rgb_std', 'smoothness_xy_std'):
      if not getattr(self, name) > 0:
        raise ValueError(f'crf {name} {getattr(self, name)!r} must be > 0')
    if int(self.source_stride) != self.source_stride or self.source_stride < 1:
      raise ValueError(f'crf source_stride {self.source_stride!r} must be an integer >= 1')
    if len(self.mean) < 3 or len(self.std) < 3 or not all(s > 0 for s in self.std):
      raise ValueError(f'crf mean {self.mean!r} / std {self.std!r} must have >= 3 entries '
                       '(the colour channels), std > 0')

  @classmethod
  def from_config(cls, config) -> 'DenseCRF | None':
    """DenseCRF from config.eval.crf (None when disabled or absent)."""
    block = config.eval.get('crf') if hasattr(config.eval, 'get') else None
    if block is None or not block.enabled:
      return None
    return cls(iterations=int(block.iterations),
               appearance_weight=float(block.appearance_weight),
               appearance_xy_std=float(block.appearance_xy_std),
               appearance_rgb_std=float(block.appearance_rgb_std),
               smoothness_weight=float(block.smoothness_weight),
               smoothness_xy_std=float(block.smoothness_xy_std),
               source_stride=int(block.source_stride),
               mean=tuple(float(v) for v in config.data.mean),
               std=tuple(float(v) for v in config.data.std))

  def refine(self, log_probs: jax.Array, images: jax.Array) -> jax.Array:
    """Mean-field log Q (B, H, W, C) from the network's log-probabilities
    and the normalised input `images` (B, H, W, >= 3; the first three
    channels are the colour)."""
    rgb = (images[..., :3].astype(jnp.float32) * jnp.asarray(self.std[:3], jnp.float32)
           + jnp.asarray(self.mean[:3], jnp.float32))
    return jax.vmap(lambda lp, im: mean_field(lp, im, self))(
        log_probs.astype(jnp.float32), rgb)


def _gaussian_matrix(n: int, std: float) -> jax.Array:
  d = jnp.arange(n, dtype=jnp.float32)
  return jnp.exp(-0.5 * jnp.square((d[:, None] - d[None, :]) / std))


def smoothness_message(q: jax.Array, std: float) -> jax.Array:
  """sum_{j != i} exp(-|p_i - p_j|^2 / 2 std^2) q_j for q (H, W, C): the
  Gaussian is a product of a row and a column Gaussian."""
  h, w = q.shape[:2]
  out = jnp.einsum('ab,bwc->awc', _gaussian_matrix(h, std), q)
  out = jnp.einsum('xy,ayc->axc', _gaussian_matrix(w, std), out)
  return out - q  # k(i, i) = 1: leave out j = i.


def _features(rgb: jax.Array, xy_std: float, rgb_std: float) -> jax.Array:
  """(H, W, 5) scaled (row, column, r, g, b) of one image."""
  h, w = rgb.shape[:2]
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                            indexing='ij')
  pos = jnp.stack([rows, cols], axis=-1) / xy_std
  return jnp.concatenate([pos, rgb.astype(jnp.float32) / rgb_std], axis=-1)


def appearance_message(q: jax.Array, rgb: jax.Array, xy_std: float, rgb_std: float,
                       source_stride: int = 1) -> jax.Array:
  """sum_{j != i} exp(-|p_i - p_j|^2 / 2 xy_std^2 - |I_i - I_j|^2 / 2 rgb_std^2) q_j
  for q (H, W, C) and colours `rgb` (H, W, 3), exactly (stride 1) or over
  every `source_stride`-th row and column with weight stride^2."""
  h, w, c = q.shape
  f = _features(rgb, xy_std, rgb_std)
  s = int(source_stride)
  src_f = f[::s, ::s].reshape(-1, f.shape[-1])
  src_q = q[::s, ::s].reshape(-1, c)
  tgt = f.reshape(-1, f.shape[-1])
  n = tgt.shape[0]
  block = min(n, _BLOCK)
  blocks = jnp.pad(tgt, ((0, -n % block), (0, 0))).reshape(-1, block, tgt.shape[-1])

  def one_block(t):
    # Squared distances feature by feature (not |t|^2 + |s|^2 - 2 t.s, which
    # cancels badly in float32 with colours / 5 up to 51).
    d2 = sum(jnp.square(t[:, k, None] - src_f[None, :, k]) for k in range(t.shape[-1]))
    return jnp.exp(-0.5 * d2) @ src_q

  out = jax.lax.map(one_block, blocks).reshape(-1, c)[:n].reshape(h, w, c)
  # Leave out j = i (k(i, i) = 1) where pixel i is itself a source.
  on_grid = jnp.zeros((h, w, 1), jnp.float32).at[::s, ::s].set(1.0)
  return float(s * s) * (out - on_grid * q)


def mean_field(log_probs: jax.Array, rgb: jax.Array, crf: DenseCRF) -> jax.Array:
  """`crf.iterations` mean-field updates for one image: log_probs (H, W, C)
  of the network, rgb (H, W, 3) in [0, 255]. Returns log Q (H, W, C)."""
  unary = jax.nn.log_softmax(log_probs.astype(jnp.float32), axis=-1)

  def update(_, q):
    msg = 0.0
    if crf.appearance_weight:
      msg = msg + crf.appearance_weight * appearance_message(
          q, rgb, crf.appearance_xy_std, crf.appearance_rgb_std, crf.source_stride)
    if crf.smoothness_weight:
      msg = msg + crf.smoothness_weight * smoothness_message(q, crf.smoothness_xy_std)
    return jax.nn.softmax(unary + msg, axis=-1)

  q = jax.lax.fori_loop(0, int(crf.iterations), update, jnp.exp(unary))
  return jnp.log(jnp.maximum(q, jnp.finfo(jnp.float32).tiny))


def crf_config_keys() -> Sequence[str]:
  """The keys of config.eval.crf besides 'enabled'."""
  return tuple(f.name for f in dataclasses.fields(DenseCRF) if f.name not in ('mean', 'std'))
