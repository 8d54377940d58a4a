"""The train step against an independent oracle written here.

The other training tests compare the code with itself (resume vs. not, 1 vs. 8
devices), which a step that is wrong the same way every time passes. Here a
tiny DeepLabV3 (MobileNetV2 x0.35 encoder, BatchNorm everywhere, dropout in
ASPP and the aux head, an auxiliary FCN head) takes plain SGD steps through
train.make_train_step, and each step is recomputed from scratch:

  params'      = params - lr * lr_scale * grad(CE(logits) + aux_weight * CE(aux))
  batch_stats' = the `mutable` output of model.apply(train=True)
  dropout key  = fold_in(rng, step)  (train.py: "dropout keys derive from (seed, step)")

with the cross entropy, the normalisation and the SGD update written out in
this file (jax.grad over model.apply is the only shared piece). Tolerances:
the two programs are compiled separately, so XLA may round differently; the
measured difference is ~1 ulp of the parameter values (<= 1.2e-7), against
updates of 1e-3..1e-1, so atol=1e-6 on the updates. Every bug this guards
against (aux loss dropped, BN statistics not kept, dropout mask repeated,
plateau scale ignored, encoder not frozen) moves some leaf by >= 1e-4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import losses
from segjax import optim
from segjax import sharding
from segjax import train
from segjax.data.synthetic import SyntheticShapes

NUM_CLASSES = 4
LR = 0.05
AUX_WEIGHT = 0.4
SEED = 3
ATOL = 1e-6


def oracle_config(**overrides):
  c = config_lib.base_config()
  c.model.name = 'deeplabv3'
  c.model.backbone = 'mobilenetv2'
  c.model.width_multiplier = 0.35
  c.model.output_stride = 8  # 4x4 deepest features at 32x32 (OS 16 would leave 2x2).
  c.model.kwargs.multi_grid = None
  c.model.kwargs.aux_head = True
  c.model.kwargs.aspp_channels = 8
  c.model.kwargs.aux_channels = 8
  c.data.num_classes = NUM_CLASSES
  c.data.crop_size = (32, 32)
  c.batch_size = 4
  c.total_steps = 100
  c.optimizer.name = 'sgd'
  c.optimizer.lr = LR
  c.optimizer.momentum = 0.0
  c.optimizer.weight_decay = 0.0
  c.schedule.name = 'constant'
  c.loss.aux_weight = AUX_WEIGHT
  # Makes the step multiply its updates by state.lr_scale (as in a real run
  # with reduce-on-plateau on).
  c.reduce_on_plateau.metric = 'mIoU'
  for k, v in overrides.items():
    section, _, leaf = k.rpartition('.')
    (c[section] if section else c)[leaf] = v
  return config_lib.validate(c)


def fixed_batch():
  """4 synthetic-shape images; a 5x5 corner of each label and one row ignored."""
  src = SyntheticShapes(4, size=(32, 32), num_classes=NUM_CLASSES, seed=11)
  image = np.stack([src[i]['image'] for i in range(4)])
  label = np.stack([src[i]['label'] for i in range(4)]).astype(np.int32)
  label[:, :5, :5] = 255
  label[1, 20] = 255
  assert set(np.unique(label)) == {0, 1, 2, 3, 255}
  return {'image': image, 'label': label}


def oracle_ce(logits, labels):
  """Mean softmax cross entropy over pixels with a label in [0, C)."""
  valid = (labels >= 0) & (labels < NUM_CLASSES)
  logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
  picked = jnp.sum(logp * jax.nn.one_hot(jnp.where(valid, labels, 0), NUM_CLASSES), -1)
  return -jnp.sum(jnp.where(valid, picked, 0.0)) / jnp.sum(valid)


def make_oracle(model, config, loss_fn=oracle_ce):
  mean = np.asarray(config.data.mean, np.float32).reshape(1, 1, 1, 3)
  std = np.asarray(config.data.std, np.float32).reshape(1, 1, 1, 3)

  @jax.jit
  def oracle(params, batch_stats, batch, dropout_key, lr):
    x = (batch['image'].astype(jnp.float32) - mean) / std

    def total_loss(p):
      out, new_vars = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True,
                                  mutable=['batch_stats'], rngs={'dropout': dropout_key})
      loss = loss_fn(out['logits'], batch['label']) + AUX_WEIGHT * loss_fn(
          out['aux'], batch['label'])
      return loss, new_vars['batch_stats']

    grads, new_stats = jax.grad(total_loss, has_aux=True)(params)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), new_stats

  return oracle


class Setup:
  """A config, its model, the production-jitted step on a 1-device mesh and the oracle."""

  def __init__(self, config, init_params=None, init_stats=None):
    self.config = config
    self.model = train.build_model(config)
    self.tx, schedule = optim.make_optimizer(config)
    self.mesh = sharding.make_mesh(jax.devices()[:1])
    if init_params is None:
      state = train.init_state(config, self.model, self.tx, self.mesh)
    else:
      state = train.TrainState(
          step=jnp.zeros((), jnp.int32), params=init_params, batch_stats=init_stats,
          opt_state=self.tx.init(init_params), num_nonfinite=jnp.zeros((), jnp.int32),
          first_nonfinite_step=jnp.full((), -1, jnp.int32), ema={},
          lr_scale=jnp.ones((), jnp.float32))
    self.state0 = jax.device_get(state)
    self.step = train.jit_train_step(train.make_train_step(config, self.model, self.tx, schedule),
                                     self.mesh)
    self.oracle = make_oracle(self.model, config)
    self.rng = jax.random.fold_in(jax.random.key(SEED), 1)  # As train_and_evaluate.

  def run(self, batch, steps, lr_scale=1.0):
    """Host copies of the states after 1..steps train steps (donation-safe)."""
    state = jax.device_put(self.state0.replace(lr_scale=np.float32(lr_scale)))
    out = []
    for _ in range(steps):
      state, metrics = self.step(state, batch, self.rng)
      assert float(metrics['finite']) == 1.0
      out.append(jax.device_get(state))
    return out


def leaves(tree):
  return jax.tree_util.tree_leaves_with_path(tree)


def assert_updates_close(got, want, before):
  """got/want: parameter trees after a step from `before`; compares the updates
  to ATOL plus 1e-5 of the leaf's largest update (the frozen-encoder head sees
  updates of ~50: BatchNorm on init statistics in the frozen encoder)."""
  for (path, g), w, b in zip(leaves(got), jax.tree.leaves(want), jax.tree.leaves(before)):
    want_update = np.asarray(w) - b
    atol = ATOL + 1e-5 * float(np.max(np.abs(want_update)))
    np.testing.assert_allclose(np.asarray(g) - b, want_update, rtol=0, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def assert_tree_close(got, want, rtol=1e-6, atol=1e-7):
  for (path, g), w in zip(leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def trees_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope='module')
def batch():
  return fixed_batch()


@pytest.fixture(scope='module')
def setup():
  return Setup(oracle_config())


@pytest.fixture(scope='module')
def two_steps(setup, batch):
  return setup.run(batch, 2)


def test_two_sgd_steps_match_the_oracle(setup, batch, two_steps):
  s0 = setup.state0
  key0 = jax.random.fold_in(setup.rng, 0)
  key1 = jax.random.fold_in(setup.rng, 1)
  got1, got2 = two_steps
  p1, bs1 = jax.device_get(setup.oracle(s0.params, s0.batch_stats, batch, key0, LR))
  # Step 2 from the step's own state after step 1: ulp-level differences in
  # step 1 flip a few ReLU6 kinks and would grow to ~5% in some leaves.
  p2, bs2 = jax.device_get(setup.oracle(got1.params, got1.batch_stats, batch, key1, LR))
  assert int(got1.step) == 1 and int(got2.step) == 2
  assert_updates_close(got1.params, p1, s0.params)
  assert_updates_close(got2.params, p2, got1.params)
  # BatchNorm running statistics: exactly what model.apply(train=True) returned.
  assert_tree_close(got1.batch_stats, bs1)
  assert_tree_close(got2.batch_stats, bs2)
  assert not trees_equal(got1.batch_stats, s0.batch_stats)
  # The aux head is trained (its loss is in the objective).
  aux0 = s0.params['aux_head']
  assert all(np.max(np.abs(a - b)) > 1e-4
             for a, b in zip(jax.tree.leaves(got1.params['aux_head']), jax.tree.leaves(aux0))
             if a.ndim > 1)


def test_dropout_masks_differ_between_steps_and_follow_the_step(setup, batch, two_steps):
  """Step 1 uses fold_in(rng, 1): the oracle with step 0's key does not match it."""
  got1, got2 = two_steps
  s0 = setup.state0
  key0 = jax.random.fold_in(setup.rng, 0)
  key1 = jax.random.fold_in(setup.rng, 1)
  same_mask, _ = jax.device_get(setup.oracle(got1.params, got1.batch_stats, batch, key0, LR))
  diffs = [np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(got2.params),
                                                  jax.tree.leaves(same_mask))]
  assert max(diffs) > 100 * ATOL
  # From the same state, the two keys give different updates (different masks).
  a, _ = jax.device_get(setup.oracle(s0.params, s0.batch_stats, batch, key0, LR))
  b, _ = jax.device_get(setup.oracle(s0.params, s0.batch_stats, batch, key1, LR))
  assert max(np.max(np.abs(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))) > (
      100 * ATOL)


def test_updates_scale_exactly_with_lr_scale(setup, batch, two_steps):
  """reduce-on-plateau's state.lr_scale multiplies the update (and equals the
  oracle with lr * scale)."""
  s0 = setup.state0
  (scaled,) = setup.run(batch, 1, lr_scale=0.25)
  full = two_steps[0]
  for (path, a), b, p in zip(leaves(scaled.params), jax.tree.leaves(full.params),
                             jax.tree.leaves(s0.params)):
    # 0.25 * u is exact; each side rounds once when added to p.
    np.testing.assert_allclose(a - p, 0.25 * (b - p), rtol=0, atol=2.5e-7,
                               err_msg=jax.tree_util.keystr(path))
  key0 = jax.random.fold_in(setup.rng, 0)
  p1, _ = jax.device_get(setup.oracle(s0.params, s0.batch_stats, batch, key0, 0.25 * LR))
  assert_updates_close(scaled.params, p1, s0.params)


def test_frozen_encoder_keeps_encoder_bits_and_head_matches_oracle(setup, batch):
  s0 = setup.state0
  # A frozen encoder on its init statistics (mean 0, var 1) feeds the head
  # activations in the hundreds and gradients ~1e3, where float32 rounding
  # alone changes a step by percents. Calibrate its statistics as a pretrained
  # encoder's would be: BatchNorm momentum 0 makes the running statistics
  # those of this batch.
  x = (batch['image'].astype(np.float32) - np.asarray(setup.config.data.mean, np.float32)) / (
      np.asarray(setup.config.data.std, np.float32))
  _, calibrated = jax.jit(lambda v: setup.model.clone(bn_momentum=0.0).apply(
      v, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)}))(
          train.variables_of(s0))
  stats = dict(s0.batch_stats, backbone=jax.device_get(calibrated['batch_stats']['backbone']))
  s0 = s0.replace(batch_stats=stats)
  frozen = Setup(oracle_config(**{'model.freeze_encoder': True,
                                  'model.allow_random_frozen_encoder': True}), s0.params, stats)
  got1, got2 = frozen.run(batch, 2)
  for got in (got1, got2):
    assert trees_equal(got.params['backbone'], s0.params['backbone'])
    assert trees_equal(got.batch_stats['backbone'], s0.batch_stats['backbone'])
  key0 = jax.random.fold_in(frozen.rng, 0)
  key1 = jax.random.fold_in(frozen.rng, 1)
  p1, bs1 = jax.device_get(frozen.oracle(s0.params, s0.batch_stats, batch, key0, LR))
  p2, bs2 = jax.device_get(frozen.oracle(got1.params, got1.batch_stats, batch, key1, LR))
  assert_updates_close(got1.params, p1, s0.params)
  assert_updates_close(got2.params, p2, got1.params)
  assert_tree_close(got2.batch_stats, bs2, rtol=1e-5)
  assert not trees_equal(got1.params['aspp'], s0.params['aspp'])



def test_lr_multipliers_and_loss_terms_through_the_step(setup, batch):
  """optimizer.backbone_lr_mult / head_lr_mult and loss.terms through the real
  step (one compiled program for both, to keep the suite short). The oracle's
  loss is its own CE plus half the Lovasz-softmax (tested by hand in
  test_losses.py) on the main head and, times aux_weight, on the auxiliary
  head; its SGD step moves the backbone at 0.1 lr and the rest at 2 lr."""
  s0 = setup.state0
  both = Setup(oracle_config(**{'optimizer.backbone_lr_mult': 0.1,
                                'optimizer.head_lr_mult': 2.0,
                                'loss.terms': 'ce:1.0,lovasz:0.5'}), s0.params, s0.batch_stats)
  (got,) = both.run(batch, 1)
  oracle = make_oracle(both.model, both.config,
                       lambda l, y: oracle_ce(l, y) + 0.5 * losses.lovasz_softmax(l, y))
  key0 = jax.random.fold_in(both.rng, 0)
  slow, _ = jax.device_get(oracle(s0.params, s0.batch_stats, batch, key0, 0.1 * LR))
  fast, _ = jax.device_get(oracle(s0.params, s0.batch_stats, batch, key0, 2.0 * LR))
  for name in s0.params:
    assert_updates_close(got.params[name], (slow if name == 'backbone' else fast)[name],
                         s0.params[name])
