"""Building blocks shared by the backbones and the segmentation heads.

Conventions (all modules):
  * NHWC activations; `dtype` is the compute dtype, parameters are always
    float32 (`param_dtype`).
  * BatchNorm keeps running statistics in the 'batch_stats' collection and has
    no `axis_name`: training runs under jax.jit with sharded global arrays, so
    the batch statistics XLA computes are already global.
  * `padding` is 'SAME' (TensorFlow/Keras: a stride-2 layer pads more at the
    bottom/right) or 'SYMMETRIC' (PyTorch/timm style fixed padding
    `((stride - 1) + dilation * (k - 1)) // 2` on every side).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any
Act = Callable[[jax.Array], jax.Array] | None

PADDINGS = ('SAME', 'SYMMETRIC')
DEPTHWISE_IMPLS = ('auto', 'xla', 'shift')
# How 1x1 and transposed convolutions are lowered (same parameters, same
# function; only the XLA program differs). 'auto' = 'fast' on CPU, 'xla' elsewhere;
# the environment variable SEGJAX_CONV_IMPL overrides it (benchmarks).
CONV_IMPLS = ('auto', 'xla', 'fast')

# He init for convolutions followed by BN + ReLU (heads, Xception).
he_normal = nn.initializers.he_normal()
# Keras' default for Conv2D / DepthwiseConv2D / Conv2DTranspose.
glorot_uniform = nn.initializers.glorot_uniform()


def canonical_dtype(dtype: Any) -> jnp.dtype:
  """'float32' | 'bfloat16' | 'float16' or a jnp dtype -> a floating jnp dtype."""
  try:
    dt = jnp.dtype(dtype)
  except TypeError:
    dt = None
  if dt is None or dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16),
                              jnp.dtype(jnp.float16)):
    raise ValueError(f"dtype {dtype!r} is not supported; use 'float32' or 'bfloat16'")
  return dt


def relu6(x: jax.Array) -> jax.Array:
  return jnp.minimum(nn.relu(x), 6.0)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def check_padding(padding: str) -> str:
  if padding not in PADDINGS:
    raise ValueError(f'padding {padding!r} is not one of {PADDINGS}')
  return padding


def conv_padding(padding: str, kernel_size: int | Sequence[int], strides: int = 1,
                 dilation: int = 1,
                 in_hw: Sequence[int] | None = None) -> str | list[tuple[int, int]]:
  """Padding argument for a conv: 'SAME', or explicit (lo, hi) pairs.

  With `in_hw` given, 'SAME' is also returned as explicit pairs (needed by the
  shifted-sum depthwise conv).
  """
  check_padding(padding)
  kernel_size = _pair(kernel_size)
  if padding == 'SYMMETRIC':
    return [(((strides - 1) + dilation * (k - 1)) // 2,) * 2 for k in kernel_size]
  if in_hw is None:
    return 'SAME'
  window = [dilation * (k - 1) + 1 for k in kernel_size]
  return lax.padtype_to_pads(tuple(in_hw), window, (strides, strides), 'SAME')


def batch_norm(*, train: bool, momentum: float, epsilon: float, dtype: Dtype,
               name: str | None = None) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                      dtype=dtype, param_dtype=jnp.float32, name=name)


REMAT_POLICIES = ('nothing_saveable', 'everything_saveable', 'dots_saveable',
                  'dots_with_no_batch_dims_saveable')


def remat_block(cls: type, remat: str = 'none', policy: str = 'nothing_saveable') -> type:
  """`cls`, or with remat='blocks' its rematerialised version: jax.checkpoint
  (nn.remat) with jax.checkpoint_policies.<policy>, so that the backward pass
  recomputes each block's activations from the block's input instead of
  keeping them. The wrapped module must be called as module(x, train) with
  `train` positional (a static argument). Parameter names do not change."""
  if remat == 'none':
    return cls
  if remat != 'blocks':
    raise ValueError(f"remat {remat!r} is not one of ('none', 'blocks')")
  if policy not in REMAT_POLICIES:
    raise ValueError(f'remat_policy {policy!r} is not one of {REMAT_POLICIES}')
  return nn.remat(cls, policy=getattr(jax.checkpoint_policies, policy), static_argnums=(2,))


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear resize of NHWC `x` to `size` = (h, w), half-pixel centres.

  This is align_corners=False (tf.image.resize / F.interpolate default). No
  antialiasing when downsampling, like both of those.
  """
  h, w = int(size[0]), int(size[1])
  if x.shape[1:3] == (h, w):
    return x
  out = jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), method='bilinear',
                         antialias=False)
  return out.astype(x.dtype)


def pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
  """Zero-pads NHWC `x` at the bottom and right so that H and W are multiples
  of `multiple` (zero is the mean of normalised images); callers crop the
  logits back with [:, :h, :w]."""
  h, w = x.shape[1:3]
  ph, pw = -h % multiple, -w % multiple
  return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0))) if ph or pw else x


def check_fixed_encoder(model, model_name: str, backbones: Sequence[str],
                        output_stride: int, why: str) -> None:
  """Checks num_classes, and the backbone and output_stride of a model whose
  encoder admits only `backbones` and `output_stride` (`why` says why)."""
  if model.num_classes < 1:
    raise ValueError(f'num_classes {model.num_classes!r} must be >= 1')
  if model.backbone not in backbones:
    raise ValueError(f'backbone {model.backbone!r} is not supported by {model_name!r} '
                     f'(only {", ".join(repr(b) for b in backbones)})')
  if model.output_stride != output_stride:
    raise ValueError(f'output_stride {model.output_stride!r} is not supported by '
                     f'{model_name!r} (only {output_stride}: {why})')


def check_module_args(module) -> None:
  """Shared argument checks of models and backbones; errors name the value."""
  canonical_dtype(module.dtype)
  check_padding(module.padding)
  resolve_depthwise_impl(module.depthwise_impl)
  width = getattr(module, 'width_multiplier', 1.0)
  if width <= 0:
    raise ValueError(f'width_multiplier {width!r} must be > 0')
  rate = getattr(module, 'dropout_rate', 0.0)
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'dropout_rate {rate!r} must be in [0, 1)')


def resolve_depthwise_impl(impl: str) -> str:
  """'auto' picks the shifted-sum formulation on CPU, XLA's grouped conv elsewhere.

  XLA:CPU lowers feature_group_count=C convolutions to a slow generic loop;
  nine shifted multiply-adds vectorise well there. GPU/TPU have fast kernels.
  """
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f'depthwise_impl {impl!r} is not one of {DEPTHWISE_IMPLS}')
  if impl == 'auto':
    return 'shift' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def depthwise_conv(x: jax.Array, kernel: jax.Array, *, strides: int,
                   dilation: int, pads: Sequence[tuple[int, int]],
                   impl: str) -> jax.Array:
  """Depthwise conv of NHWC `x` with a (kh, kw, 1, C) kernel; explicit pads."""
  if impl == 'xla':
    return lax.conv_general_dilated(
        x, kernel, window_strides=(strides, strides), padding=tuple(pads),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1])
  # Sum of kh * kw shifted (and strided) slices times per-channel weights. It is
  # all elementwise, so XLA fuses it; accumulating in float32 costs no memory
  # traffic and keeps bfloat16 sums accurate.
  out_dtype = x.dtype
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  b, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  oh = (h - dilation * (kh - 1) - 1) // strides + 1
  ow = (w - dilation * (kw - 1) - 1) // strides + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      start = (0, i * dilation, j * dilation, 0)
      limit = (b, start[1] + (oh - 1) * strides + 1, start[2] + (ow - 1) * strides + 1, c)
      patch = lax.slice(x, start, limit, (1, strides, strides, 1))
      term = patch.astype(acc_dtype) * kernel[i, j, 0].astype(acc_dtype)
      out = term if out is None else out + term
  return out.astype(out_dtype)


def resolve_conv_impl(impl: str | None = None) -> str:
  """'xla' (lax convolutions as written) or 'fast' (1x1 convolutions as matrix
  products, strided transposed convolutions with a kernel gradient made of
  matrix products).

  XLA:CPU differentiates a 1x1 conv through a generic convolution kernel and a
  transposed conv through an input-dilated one (10-30x slower than the
  equivalent matrix products in the backward pass); GPU and TPU lower both to
  fast kernels already.
  """
  impl = impl or os.environ.get('SEGJAX_CONV_IMPL', 'auto') or 'auto'
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv implementation {impl!r} (SEGJAX_CONV_IMPL) is not one of '
                     f'{CONV_IMPLS}')
  if impl == 'auto':
    return 'fast' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def _is_zero_padding(padding, ndim: int) -> bool:
  if isinstance(padding, str):
    return padding in ('SAME', 'VALID')  # Zero for a 1x1 window at any stride.
  return len(padding) == ndim and all(tuple(p) == (0, 0) for p in padding)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """lax.conv_general_dilated for NHWC/HWIO, with 1x1 convolutions computed as
  one (B*H*W, Cin) x (Cin, Cout) matrix product when resolve_conv_impl() is
  'fast'. Used as nn.Conv(conv_general_dilated=...): parameters are unchanged."""
  nhwc = dimension_numbers is None or tuple(
      getattr(dimension_numbers, 'lhs_spec', None) or ()) == (0, 3, 1, 2)
  ones = lambda v: v is None or all(int(d) == 1 for d in v)
  if (rhs.ndim == 4 and rhs.shape[:2] == (1, 1) and feature_group_count == 1 and nhwc
      and not kwargs and ones(lhs_dilation) and ones(rhs_dilation)
      and _is_zero_padding(padding, 2) and resolve_conv_impl() == 'fast'):
    sh, sw = (int(s) for s in window_strides)
    x = lhs[:, ::sh, ::sw] if (sh, sw) != (1, 1) else lhs
    b, h, w, c = x.shape
    y = jnp.dot(x.reshape(b * h * w, c), rhs.reshape(c, rhs.shape[-1]), precision=precision)
    return y.reshape(b, h, w, rhs.shape[-1])
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation,
                                  dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count, precision=precision,
                                  **kwargs)


# nn.Conv with the lowering above: a drop-in replacement (same parameters).
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def _transpose_pads(padding, kernel_size, strides) -> list[tuple[int, int]]:
  """(lo, hi) per spatial axis of the input-dilated convolution that
  lax.conv_transpose(padding, transpose_kernel=False) computes."""
  if isinstance(padding, str):
    return [_conv_transpose_pads_1d(k, s, padding) for k, s in zip(kernel_size, strides)]
  return [tuple(int(v) for v in p) for p in padding]


def _conv_transpose_pads_1d(k: int, s: int, padding: str) -> tuple[int, int]:
  # jax.lax.conv_transpose's rule for 'SAME' / 'VALID' (_conv_transpose_padding).
  if padding == 'SAME':
    pad_len = k + s - 2
    pad_a = k - 1 if s > k - 1 else -(-pad_len // 2)
  elif padding == 'VALID':
    pad_len = k + s - 2 + max(k - s, 0)
    pad_a = k - 1
  else:
    raise ValueError(f'padding {padding!r} is not SAME, VALID or (lo, hi) pairs')
  return pad_a, pad_len - pad_a


_DN = ('NHWC', 'HWIO', 'NHWC')
# Above this many kernel taps the weight gradient below would be too many
# small matrix products (FCN's 16x16 and 64x64 upsampling kernels): XLA's own
# gradient is used instead.
_MAX_DOT_TAPS = 16


def _tap_phases(n: int, k: int, s: int, lo: int, hi: int) -> list[tuple[int, int, int]]:
  """For one spatial axis of lax.conv_transpose(transpose_kernel=False) with
  input length n, kernel k, stride s and dilated-input pads (lo, hi): per tap
  t, (phase a, input offset, count m) such that tap t adds x[i + offset] * w[t]
  to output s * i + a for i in [0, m)."""
  length = (n - 1) * s + 1 + lo + hi - k + 1
  out = []
  for t in range(k):
    a = (lo - t) % s
    out.append((a, (a + t - lo) // s, len(range(a, length, s))))
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_transpose_fast(x, kernel, strides, pads, precision=None):
  """lax.conv_transpose(x, kernel, strides, pads, transpose_kernel=False) for
  NHWC x and a (kh, kw, in, out) kernel, whose kernel gradient is one matrix
  product per tap, sum_i x[i + offset]^T g[s * i + a], instead of XLA's
  input-dilated convolution (20-30x slower on XLA:CPU)."""
  return lax.conv_transpose(x, kernel, strides, pads, dimension_numbers=_DN,
                            precision=precision)


def _conv_transpose_fast_fwd(x, kernel, strides, pads, precision):
  return conv_transpose_fast(x, kernel, strides, pads, precision), (x, kernel)


def _conv_transpose_fast_bwd(strides, pads, precision, res, g):
  x, kernel = res
  # The input gradient is a strided convolution: XLA's own transpose rule.
  _, vjp_x = jax.vjp(lambda x: lax.conv_transpose(x, kernel, strides, pads,
                                                  dimension_numbers=_DN,
                                                  precision=precision), x)
  gx, = vjp_x(g)
  b, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  plan_h = _tap_phases(h, kh, strides[0], *pads[0])
  plan_w = _tap_phases(w, kw, strides[1], *pads[1])
  rows = []
  for ah, oh, mh in plan_h:
    cols = []
    for aw, ow, mw in plan_w:
      gp = g[:, ah::strides[0], aw::strides[1]][:, :mh, :mw]
      # x[i + offset] for i in [0, m), zero outside x.
      ph = (max(0, -oh), max(0, mh + oh - h))
      pw = (max(0, -ow), max(0, mw + ow - w))
      xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0))) if any(ph + pw) else x
      xs = xp[:, oh + ph[0]:oh + ph[0] + mh, ow + pw[0]:ow + pw[0] + mw]
      cols.append(jnp.dot(xs.reshape(-1, cin).T, gp.reshape(-1, cout), precision=precision,
                          preferred_element_type=jnp.float32))
    rows.append(jnp.stack(cols))
  return gx, jnp.stack(rows).astype(kernel.dtype)


conv_transpose_fast.defvjp(_conv_transpose_fast_fwd, _conv_transpose_fast_bwd)


class ConvTranspose(nn.Module):
  """nn.ConvTranspose (2-D, transpose_kernel=False) with the same parameters
  ('kernel' (kh, kw, in, out), 'bias' (out,)) and function; strided ones are
  differentiated with conv_transpose_fast when resolve_conv_impl() is 'fast'."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Any = 'SAME'
  use_bias: bool = True
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: Callable[..., Any] = nn.linear.default_kernel_init
  bias_init: Callable[..., Any] = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = _pair(self.kernel_size), _pair(self.strides)
    kernel = self.param('kernel', self.kernel_init, (*k, x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pads = tuple(tuple(p) for p in _transpose_pads(self.padding, k, s))
    if s != (1, 1) and k[0] * k[1] <= _MAX_DOT_TAPS and resolve_conv_impl() == 'fast':
      y = conv_transpose_fast(x, kernel, s, pads, self.precision)
    else:
      y = lax.conv_transpose(x, kernel, s, pads, transpose_kernel=False,
                             dimension_numbers=_DN, precision=self.precision)
    if bias is not None:
      y = y + bias
    return y


class DepthwiseConv(nn.Module):
  """Depthwise conv (channel multiplier 1) with dilation.

  The kernel has nn.Conv(feature_group_count=C)'s shape (kh, kw, 1, C), so the
  two implementations share parameters.
  """
  kernel_size: int = 3
  strides: int = 1
  dilation: int = 1
  padding: str = 'SAME'
  use_bias: bool = False
  depthwise_impl: str = 'auto'
  dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Any] = he_normal

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    k = _pair(self.kernel_size)
    kernel = self.param('kernel', self.kernel_init, (*k, 1, c), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    pads = conv_padding(self.padding, k, self.strides, self.dilation, in_hw=x.shape[1:3])
    y = depthwise_conv(x, kernel, strides=self.strides, dilation=self.dilation, pads=pads,
                       impl=resolve_depthwise_impl(self.depthwise_impl))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (c,), jnp.float32).astype(self.dtype)
    return y


class ConvBNAct(nn.Module):
  """Conv (no bias) -> BatchNorm -> activation (None: linear)."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  dilation: int = 1
  padding: str = 'SAME'
  act: Act = nn.relu
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Any] = he_normal

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    k = _pair(self.kernel_size)
    x = Conv(self.features, k, strides=self.strides,
                padding=conv_padding(self.padding, k, self.strides, self.dilation),
                kernel_dilation=self.dilation, use_bias=False, dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=self.kernel_init, name='conv')(x)
    x = batch_norm(train=train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                   dtype=self.dtype, name='bn')(x)
    return x if self.act is None else self.act(x)


class SeparableConv(nn.Module):
  """DeepLab-style separable conv: depthwise -> BN -> act -> pointwise -> BN -> act.

  Submodule names follow timm's SeparableConv2d (conv_dw, bn_dw, conv_pw,
  bn_pw). `act=None` gives the linear version used inside Xception modules that
  start with ReLU instead.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  dilation: int = 1
  padding: str = 'SAME'
  act: Act = nn.relu
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  depthwise_impl: str = 'auto'
  dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Any] = he_normal

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    bn = functools.partial(batch_norm, train=train, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon, dtype=self.dtype)
    act = (lambda y: y) if self.act is None else self.act
    x = DepthwiseConv(self.kernel_size, self.strides, self.dilation, self.padding,
                      depthwise_impl=self.depthwise_impl, dtype=self.dtype,
                      kernel_init=self.kernel_init, name='conv_dw')(x)
    x = act(bn(name='bn_dw')(x))
    x = Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=self.kernel_init, name='conv_pw')(x)
    return act(bn(name='bn_pw')(x))


class ASPP(nn.Module):
  """Atrous Spatial Pyramid Pooling (DeepLabV3/V3+, Chen et al. 2017/2018).

  Branches: 1x1 conv, three 3x3 atrous convs (separable when `separable`) and
  image pooling (global mean -> 1x1 conv -> BN -> ReLU -> broadcast back),
  concatenated -> 1x1 projection -> BN -> ReLU -> dropout.
  """
  features: int = 256
  rates: Sequence[int] = (6, 12, 18)
  separable: bool = True
  dropout_rate: float = 0.1
  padding: str = 'SAME'
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  depthwise_impl: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    common = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=self.dtype)
    branches = [ConvBNAct(self.features, 1, **common, name='aspp0')(x, train=train)]
    for i, rate in enumerate(self.rates, start=1):
      if self.separable:
        branch = SeparableConv(self.features, 3, dilation=rate, padding=self.padding,
                               depthwise_impl=self.depthwise_impl, **common,
                               name=f'aspp{i}')
      else:
        branch = ConvBNAct(self.features, 3, dilation=rate, padding=self.padding, **common,
                           name=f'aspp{i}')
      branches.append(branch(x, train=train))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = ConvBNAct(self.features, 1, **common, name='image_pooling')(pooled, train=train)
    # Bilinear upsampling of a 1x1 map is a broadcast.
    branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], self.features)))
    y = jnp.concatenate(branches, axis=-1)
    y = ConvBNAct(self.features, 1, **common, name='projection')(y, train=train)
    return nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class FCNHead(nn.Module):
  """torchvision FCNHead: 3x3 conv (no bias) -> BN -> ReLU -> Dropout -> 1x1 conv."""
  features: int
  num_classes: int
  dropout_rate: float = 0.1
  padding: str = 'SYMMETRIC'
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    # torchvision's init: kaiming_uniform_(a=sqrt(5)) = variance 1/(3 fan_in).
    torch_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
    x = Conv(self.features, (3, 3), padding=conv_padding(self.padding, 3),
                use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=torch_init, name='conv')(x)
    x = batch_norm(train=train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                          dtype=self.dtype, name='bn')(x)
    x = nn.Dropout(self.dropout_rate)(nn.relu(x), deterministic=not train)
    return Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=torch_init, name='classifier')(x)
