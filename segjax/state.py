"""The train state and the model built from a config.

`TrainState` is everything that changes during training (a plain pytree);
`build_model(config)` the flax module; `init_state` / `abstract_state` its
initial value on the mesh and, without computing it, its shapes (what a
checkpoint is restored into); `variables_of` / `ema_variables` the variables
to run the model with. Used by training, evaluation and every tool that loads
a run (through `segjax.run_dir`).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from segjax import models
from segjax import optim
from segjax import sharding as sharding_lib
from segjax import writers
from segjax.models import convert
from segjax.models import input_features


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a plain pytree."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # Steps whose loss or gradients were not finite are not applied; the first
  # such step is recorded so the host loop can stop with a precise error.
  num_nonfinite: jax.Array
  first_nonfinite_step: jax.Array
  # Exponential moving average {'params', 'batch_stats'} when ema.decay > 0,
  # else {}.
  ema: Any = flax.struct.field(default_factory=dict)
  # Multiplies the optimizer's updates (= its learning rate); lowered by
  # reduce_on_plateau, else 1.
  lr_scale: Any = flax.struct.field(default_factory=lambda: jnp.ones((), jnp.float32))


def build_model(config):
  """The flax module of config.model for config.data.num_classes classes."""
  m = config.model
  kwargs = m.kwargs.to_dict()
  if m.get('remat', 'none') != 'none':  # Backbone rematerialisation (layers.remat_block).
    kwargs['backbone_kwargs'] = dict(dict(kwargs.get('backbone_kwargs', ())), remat=m.remat,
                                     remat_policy=m.remat_policy)
  model = models.get_model(
      m.name, num_classes=int(config.data.num_classes), backbone=m.backbone,
      output_stride=int(m.output_stride), width_multiplier=float(m.width_multiplier),
      freeze_encoder=bool(m.freeze_encoder), dtype=m.dtype, **kwargs)
  if config.data.get('input_channels', 'rgb') == 'bgr_lab':
    model = input_features.BgrLabInput(model, tuple(config.data.mean), tuple(config.data.std))
  return model


def split_outputs(outputs) -> tuple[jax.Array, jax.Array | None]:
  """(logits, aux logits or None) from a model's output: an array, or a dict
  {'logits', 'aux'} for models with an auxiliary head."""
  if isinstance(outputs, dict):
    return outputs['logits'], outputs.get('aux')
  return outputs, None


def load_pretrained(config) -> tuple[dict, dict] | None:
  """(variables, meta) from config.model.pretrained, or None."""
  if not config.model.pretrained:
    return None
  return convert.load_pretrained(config.model.pretrained)


def _exclude_patterns(config) -> tuple[str, ...]:
  return tuple(p.strip() for p in str(config.model.pretrained_exclude).split(',') if p.strip())


def variables_of(state: TrainState) -> dict:
  """{'params', 'batch_stats'}: what model.apply takes."""
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _init_fn(config, model, tx, pretrained_meta=None):
  h, w = tuple(config.data.crop_size)

  def init(rng, pretrained=None):
    params_rng, dropout_rng = jax.random.split(rng)
    variables = model.init({'params': params_rng, 'dropout': dropout_rng},
                           jnp.zeros((1, h, w, 3), jnp.float32), train=False)
    if pretrained is not None:
      variables = convert.merge_pretrained(variables, pretrained, pretrained_meta,
                                           _exclude_patterns(config))
    params = variables['params']
    batch_stats = variables.get('batch_stats', {})
    ema = ({'params': params, 'batch_stats': batch_stats}
           if float(config.ema.decay) > 0 else {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), num_nonfinite=jnp.zeros((), jnp.int32),
                      first_nonfinite_step=jnp.full((), -1, jnp.int32), ema=ema,
                      lr_scale=jnp.ones((), jnp.float32))
  return init


def init_state(config, model, tx, mesh) -> TrainState:
  """Initialises the state on device, replicated over the mesh; with
  config.model.pretrained, the converted weights replace the random init."""
  rng = jax.random.fold_in(jax.random.key(int(config.seed)), 0)
  loaded = load_pretrained(config)
  repl = sharding_lib.replicated(mesh)
  if loaded is None:
    return jax.jit(_init_fn(config, model, tx), out_shardings=repl)(rng)
  pretrained, meta = loaded
  init = jax.jit(_init_fn(config, model, tx, meta), out_shardings=repl)
  # Only the leaves the model has travel to the device.
  dropped = convert.dropped_leaves(_variable_shapes(config, model), pretrained, meta)
  if dropped:
    writers.info(f'Pretrained {meta["source"]}/{meta["arch"]}: {len(dropped)} leaves the model '
                 f'does not have are not used: {dropped[:6]}')
  return init(rng, pretrained)


def _variable_shapes(config, model) -> dict:
  h, w = tuple(config.data.crop_size)
  x = jnp.zeros((1, h, w, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init({'params': jax.random.key(0),
                                            'dropout': jax.random.key(1)}, x, train=False))


def abstract_state(config, model, mesh, tx=None) -> TrainState:
  """Shapes, dtypes and shardings of the train state, without computing it."""
  if tx is None:
    tx, _ = optim.make_optimizer(config)
  shapes = jax.eval_shape(_init_fn(config, model, tx), jax.random.key(0))
  repl = sharding_lib.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), shapes)


def ema_variables(state: TrainState) -> dict | None:
  """The EMA variables to evaluate, or None when EMA is off."""
  return dict(state.ema) if state.ema else None
