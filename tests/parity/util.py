"""Helpers shared by the parity tests."""

from __future__ import annotations

import numpy as np

TOL = 1e-4
PEERS = 'parity group: pip install -r requirements-peers.txt'
RESULTS: dict[str, float] = {}


def rel_err(ours, peer) -> float:
  """max |ours - peer| / max |peer| (relative to the peer's largest value)."""
  ours = np.asarray(ours, np.float64)
  peer = np.asarray(peer, np.float64)
  assert ours.shape == peer.shape, (ours.shape, peer.shape)
  scale = np.max(np.abs(peer))
  assert scale > 0, 'peer output is all zeros: the comparison would be vacuous'
  return float(np.max(np.abs(ours - peer)) / scale)


def check(name: str, ours, peer, tol: float = TOL) -> float:
  """Records and asserts the relative error of one comparison."""
  err = rel_err(ours, peer)
  RESULTS[name] = max(err, RESULTS.get(name, 0.0))
  assert err <= tol, f'{name}: max rel error {err:.3e} > {tol:.0e}'
  return err


def torch_weights(module) -> dict[str, np.ndarray]:
  """A torch module's state_dict as numpy arrays (what a .pth file holds)."""
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def randomize_torch_bn(module, seed: int = 0) -> None:
  """Random affine parameters and running statistics for every BatchNorm."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        n = m.num_features
        m.weight.copy_(0.5 + torch.rand(n, generator=gen))
        m.bias.copy_(0.2 * torch.randn(n, generator=gen))
        m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def keras_weights(model) -> dict[str, np.ndarray]:
  """{'layer_name/i': array}: the i-th weight of each Keras layer, the names
  segjax.models.convert reads from Keras .h5 files."""
  out = {}
  for layer in model.layers:
    for i, w in enumerate(layer.weights):
      out[f'{layer.name}/{i}'] = np.asarray(w.numpy() if hasattr(w, 'numpy') else w.value)
  return out


def randomize_keras_bn(model, seed: int = 0) -> None:
  """Random gamma/beta/moving statistics for every Keras BatchNormalization."""
  import keras
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      values = []
      for w in layer.weights:
        n = w.shape[0]
        name = w.path.split('/')[-1] if hasattr(w, 'path') else w.name
        if 'gamma' in name or 'moving_variance' in name:
          values.append((0.5 + rng.random(n)).astype('float32'))
        else:
          values.append((0.2 * rng.standard_normal(n)).astype('float32'))
      layer.set_weights(values)
