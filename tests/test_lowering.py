"""The CPU lowerings of 1x1 and transposed convolutions compute the same
function as flax's nn.Conv / nn.ConvTranspose, with the same parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import layers


def _grads(module, variables, x, gy):
  return jax.vjp(lambda v, x: module.apply(v, x), variables, x)[1](gy)


def _close(a, b, rtol=1e-5):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol,
                               atol=rtol * float(np.max(np.abs(v))))


@pytest.mark.parametrize('impl', ['fast', 'xla'])
@pytest.mark.parametrize('kernel,strides,padding', [
    (1, 1, 'SAME'), (1, 2, 'SAME'), (1, 2, ((0, 0), (0, 0))), (3, 1, 'SAME'), (3, 2, 'SAME')])
def test_conv_matches_flax(monkeypatch, impl, kernel, strides, padding):
  monkeypatch.setenv('SEGJAX_CONV_IMPL', impl)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 7, 6, 5)).astype(np.float32)
  ours = layers.Conv(4, (kernel, kernel), strides=strides, padding=padding)
  ref = nn.Conv(4, (kernel, kernel), strides=strides, padding=padding)
  v_ours, v_ref = ours.init(jax.random.key(0), x), ref.init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, v_ours, v_ref)  # Same init.
  y_ours, y_ref = ours.apply(v_ref, x), ref.apply(v_ref, x)
  assert y_ours.shape == y_ref.shape
  _close(y_ours, y_ref)
  gy = rng.standard_normal(y_ref.shape).astype(np.float32)
  _close(_grads(ours, v_ref, x, gy), _grads(ref, v_ref, x, gy))


def test_pointwise_conv_is_a_matrix_product_only_in_fast_mode(monkeypatch):
  x = jnp.ones((2, 4, 4, 3))
  conv = layers.Conv(5, (1, 1))
  v = conv.init(jax.random.key(0), x)
  for impl, prim in (('fast', 'dot_general'), ('xla', 'conv_general_dilated')):
    monkeypatch.setenv('SEGJAX_CONV_IMPL', impl)
    jaxpr = str(jax.make_jaxpr(lambda v: conv.apply(v, x))(v))
    assert prim in jaxpr
    assert ('conv_general_dilated' in jaxpr) == (impl == 'xla')


@pytest.mark.parametrize('impl', ['fast', 'xla'])
@pytest.mark.parametrize('hw,kernel,strides,padding', [
    ((8, 8), 3, 2, 'SAME'), ((7, 5), 3, 2, 'SAME'), ((4, 6), 4, 2, ((1, 1), (1, 1))),
    ((6, 6), 2, 2, 'VALID'), ((6, 6), 3, 3, 'SAME'), ((5, 5), 4, 2, ((0, 0), (0, 0))),
    ((6, 6), 3, 2, ((2, 1), (0, 2))), ((5, 4), 4, 4, ((0, 3), (1, 1))),
    ((3, 3), 8, 4, ((5, 5), (5, 5)))])
def test_conv_transpose_matches_flax(monkeypatch, impl, hw, kernel, strides, padding):
  monkeypatch.setenv('SEGJAX_CONV_IMPL', impl)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, *hw, 5)).astype(np.float32)
  ours = layers.ConvTranspose(4, (kernel, kernel), strides=(strides, strides), padding=padding)
  ref = nn.ConvTranspose(4, (kernel, kernel), strides=(strides, strides), padding=padding)
  v_ours, v_ref = ours.init(jax.random.key(0), x), ref.init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, v_ours, v_ref)
  y_ours, y_ref = ours.apply(v_ref, x), ref.apply(v_ref, x)
  assert y_ours.shape == y_ref.shape
  _close(y_ours, y_ref)
  gy = rng.standard_normal(y_ref.shape).astype(np.float32)
  _close(_grads(ours, v_ref, x, gy), _grads(ref, v_ref, x, gy))


def test_conv_transpose_kernel_gradient_is_matrix_products():
  x = jnp.ones((2, 4, 4, 3))
  ct = layers.ConvTranspose(5, (3, 3), strides=(2, 2))
  v = ct.init(jax.random.key(0), x)
  loss = lambda v: jnp.sum(ct.apply(v, x) ** 2)
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(v))
  # Forward and input gradient are convolutions; the 9 kernel taps are dots.
  assert jaxpr.count('dot_general') == 9


def test_unknown_conv_impl_is_named(monkeypatch):
  monkeypatch.setenv('SEGJAX_CONV_IMPL', 'fastest')
  with pytest.raises(ValueError, match="'fastest'.*SEGJAX_CONV_IMPL"):
    layers.resolve_conv_impl()
