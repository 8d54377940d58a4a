"""Accelerator tools: persistent compilation cache, gradient accumulation,
backbone rematerialisation (issue 19)."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from segjax import config as config_lib
from segjax import optim
from segjax import sharding
from segjax import train
from segjax.models import layers
from segjax.models.backbones import resnet

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------
# Persistent compilation cache

_CACHE_SCRIPT = textwrap.dedent('''
  import json, sys
  sys.path.insert(0, {root!r})
  import jax, jax.numpy as jnp
  from segjax import compile_cache, config as config_lib
  c = config_lib.base_config()
  c.compile.cache_dir = {cache!r}
  c.compile.cache_min_compile_seconds = 0.0
  info = compile_cache.setup(c)

  @jax.jit
  def f(x):
    for i in range(30):
      x = jnp.tanh(x @ x.T + i)
    return x

  compiled, seconds, hits = compile_cache.timed_compile(f, jnp.ones((64, 64)))
  compiled(jnp.ones((64, 64))).block_until_ready()
  print('RESULT ' + json.dumps(dict(info, seconds=seconds, hits=hits,
                                    counts=compile_cache.cache_counts())))
''')


def _run_cache_process(cache_dir: str) -> dict:
  env = dict(os.environ)
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # The config must be what turns it on.
  env['JAX_PLATFORMS'] = 'cpu'
  out = subprocess.run([sys.executable, '-c', _CACHE_SCRIPT.format(root=str(ROOT),
                                                                   cache=cache_dir)],
                       capture_output=True, text=True, env=env, timeout=300, check=True)
  line = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


def test_second_process_loads_the_step_from_the_persistent_cache(tmp_path):
  cache = str(tmp_path / 'jax_cache')
  first = _run_cache_process(cache)
  assert first['cache_dir'] == cache
  assert first['hits'] == 0 and first['counts']['misses'] >= 1
  entries = os.listdir(cache)
  assert entries, 'the first process wrote nothing to the cache'
  second = _run_cache_process(cache)
  # jax's own monitoring events: the executable came from the cache.
  assert second['hits'] >= 1 and second['counts']['hits'] >= 1
  assert second['counts']['misses'] == 0


def test_cache_dir_values(monkeypatch, tmp_path):
  from segjax import compile_cache
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert compile_cache.resolve_cache_dir('auto') == str(tmp_path / 'segjax' / 'jax_cache')
  monkeypatch.delenv('XDG_CACHE_HOME')
  assert compile_cache.resolve_cache_dir('auto') == os.path.expanduser(
      '~/.cache/segjax/jax_cache')
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', '/x/y')
  assert compile_cache.resolve_cache_dir('auto') == '/x/y'
  assert compile_cache.resolve_cache_dir('') == ''


def test_autotune_level_goes_to_xla_flags_or_warns(monkeypatch):
  from segjax import compile_cache
  monkeypatch.setenv('XLA_FLAGS', '--xla_foo=1')
  monkeypatch.setattr(compile_cache, '_backend_started', lambda: False)
  assert compile_cache.set_autotune_level(2) is None
  assert os.environ['XLA_FLAGS'] == '--xla_foo=1 --xla_gpu_autotune_level=2'
  # An explicit user flag wins; -1 leaves XLA alone.
  assert compile_cache.set_autotune_level(0) is None
  assert os.environ['XLA_FLAGS'].count('autotune') == 1
  monkeypatch.setenv('XLA_FLAGS', '')
  assert compile_cache.set_autotune_level(-1) is None and os.environ['XLA_FLAGS'] == ''
  monkeypatch.setattr(compile_cache, '_backend_started', lambda: True)
  assert 'already started' in compile_cache.set_autotune_level(1)
  assert os.environ['XLA_FLAGS'] == ''
  c = config_lib.base_config()
  c.compile.gpu_autotune_level = 7
  with pytest.raises(config_lib.ConfigError, match='compile.gpu_autotune_level'):
    config_lib.validate(c)


# ---------------------------------------------------------------------------
# Gradient accumulation


class TinyNet(nn.Module):
  """Two convs, no BatchNorm, no dropout: the full-batch gradient is exact."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    return nn.Conv(self.num_classes, (1, 1))(x)


class TinyBNNet(nn.Module):
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return nn.Conv(self.num_classes, (1, 1))(x)


def _accum_config(k: int, batch: int = 8):
  c = config_lib.base_config()
  c.data.num_classes = 3
  c.data.crop_size = (8, 8)
  c.batch_size = batch
  c.grad_accum_steps = k
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 0.5
  c.optimizer.momentum = 0.0
  c.optimizer.weight_decay = 0.0
  c.schedule.name = 'constant'
  return config_lib.validate(c)


def _batch(batch: int = 8, seed: int = 0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (batch, 8, 8, 3), dtype=np.uint8),
          'label': rng.integers(0, 3, (batch, 8, 8)).astype(np.int32)}


def _one_step(config, model, batch):
  tx, schedule = optim.make_optimizer(config)
  mesh = sharding.make_mesh()
  state = train.init_state(config, model, tx, mesh)
  params0 = jax.device_get(state.params)
  step = jax.jit(train.make_train_step(config, model, tx, schedule))
  new_state, metrics = step(state, batch, jax.random.key(0))
  return params0, jax.device_get(new_state), jax.device_get(metrics)


@pytest.mark.parametrize('k', [1, 4])
def test_accumulated_micro_batches_equal_one_large_step(k):
  config = _accum_config(k)
  model = TinyNet()
  batch = _batch()
  params0, state, metrics = _one_step(config, model, batch)
  # Independent: jax.grad of the mean cross-entropy over the whole batch.
  x = (batch['image'].astype(np.float32) - np.float32(config.data.mean)) / np.float32(
      config.data.std)

  def full_loss(p):
    logits = model.apply({'params': p}, jnp.asarray(x), train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()

  loss, grads = jax.value_and_grad(full_loss)(params0)
  expected = jax.tree.map(lambda p, g: p - 0.5 * g, params0, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               state.params, expected)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  logits = model.apply({'params': params0}, jnp.asarray(x), train=True)
  acc = np.mean(np.argmax(np.asarray(logits), -1) == batch['label'])
  np.testing.assert_allclose(metrics['pixel_acc'], acc, rtol=1e-6)


def test_accumulation_with_batchnorm_runs_micro_batches_in_order():
  """BatchNorm under accumulation: each micro-batch's own statistics, running
  statistics updated once per micro-batch (checked against a NumPy loop)."""
  k, b = 2, 8
  config = _accum_config(k, b)
  model = TinyBNNet()
  batch = _batch(b, seed=1)
  params0, state, _ = _one_step(config, model, batch)
  x = (batch['image'].astype(np.float32) - np.float32(config.data.mean)) / np.float32(
      config.data.std)
  conv = nn.Conv(8, (3, 3))
  mean, var = np.zeros(8, np.float32), np.ones(8, np.float32)
  for j in range(k):
    rows = x[j::k]  # Micro-batch j: rows j, j + k, ...
    h = np.asarray(conv.apply({'params': params0['Conv_0']}, jnp.asarray(rows)))
    mean = 0.9 * mean + 0.1 * h.mean((0, 1, 2))
    var = 0.9 * var + 0.1 * h.var((0, 1, 2))
  np.testing.assert_allclose(state.batch_stats['BatchNorm_0']['mean'], mean, rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(state.batch_stats['BatchNorm_0']['var'], var, rtol=1e-4,
                             atol=1e-5)


def test_accumulation_must_divide_the_batch():
  c = config_lib.base_config()
  c.batch_size, c.grad_accum_steps = 8, 3
  with pytest.raises(config_lib.ConfigError, match="'grad_accum_steps' = 3"):
    config_lib.validate(c)


# ---------------------------------------------------------------------------
# Rematerialisation


@pytest.mark.parametrize('policy', ['nothing_saveable', 'dots_saveable'])
def test_rematerialised_block_has_equal_gradients(policy):
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 32))
  plain = resnet.Bottleneck(8, downsample=True)
  remat = layers.remat_block(resnet.Bottleneck, 'blocks', policy)(8, downsample=True)
  variables = plain.init(jax.random.key(0), x, True)

  def loss(module):
    def f(params, x):
      y, new = module.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                            True, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(y)), new
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

  (l0, s0), g0 = loss(plain)(variables['params'], x)
  (l1, s1), g1 = loss(remat)(variables['params'], x)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               (g0, s0), (g1, s1))


def test_resnet_remat_option_wraps_every_block_and_keeps_names():
  x = jnp.zeros((1, 32, 32, 3))
  plain = resnet.ResNet(depth=50, output_stride=16)
  remat = resnet.ResNet(depth=50, output_stride=16, remat='blocks')
  shapes = jax.eval_shape(lambda: plain.init(jax.random.key(0), x, train=False))
  shapes_r = jax.eval_shape(lambda: remat.init(jax.random.key(0), x, train=False))
  assert jax.tree.structure(shapes) == jax.tree.structure(shapes_r)  # Checkpoints still fit.

  def n_remat(module):
    def f(p, stats):
      y, _ = module.apply({'params': p, 'batch_stats': stats}, x, train=True,
                          mutable=['batch_stats'])
      return jnp.sum(y['stride32'])
    jaxpr = jax.make_jaxpr(jax.grad(f))(shapes['params'], shapes['batch_stats'])
    return len(re.findall(r'\b(?:remat2?|checkpoint)\[', str(jaxpr)))

  assert n_remat(plain) == 0
  assert n_remat(remat) >= 16  # One per bottleneck (3 + 4 + 6 + 3).
  with pytest.raises(ValueError, match='remat_policy'):
    resnet.ResNet(remat='blocks', remat_policy='everything')


def test_config_remat_reaches_the_backbone():
  c = config_lib.base_config()
  c.model.backbone = 'resnet50'
  c.model.remat = 'blocks'
  c.model.remat_policy = 'dots_saveable'
  model = train.build_model(config_lib.validate(c))
  assert dict(model.backbone_kwargs) == {'remat': 'blocks', 'remat_policy': 'dots_saveable'}
  c.model.backbone = 'mobilenetv2'
  with pytest.raises(ValueError, match='remat'):
    train.build_model(c)
