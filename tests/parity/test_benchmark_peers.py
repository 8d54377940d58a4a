"""The PyTorch peers of benchmarks/train_throughput.py: the tutorial U-Net port
has the segjax U-Net's parameter count, and a tiny side-by-side run fills the
peer rows."""

import sys

import pytest

from tests.conftest import ROOT

_PEERS = 'the benchmark peers need requirements-peers.txt'
for _module in ('torch', 'torchvision', 'segmentation_models_pytorch'):
  pytest.importorskip(_module, reason=_PEERS)

sys.path.insert(0, str(ROOT / 'benchmarks'))
import train_throughput  # noqa: E402  pylint: disable=g-import-not-at-top


def test_torch_unet_port_matches_segjax_parameter_count():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from segjax import train  # pylint: disable=g-import-not-at-top
  row = train_throughput.parse_row('unet_mnv2:2:128')
  model = train.build_model(train_throughput.segjax_config(row, 'float32', 1.0))
  shapes = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
      jnp.zeros((1, 128, 128, 3)), train=False))
  ours = sum(x.size for x in jax.tree.leaves(shapes['params']))
  peer = train_throughput.torch_model(row, 1.0)
  # BatchNorm scale/bias are parameters in both. The U-Net does not use
  # torchvision's final 1280-channel conv (features[18]) nor block 16's
  # projection BatchNorm (it taps the projection conv before it).
  unused = sum(p.numel() for m in (peer.features[18], peer.features[17].conv[3])
               for p in m.parameters())
  assert sum(p.numel() for p in peer.parameters()) - unused == ours


def test_peer_rows_run(tmp_path):
  info = train_throughput.main([
      '--rows=dlv3p_mnv2:2:32', '--width=0.35', '--peers=torch', '--steps=1', '--repeats=1',
      '--warmup=1', f'--json={tmp_path / "t.json"}'])
  runs = {m['framework']: m for m in info['results'][0]['runs']}
  assert set(runs) == {'segjax', 'torch'}
  assert 'error' not in runs['torch'], runs['torch']
  assert runs['torch']['step_s'] > 0 and runs['torch']['flops'] > 0
