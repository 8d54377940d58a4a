"""Optimizer and learning-rate schedule from the config's `optimizer`/`schedule`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def make_schedule(schedule_config, lr: float, total_steps: int) -> optax.Schedule:
  """Learning rate per step: linear warmup from 0, then the named decay.

  poly:   lr * (1 - t)^power to lr * end_lr_factor, t the fraction of decay steps done.
  cosine: half cosine from lr to lr * end_lr_factor.
  step:   lr * decay_factor^k after the k-th boundary; boundaries < 1 are
          fractions of total_steps, others absolute steps.
  constant: lr after warmup.
  """
  c = schedule_config
  warmup = int(c.warmup_steps)
  if warmup >= total_steps:
    raise ValueError(f'schedule.warmup_steps={warmup} must be < total_steps={total_steps}')
  end_lr = lr * float(c.end_lr_factor)
  decay_steps = max(total_steps - warmup, 1)
  if c.name == 'constant':
    main = optax.constant_schedule(lr)
  elif c.name == 'poly':
    main = optax.polynomial_schedule(init_value=lr, end_value=end_lr, power=float(c.power),
                                     transition_steps=decay_steps)
  elif c.name == 'cosine':
    main = optax.cosine_decay_schedule(init_value=lr, decay_steps=decay_steps,
                                       alpha=float(c.end_lr_factor))
  elif c.name == 'step':
    if not c.boundaries:
      raise ValueError("schedule.name='step' needs schedule.boundaries, e.g. (0.5, 0.75)")
    bounds = [int(round(b * total_steps)) if b < 1 else int(b) for b in c.boundaries]
    if sorted(bounds) != bounds or any(b <= warmup or b >= total_steps for b in bounds):
      raise ValueError(f'schedule.boundaries {tuple(c.boundaries)} -> steps {bounds} must be '
                       f'increasing and inside ({warmup}, {total_steps})')
    main = optax.piecewise_constant_schedule(
        lr, {b - warmup: float(c.decay_factor) for b in bounds})
  else:
    raise ValueError(f'schedule.name={c.name!r} is not one of constant, poly, cosine, step')
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], boundaries=[warmup])


def decay_mask(params):
  """Weight decay on kernels only: not on biases or BatchNorm scales (ndim <= 1)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def frozen_labels(params, frozen_prefixes: tuple[str, ...]):
  """'frozen' for params under a top-level key in frozen_prefixes, else 'train'."""
  return {k: jax.tree.map(lambda _: 'frozen' if k in frozen_prefixes else 'train', v)
          for k, v in params.items()}


def backbone_labels(params):
  """'backbone' for params under params['backbone'], else 'head'; a ValueError
  naming the top-level keys if the model has no backbone."""
  if 'backbone' not in params:
    raise ValueError("optimizer.backbone_lr_mult / head_lr_mult need params['backbone'] but "
                     f'the model has only {sorted(params)}')
  return {k: jax.tree.map(lambda _: 'backbone' if k == 'backbone' else 'head', v)
          for k, v in params.items()}


def make_optimizer(config, params=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(tx, schedule) for the whole config. Freezes params['backbone'] if asked,
  scales the backbone's and the head's updates by their lr multipliers, and
  decays kernels only unless optimizer.decay_norms_and_biases."""
  o = config.optimizer
  schedule = make_schedule(config.schedule, float(o.lr), int(config.total_steps))
  wd = float(o.weight_decay)
  # Which leaves weight decay reaches: kernels only, or everything (None).
  mask = None if o.get('decay_norms_and_biases', False) else decay_mask
  if o.name == 'adam':
    tx = optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps)
    if wd:  # L2 penalty added to the gradient, as torch.optim.Adam(weight_decay=...).
      tx = optax.chain(optax.add_decayed_weights(wd, mask), tx)
  elif o.name == 'adamw':
    tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=wd, mask=mask)
  elif o.name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(wd, mask) if wd else optax.identity(),
                     optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov))
  elif o.name == 'rmsprop':
    # Keras' RMSprop: zero-initialised accumulator, no bias correction; eps
    # outside the square root as Keras 2 (eps_in_sqrt=False) or inside as Keras 3.
    tx = optax.chain(optax.add_decayed_weights(wd, mask) if wd else optax.identity(),
                     optax.rmsprop(schedule, decay=float(o.rho), eps=float(o.eps),
                                   eps_in_sqrt=bool(o.eps_in_sqrt),
                                   momentum=o.momentum or None))
  else:
    raise ValueError(f'optimizer.name={o.name!r} is not one of adam, adamw, sgd, rmsprop')
  if o.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(float(o.grad_clip_norm)), tx)
  # Per-group learning rates: the updates of each group scaled by its
  # multiplier, on top of the schedule (torch param groups with lr * mult:
  # momentum, Adam moments and decoupled decay all scale with the group lr).
  mults = float(o.get('backbone_lr_mult', 1.0)), float(o.get('head_lr_mult', 1.0))
  if mults != (1.0, 1.0):
    if params is not None:
      backbone_labels(params)  # Fails now, naming the keys, rather than at init.
    tx = optax.chain(tx, optax.multi_transform(
        {'backbone': optax.scale(mults[0]), 'head': optax.scale(mults[1])}, backbone_labels))
  if config.model.freeze_encoder:
    if params is not None and 'backbone' not in params:
      raise ValueError(f"model.freeze_encoder=True but model {config.model.name!r} has no "
                       "'backbone' parameters to freeze")
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()},
                               lambda p: frozen_labels(p, ('backbone',)))
  return tx, schedule


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
