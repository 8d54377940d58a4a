"""Schedules against closed-form values; optimizers against optax/hand updates; freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import optim


def _config(**schedule):
  c = config_lib.base_config()
  c.total_steps = 100
  c.optimizer.lr = 0.1
  c.schedule.update(schedule)
  return c


def test_poly_with_warmup():
  c = _config(name='poly', warmup_steps=10, power=0.9, end_lr_factor=0.0)
  s = optim.make_schedule(c.schedule, 0.1, 100)
  assert float(s(0)) == 0.0
  np.testing.assert_allclose(s(5), 0.05, rtol=1e-6)
  np.testing.assert_allclose(s(10), 0.1, rtol=1e-6)
  np.testing.assert_allclose(s(55), 0.1 * (1 - 45 / 90) ** 0.9, rtol=1e-5)
  np.testing.assert_allclose(s(100), 0.0, atol=1e-9)


def test_cosine_and_step_and_constant():
  s = optim.make_schedule(_config(name='cosine', end_lr_factor=0.1).schedule, 0.1, 100)
  np.testing.assert_allclose(s(50), 0.1 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5))), rtol=1e-5)
  np.testing.assert_allclose(s(100), 0.01, rtol=1e-5)
  s = optim.make_schedule(_config(name='step', boundaries=(0.5, 80), decay_factor=0.1).schedule,
                          0.1, 100)
  np.testing.assert_allclose([s(49), s(50), s(79), s(80)], [0.1, 0.01, 0.01, 0.001], rtol=1e-5)
  s = optim.make_schedule(_config(name='constant', warmup_steps=4).schedule, 0.1, 100)
  np.testing.assert_allclose([s(2), s(4), s(99)], [0.05, 0.1, 0.1], rtol=1e-6)


def test_schedule_errors_name_the_key():
  with pytest.raises(ValueError, match='warmup_steps'):
    optim.make_schedule(_config(warmup_steps=100).schedule, 0.1, 100)
  with pytest.raises(ValueError, match='boundaries'):
    optim.make_schedule(_config(name='step').schedule, 0.1, 100)


def test_sgd_momentum_and_weight_decay_by_hand():
  c = _config(name='constant')
  c.optimizer.update(name='sgd', lr=0.1, momentum=0.9, weight_decay=0.01)
  tx, _ = optim.make_optimizer(c)
  params = {'w': jnp.array([[1.0, -2.0]]), 'b': jnp.array([0.5])}
  grads = {'w': jnp.array([[0.1, 0.2]]), 'b': jnp.array([1.0])}
  state = tx.init(params)
  u1, state = tx.update(grads, state, params)
  # Kernel: g + wd * w; bias (ndim 1): no decay. First momentum step = g.
  np.testing.assert_allclose(u1['w'], -0.1 * np.array([[0.1 + 0.01, 0.2 - 0.02]]), rtol=1e-6)
  np.testing.assert_allclose(u1['b'], [-0.1], rtol=1e-6)
  u2, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(u2['b'], [-0.1 * (0.9 * 1.0 + 1.0)], rtol=1e-6)


@pytest.mark.parametrize('name', ['adam', 'adamw', 'rmsprop', 'sgd'])
def test_freeze_encoder_leaves_backbone_untouched(name):
  c = _config(name='constant')
  c.optimizer.name = name
  c.model.freeze_encoder = True
  params = {'backbone': {'k': jnp.ones((2, 2))}, 'head': {'k': jnp.ones((2, 2))}}
  tx, _ = optim.make_optimizer(c, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert np.all(np.asarray(updates['backbone']['k']) == 0)
  assert np.all(np.asarray(updates['head']['k']) != 0)


def test_freeze_without_backbone_is_an_error():
  c = _config()
  c.model.freeze_encoder = True
  with pytest.raises(ValueError, match='backbone'):
    optim.make_optimizer(c, {'head': {'k': jnp.ones(2)}})


def test_grad_clipping():
  c = _config(name='constant')
  c.optimizer.update(name='sgd', lr=1.0, momentum=0.0, weight_decay=0.0, grad_clip_norm=1.0)
  tx, _ = optim.make_optimizer(c)
  params = {'w': jnp.zeros((2, 1))}
  u, _ = tx.update({'w': jnp.array([[3.0], [4.0]])}, tx.init(params), params)
  np.testing.assert_allclose(u['w'], [[-0.6], [-0.8]], rtol=1e-6)


@pytest.mark.parametrize('decay_all', [False, True])
@pytest.mark.parametrize('name', ['sgd', 'adam', 'adamw', 'rmsprop'])
def test_first_step_by_hand_decays_kernels_only(name, decay_all):
  """One step of each optimizer from hand formulas (torch semantics): weight
  decay reaches the kernel (ndim 2) but not the bias nor the BatchNorm scale;
  with optimizer.decay_norms_and_biases (mmsegmentation's SGD) every leaf."""
  c = _config(name='constant')
  lr, wd, b1, b2, eps, mom = 0.1, 0.05, 0.9, 0.99, 1e-8, 0.9
  c.optimizer.update(name=name, lr=lr, weight_decay=wd, b1=b1, b2=b2, eps=eps, momentum=mom,
                     decay_norms_and_biases=decay_all)
  tx, _ = optim.make_optimizer(c)
  p = {'conv': {'kernel': np.array([[1.0, -2.0], [0.5, 3.0]], np.float32),
                'bias': np.array([0.5, -1.5], np.float32)},
       'bn': {'scale': np.array([2.0, 4.0], np.float32)}}
  g = {'conv': {'kernel': np.array([[0.1, 0.2], [-0.3, 0.0]], np.float32),
                'bias': np.array([1.0, -0.5], np.float32)},
       'bn': {'scale': np.array([0.25, 0.0], np.float32)}}
  params, grads = jax.tree.map(jnp.asarray, p), jax.tree.map(jnp.asarray, g)
  updates, _ = tx.update(grads, tx.init(params), params)
  p64 = jax.tree.map(lambda x: x.astype(np.float64), p)
  g64 = jax.tree.map(lambda x: x.astype(np.float64), g)
  decayed = {'conv': {'kernel': True, 'bias': decay_all}, 'bn': {'scale': decay_all}}

  def want(path):
    pp, gg, d = p64, g64, decayed
    for k in path:
      pp, gg, d = pp[k], gg[k], d[k]
    l2 = gg + wd * pp if d else gg  # torch: weight_decay adds wd * p to the gradient.
    if name == 'sgd':  # First momentum step: the (decayed) gradient itself.
      return -lr * l2
    if name == 'adam':  # Bias-corrected first step: m_hat = g, v_hat = g^2.
      return -lr * l2 / (np.abs(l2) + eps)
    if name == 'adamw':  # Decoupled: lr * wd * p on top of the Adam step.
      return -lr * (gg / (np.abs(gg) + eps) + (wd * pp if d else 0.0))
    # rmsprop in Keras 2's form (segjax's default): nu = (1 - rho) g^2 from 0,
    # update g / (sqrt(nu) + eps), rho = optimizer.rho (0.9).
    rho = float(c.optimizer.rho)
    return -lr * l2 / (np.sqrt((1 - rho) * l2 ** 2) + eps)

  for path in (('conv', 'kernel'), ('conv', 'bias'), ('bn', 'scale')):
    got = updates[path[0]][path[1]]
    np.testing.assert_allclose(got, want(path), rtol=2e-6, atol=1e-7, err_msg=str(path))


@pytest.mark.parametrize('power,end_factor', [(0.9, 0.0), (2.0, 0.1), (0.5, 0.25)])
def test_poly_power_and_end_lr_from_the_config(power, end_factor):
  """schedule.power and end_lr_factor reach the optimizer: the SGD step at step
  t is -lr_t g with lr_t = (lr - end) (1 - t / T)^power + end (mmseg's PolyLR)."""
  c = _config(name='poly', power=power, end_lr_factor=end_factor)
  c.optimizer.update(name='sgd', lr=0.1, momentum=0.0, weight_decay=0.0)
  tx, schedule = optim.make_optimizer(c)
  params, g = {'w': jnp.zeros((1, 1))}, {'w': jnp.ones((1, 1))}
  state = tx.init(params)
  end = 0.1 * end_factor
  got = {}
  for t in range(100):
    u, state = tx.update(g, state, params)
    got[t] = -float(u['w'][0, 0])
  for t in (0, 1, 37, 50, 99):
    want = (0.1 - end) * (1 - t / 100) ** power + end
    np.testing.assert_allclose(got[t], want, rtol=1e-5, err_msg=f'step {t}')
    np.testing.assert_allclose(schedule(t), want, rtol=1e-5)
  np.testing.assert_allclose(schedule(100), end, rtol=1e-5, atol=1e-9)


def _two_group_params():
  return ({'backbone': {'conv': {'kernel': jnp.array([[1.0, -2.0]]), 'bias': jnp.array([0.5])}},
           'head': {'kernel': jnp.array([[3.0], [-1.0]]), 'bias': jnp.array([0.25])}},
          {'backbone': {'conv': {'kernel': jnp.array([[0.1, 0.2]]), 'bias': jnp.array([1.0])}},
           'head': {'kernel': jnp.array([[-0.5], [0.3]]), 'bias': jnp.array([2.0])}})


def test_backbone_and_head_lr_mults_by_hand():
  """SGD with momentum 0.9 and weight decay 0.01 (kernels) on a poly schedule,
  three steps: the backbone moves by lr_t * backbone_mult * buf_t, the head by
  lr_t * head_mult * buf_t, buf_t = 0.9 buf_(t-1) + g + wd * p (torch's SGD
  with one param group per lr)."""
  c = _config(name='poly', power=2.0, end_lr_factor=0.0)
  c.optimizer.update(name='sgd', lr=0.1, momentum=0.9, weight_decay=0.01,
                     backbone_lr_mult=0.1, head_lr_mult=2.0)
  params, grads = _two_group_params()
  tx, _ = optim.make_optimizer(c, params)
  state = tx.init(params)
  mult = {'backbone': 0.1, 'head': 2.0}
  buf = jax.tree.map(lambda p: np.zeros(p.shape), params)
  for t in range(3):
    updates, state = tx.update(grads, state, params)  # Params held fixed: wd * p constant.
    lr_t = 0.1 * (1 - t / 100) ** 2
    for group, path in (('backbone', ('conv', 'kernel')), ('backbone', ('conv', 'bias')),
                        ('head', ('kernel',)), ('head', ('bias',))):
      p, g, b, u = params[group], grads[group], buf[group], updates[group]
      for k in path[:-1]:
        p, g, b, u = p[k], g[k], b[k], u[k]
      leaf = path[-1]
      wd = 0.01 * np.asarray(p[leaf]) if leaf == 'kernel' else 0.0
      b[leaf] = 0.9 * b[leaf] + np.asarray(g[leaf]) + wd
      np.testing.assert_allclose(u[leaf], -lr_t * mult[group] * b[leaf], rtol=1e-5,
                                 err_msg=f'step {t} {group} {path}')


def test_lr_mults_compose_with_freeze_encoder_and_need_a_backbone():
  c = _config(name='constant')
  c.optimizer.update(name='adam', lr=0.1, weight_decay=0.0, backbone_lr_mult=0.1,
                     head_lr_mult=0.5)
  c.model.freeze_encoder = True
  params, grads = _two_group_params()
  tx, _ = optim.make_optimizer(c, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates['backbone']))
  # Adam's first step is lr * sign(g) (|g| >> eps), times the head's multiplier.
  np.testing.assert_allclose(updates['head']['kernel'], [[0.05], [-0.05]], rtol=1e-5)
  c.model.freeze_encoder = False
  with pytest.raises(ValueError, match="params\\['backbone'\\].*only \\['head'\\]"):
    optim.make_optimizer(c, {'head': params['head']})
