"""benchmarks/train_throughput.py: the harness runs, counts FLOPs right, and
fills every column (segjax only; the torch rows run in tests/parity)."""

import json
import math
import sys

import jax
import jax.numpy as jnp
from jax import lax
import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / 'benchmarks'))
import train_throughput  # noqa: E402  pylint: disable=g-import-not-at-top

_DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize('groups,strides', [(1, 1), (1, 2), (8, 1), (8, 2)])
def test_jaxpr_flops_counts_useful_multiply_adds(groups, strides):
  x = jnp.ones((2, 8, 8, 8))
  w = jnp.ones((3, 3, 8 // groups, 16 if groups == 1 else 8))
  conv = lambda x, w: lax.conv_general_dilated(x, w, (strides, strides), 'SAME',
                                               dimension_numbers=_DN,
                                               feature_group_count=groups)
  out = 2 * (8 // strides) ** 2 * w.shape[-1]
  forward = 2 * out * 9 * (8 // groups)  # 2 FLOPs per multiply-add.
  assert train_throughput.jaxpr_flops(jax.make_jaxpr(conv)(x, w).jaxpr) == forward
  # Input and kernel gradients: one forward's worth each, strided or not.
  grad = jax.grad(lambda x, w: jnp.sum(conv(x, w)), argnums=(0, 1))
  assert train_throughput.jaxpr_flops(jax.make_jaxpr(grad)(x, w).jaxpr) == 3 * forward
  dot = lambda a, b: a @ b
  assert train_throughput.jaxpr_flops(
      jax.make_jaxpr(dot)(jnp.ones((4, 5)), jnp.ones((5, 6))).jaxpr) == 2 * 4 * 5 * 6


def test_segjax_rows_run_and_fill_the_table(tmp_path):
  out = tmp_path / 'train.json'
  info = train_throughput.main([
      '--rows=unet_mnv2:2:32,dlv3p_mnv2:2:32', '--width=0.35', '--peers=', '--steps=1',
      '--repeats=2', '--warmup=1', f'--json={out}'])
  saved = json.loads(out.read_text())
  assert saved['matmul']['tflops'] > 0
  assert [r['name'] for r in saved['results']] == ['unet_mnv2', 'dlv3p_mnv2']
  for r in info['results']:
    (m,) = r['runs']
    assert m['framework'] == 'segjax' and 'error' not in m, m
    assert len(m['times']) == 2 and m['step_s'] > 0 and math.isfinite(m['loss'])
    assert m['compile_s'] > 0 and m['flops'] > 0 and m['params'] > 0
  # One table row per framework and row.
  table = train_throughput.table(info['results'], saved['matmul']['tflops'])
  assert table.count('\n| unet_mnv2 | segjax | 2 | 32x32 |') == 1


def test_bad_row_is_named():
  with pytest.raises(ValueError, match="row 'unet:2:32'"):
    train_throughput.parse_row('unet:2:32')
