"""Training: a pure, jitted train step over a device mesh and the loop around it.

`train_and_evaluate(config, workdir)` is the whole run: it resumes from the
latest intact checkpoint in `workdir` if there is one, trains to `total_steps`,
evaluates every `eval_every` steps and at the end, and returns the final
validation metrics. The step function itself writes nothing.

Reproducibility: the same config and seed on the same machine give the same
parameters bit for bit, and a run interrupted at any point (SIGKILL included)
and resumed reaches the same bits as an uninterrupted one. Everything that
decides the next step is in the checkpoint: the train state (with the
learning-rate scale of reduce-on-plateau), the grain iterator's position, and
the early-stopping / plateau bookkeeping; dropout keys derive from (seed, step).
SIGTERM (a preempted Cloud TPU VM) saves a checkpoint of the current step and
raises Preempted, which launch.py turns into a clean exit.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from segjax import checkpoint as ckpt_lib
from segjax import config as config_lib
from segjax import control as control_lib
from segjax import evaluate as eval_lib
from segjax import logging as log_lib
from segjax import losses
from segjax import metrics as metrics_lib
from segjax import optim
from segjax import sharding as sharding_lib
from segjax import state as state_lib
from segjax.data import labels as labels_lib
from segjax.data import pipeline
from segjax.data import transforms


# The state and model factory live in segjax.state; these names stay for callers.
TrainState = state_lib.TrainState
build_model = state_lib.build_model
init_state = state_lib.init_state
abstract_state = state_lib.abstract_state
variables_of = state_lib.variables_of
ema_variables = state_lib.ema_variables
split_outputs = state_lib.split_outputs


class NonFiniteLossError(FloatingPointError):
  pass


class Preempted(Exception):
  """Training stopped on SIGTERM after saving a checkpoint of `step`."""

  def __init__(self, step: int, directory: str):
    super().__init__(f'preempted (SIGTERM): saved a checkpoint of step {step} in {directory}; '
                     'run the same command again to resume')
    self.step = step
    self.directory = directory


def make_train_step(config, model, tx, schedule) -> Callable:
  """Pure step(state, batch, rng) -> (state, metrics). Not jitted here."""
  loss_fn = losses.make_loss(config.loss.name, class_weights=tuple(config.loss.class_weights),
                             dice_weight=float(config.loss.dice_weight),
                             label_smoothing=float(config.loss.label_smoothing))
  num_classes = int(config.data.num_classes)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  aux_weight = float(config.loss.aux_weight)
  ema_decay = float(config.ema.decay)
  scaled = bool(config.reduce_on_plateau.metric)

  def step(state: TrainState, batch: dict, rng: jax.Array):
    dropout_rng = jax.random.fold_in(rng, state.step)
    images = transforms.normalize(batch['image'], mean, std)
    labels = batch['label']

    def compute_loss(params):
      outputs, new_vars = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
          mutable=['batch_stats'], rngs={'dropout': dropout_rng})
      logits, aux = split_outputs(outputs)
      loss = loss_fn(logits, labels)
      if aux is not None:
        loss = loss + aux_weight * loss_fn(aux, labels)
      return loss, (logits, new_vars)

    (loss, (logits, new_vars)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
        state.params)
    grad_norm = optim.global_norm(grads)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    if scaled:
      updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def keep_if_finite(new, old):
      return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    params = keep_if_finite(new_params, state.params)
    batch_stats = keep_if_finite(new_vars.get('batch_stats', {}), state.batch_stats)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        ema=update_ema(state.ema, {'params': params, 'batch_stats': batch_stats}, state.step,
                       ema_decay),
        opt_state=keep_if_finite(new_opt_state, state.opt_state),
        num_nonfinite=state.num_nonfinite + (~finite).astype(jnp.int32),
        first_nonfinite_step=jnp.where(
            (state.first_nonfinite_step < 0) & ~finite, state.step,
            state.first_nonfinite_step),
        lr_scale=state.lr_scale)
    valid = losses.valid_mask(labels, num_classes)
    correct = (jnp.argmax(logits, -1) == labels) & valid
    metrics = {
        'loss': loss,
        'grad_norm': grad_norm,
        'lr': schedule(state.step) * state.lr_scale,
        'pixel_acc': jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1),
        'finite': finite.astype(jnp.float32),
    }
    return new_state, metrics

  return step


def update_ema(ema, new, step: jax.Array, decay: float):
  """ema <- d * ema + (1 - d) * new with d = min(decay, (1 + t) / (10 + t)),
  t the number of updates so far (tf.train.ExponentialMovingAverage's
  num_updates warm-up, so early averages are not dominated by the random
  init). BatchNorm statistics are averaged like the parameters (as timm's
  ModelEmaV2 does with buffers). {} (EMA off) stays {}."""
  if not ema:
    return ema
  t = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
  return jax.tree.map(lambda e, n: d * e + (1.0 - d) * n, ema, new)


def jit_train_step(step_fn: Callable, mesh) -> Callable:
  repl = sharding_lib.replicated(mesh)
  data = sharding_lib.batch_sharding(mesh)
  return jax.jit(step_fn, in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,))


def _nonfinite_error(step0: int, config, last_saved: int | None,
                     directory: str) -> NonFiniteLossError:
  """The error for a non-finite loss at 0-based step `step0`, naming its examples."""
  g = int(config.batch_size)
  kept = (f'the last good checkpoint (step {last_saved}) in {directory} is kept'
          if last_saved is not None else 'no checkpoint was written')
  try:
    names = pipeline.batch_example_names(config, step0)
    shown = ', '.join(names[:8]) + (f', ... ({len(names)} in all)' if len(names) > 8 else '')
    which = f'its examples: {shown}'
  except (OSError, ValueError) as e:  # The message must not hide the real failure.
    which = f'(could not list its examples: {type(e).__name__}: {e})'
  return NonFiniteLossError(
      f'non-finite loss or gradient at step {step0 + 1} (global batch of training examples '
      f'{step0 * g}..{(step0 + 1) * g - 1} of the shuffled stream, seed {config.seed}; '
      f'{which}); the update was not applied and training stopped; {kept}. Lower '
      'optimizer.lr, set optimizer.grad_clip_norm, check those examples, or set '
      'skip_nonfinite=True to skip such steps.')


def _check_finite(state: TrainState, config, last_saved: int | None, directory: str) -> None:
  if bool(config.skip_nonfinite):
    return
  first = int(jax.device_get(state.first_nonfinite_step))
  if first >= 0:
    raise _nonfinite_error(first, config, last_saved, directory)


class _SigtermFlag:
  """Records SIGTERM instead of dying, so the loop can save and exit.

  With several processes, JAX's preemption service (jax.distributed) sees the
  signal and orbax's `reached_preemption` tells every process at the same step.
  """

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False

  def reached(self, ckpt: ckpt_lib.Checkpointer, step: int) -> bool:
    if jax.process_count() > 1:
      return bool(ckpt.manager.reached_preemption(step))
    return self.received


def _restore(config, model, tx, mesh, ckpt, directory):
  """(state, meta, data iterator or None) from the newest intact checkpoint,
  or (None, {}, None). Damaged steps are moved aside; a checkpoint that does
  not fit this config raises CheckpointMismatchError."""
  if not ckpt.all_steps():
    return None, {}, None
  abstract = abstract_state(config, model, mesh, tx)
  found = ckpt.restore_latest(
      abstract, config=json.loads(config.to_json_best_effort()),
      data_iterator_fn=lambda: pipeline.train_iterator(
          config, 0, process_index=jax.process_index(), process_count=jax.process_count()))
  if found is None:
    return None, {}, None
  step, state, meta, iterator = found
  ckpt_lib.log_restore(step, directory)
  if not meta.get('data_restored'):
    if meta.get('data_error') and jax.process_index() == 0:
      print(f'WARNING: the data iterator state of checkpoint {step} does not fit this input '
            f'pipeline ({meta["data_error"]}); continuing from the position of step {step}, '
            'which gives the same batches', flush=True)
    iterator = None  # Built from the step below.
  if jax.process_index() == 0:
    print(f'Resuming from step {step} in {directory}', flush=True)
  return state, meta, iterator


def _set_lr_scale(state: TrainState, scale: float, mesh) -> TrainState:
  value = jax.device_put(np.float32(scale), sharding_lib.replicated(mesh))
  return state.replace(lr_scale=value)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming if possible), evaluates, and returns the final val metrics."""
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding_lib.make_mesh()
  sharding_lib.check_batch_size(int(config.batch_size), mesh)
  spec = labels_lib.spec_from_config(config.data)
  model = build_model(config)
  tx, schedule = optim.make_optimizer(config)
  controller = control_lib.Controller(config)

  ckpt_directory = ckpt_lib.checkpoint_dir(workdir)
  ckpt = ckpt_lib.Checkpointer(ckpt_directory, keep=int(config.checkpoint.keep),
                               keep_best=int(config.checkpoint.keep_best),
                               async_save=bool(config.checkpoint.async_save))
  writer = None
  try:
    state, meta, batches = _restore(config, model, tx, mesh, ckpt, ckpt_directory)
    latest = None if state is None else int(meta['step'])
    if state is None:
      state = init_state(config, model, tx, mesh)
    controller.load_state_dict(meta.get('control'))
    if float(jax.device_get(state.lr_scale)) != controller.lr_scale:
      # reduce_on_plateau turned on or off since the checkpoint: the controller decides.
      state = _set_lr_scale(state, controller.lr_scale, mesh)
    # Written once the checkpoint (if any) is known to fit, so a refused
    # config does not overwrite the run's own.
    if jax.process_index() == 0:
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config.to_json_best_effort(indent=1))
    writer = log_lib.MetricWriter(workdir)
    start_step = int(jax.device_get(state.step))
    last_saved = latest
    if jax.process_index() == 0 and latest is None:
      n_params = sum(x.size for x in jax.tree.leaves(state.params))
      print(f'{config.model.name}/{config.model.backbone}: {n_params:,} parameters; '
            f'{jax.device_count()} device(s) {jax.devices()[0].platform}; '
            f'training {config.total_steps} steps of batch {config.batch_size}', flush=True)

    train_step = jit_train_step(make_train_step(config, model, tx, schedule), mesh)
    eval_step = eval_lib.make_eval_step(model, config, mesh)
    val_split = config.data.val_split
    rng = jax.random.fold_in(jax.random.key(int(config.seed)), 1)
    total = int(config.total_steps)
    result = None
    final_step = start_step

    def run_eval(step: int):
      res, panel = eval_lib.evaluate_split(eval_step, variables_of(state), config, val_split,
                                           mesh, num_panel_images=int(config.eval.num_panel_images))
      ema_vars = ema_variables(state)
      if ema_vars is not None:
        ema_res, _ = eval_lib.evaluate_split(eval_step, ema_vars, config, val_split, mesh)
        writer.write_scalars(step, eval_lib.scalar_metrics(ema_res), prefix='val_ema/')
        eval_lib.write_result(workdir, val_split, step, ema_res, suffix='_ema')
        res['ema'] = eval_lib.scalar_metrics(ema_res)
      writer.write_scalars(step, eval_lib.scalar_metrics(res), prefix='val/')
      if panel is not None:
        mc = int(config.eval.mc_samples) > 1
        writer.write_image(step, 'val_predictions', log_lib.prediction_panel(
            panel['image'], panel['label'], panel['pred'], spec.colorize,
            uncertainty=panel['uncertainty'] if mc else None, num_classes=spec.num_classes))
      eval_lib.write_result(workdir, val_split, step, res)
      return res

    def save(step: int, metrics=None):
      nonlocal last_saved
      ckpt.save(step, state, metrics=metrics, data_iterator=batches, meta={
          'config': json.loads(config.to_json_best_effort()),
          'control': controller.state_dict()})
      last_saved = step

    if controller.stopped and jax.process_index() == 0:
      print(f'Early stopping ended this run at step {controller.early_stopping.stopped_step}; '
            'nothing left to train', flush=True)
    if start_step < total and not controller.stopped:
      if batches is None:
        batches = pipeline.train_iterator(config, start_step, process_index=jax.process_index(),
                                          process_count=jax.process_count())
      progress = log_lib.Progress(total, start_step, int(config.batch_size))
      pending = []  # Device metrics since the last log line.
      prev_finite = None
      t_start = time.perf_counter()
      with _SigtermFlag() as sigterm:
        for step in range(start_step, total):
          batch = sharding_lib.to_global(next(batches), mesh)
          state, metrics = train_step(state, batch, rng)
          pending.append(metrics)
          # Check the previous step's flag while this one runs: stops within one
          # step of a non-finite loss without a host sync on every step.
          if prev_finite is not None and not float(prev_finite):
            _check_finite(state, config, last_saved, ckpt_directory)
          prev_finite = metrics['finite']
          done = final_step = step + 1
          is_last = done == total
          if done % int(config.log_every) == 0 or is_last:
            _check_finite(state, config, last_saved, ckpt_directory)
            host = jax.device_get(pending)
            means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
            skipped = [done - len(host) + i + 1 for i, m in enumerate(host) if not m['finite']]
            pending = []
            if skipped:
              means['num_nonfinite'] = float(jax.device_get(state.num_nonfinite))
              if jax.process_index() == 0:
                progress.newline()
                print(f'WARNING: skip_nonfinite: steps {skipped[:10]} had a non-finite loss or '
                      f'gradient and were not applied ({int(means["num_nonfinite"])} so far)',
                      flush=True)
            progress.update(done, loss=means['loss'], lr=means['lr'])
            if math.isfinite(progress.images_per_sec):
              means['images_per_sec'] = progress.images_per_sec
            writer.write_scalars(done, means, prefix='train/')
          evaluated = done % int(config.eval_every) == 0 or is_last
          stop = False
          if evaluated:
            progress.newline()
            result = run_eval(done)
            if jax.process_index() == 0:
              print(f"step {done}: val mIoU {result['mIoU']:.4f} aAcc {result['aAcc']:.4f} "
                    f"loss {result['loss']:.4f}", flush=True)
            before = controller.lr_scale
            for message in controller.update(done, eval_lib.scalar_metrics(result)):
              if jax.process_index() == 0:
                print(message, flush=True)
            if controller.lr_scale != before:
              state = _set_lr_scale(state, controller.lr_scale, mesh)
            stop = controller.stopped
          preempted = sigterm.reached(ckpt, done)
          if evaluated or stop or preempted or done % int(config.checkpoint_every) == 0:
            _check_finite(state, config, last_saved, ckpt_directory)
            save(done, eval_lib.scalar_metrics(result) if evaluated else None)
          if preempted:
            ckpt.wait()
            progress.newline()
            raise Preempted(done, ckpt_directory)
          if stop:
            break
      writer.write_scalars(final_step, {'train_seconds': time.perf_counter() - t_start},
                           prefix='time/')
    else:
      result = run_eval(start_step)
    ckpt.wait()
  finally:
    ckpt.close()
    if writer is not None:
      writer.close()
  if jax.process_index() == 0:
    print(metrics_lib.format_table(
        result, title=f'{val_split} @ step {final_step}, {result["num_examples"]} images'),
        flush=True)
  return result


def run(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """train_and_evaluate for a command line: True when training ended; False
  when it was preempted (SIGTERM) after saving a checkpoint, which is printed
  and is a clean exit, as a preempted VM's restart script expects."""
  try:
    train_and_evaluate(config, workdir)
  except Preempted as e:
    print(e, flush=True)
    return False
  return True
