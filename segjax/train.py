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

from clu import metrics as clu_metrics
from clu import parameter_overview
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from segjax import checkpoint as ckpt_lib
from segjax import compile_cache
from segjax import config as config_lib
from segjax import control as control_lib
from segjax import evaluate as eval_lib
from segjax import losses
from segjax import metrics as metrics_lib
from segjax import optim
from segjax import preflight
from segjax import sharding as sharding_lib
from segjax import writers
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


# The train scalars of a log interval: means over its steps, and the learning
# rate at its last step (not the interval's mean). Built with create() because
# `from __future__ import annotations` hides the field types from a class body.
TrainMetrics = clu_metrics.Collection.create(
    loss=clu_metrics.Average.from_output('loss'),
    grad_norm=clu_metrics.Average.from_output('grad_norm'),
    pixel_acc=clu_metrics.Average.from_output('pixel_acc'),
    lr=clu_metrics.LastValue.from_output('lr'))


@jax.jit
def _merge_metrics(collection, metrics: dict):
  return collection.merge(TrainMetrics.single_from_model_output(**metrics))


_compute_metrics = jax.jit(lambda collection: collection.compute())


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
  loss_fn = losses.from_config(config.loss)
  num_classes = int(config.data.num_classes)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  aux_weight = float(config.loss.aux_weight)
  ema_decay = float(config.ema.decay)
  scaled = bool(config.reduce_on_plateau.metric)
  accum = int(config.get('grad_accum_steps', 1))
  on_device = config.data.get('augment_on', 'host') == 'device'
  if on_device:
    from segjax.data import device_augment  # pylint: disable=g-import-not-at-top
    aug = device_augment.params_from_config(config)

  def step(state: TrainState, batch: dict, rng: jax.Array):
    dropout_rng = jax.random.fold_in(rng, state.step)
    if on_device:  # The joint augmentation, keyed by (seed, step, row).
      batch = device_augment.augment_batch(batch, device_augment.example_keys(
          int(config.seed), state.step, batch['image'].shape[0]), aug)
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

    if accum == 1:
      (loss, (logits, new_vars)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
          state.params)
    else:
      loss, grads, new_vars, counts = accumulate_gradients(
          model, state, images, labels, dropout_rng, accum, loss_fn, aux_weight, num_classes)
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
    if accum == 1:  # As before accumulation existed (the default program is unchanged).
      valid = losses.valid_mask(labels, num_classes)
      correct = (jnp.argmax(logits, -1) == labels) & valid
      counts = (jnp.sum(correct), jnp.sum(valid))
    metrics = {
        'loss': loss,
        'grad_norm': grad_norm,
        'lr': schedule(state.step) * state.lr_scale,
        'pixel_acc': counts[0] / jnp.maximum(counts[1], 1),
        'finite': finite.astype(jnp.float32),
    }
    return new_state, metrics

  return step


def accumulate_gradients(model, state: TrainState, images, labels, dropout_rng, k: int,
                         loss_fn, aux_weight: float, num_classes: int):
  """(mean loss, mean gradient, {'batch_stats'}, (correct, valid) pixel counts)
  over k micro-batches run one after another (lax.scan): the memory of one
  micro-batch. Micro-batch j is rows j, j + k, j + 2k, ... so that each one
  keeps the batch's data sharding. Each micro-batch's loss is normalised over
  its own pixels, so the mean gradient equals the full batch's when every
  micro-batch has the same number of valid pixels. BatchNorm normalises each
  micro-batch with its own statistics and updates its running statistics once
  per micro-batch, in order."""
  b = images.shape[0]

  def split(x):
    return jnp.swapaxes(x.reshape(b // k, k, *x.shape[1:]), 0, 1)

  def micro(carry, xs):
    batch_stats, grad_sum, loss_sum, correct_sum, valid_sum = carry
    j, x, y = xs

    def compute_loss(params):
      outputs, new_vars = model.apply(
          {'params': params, 'batch_stats': batch_stats}, x, train=True,
          mutable=['batch_stats'], rngs={'dropout': jax.random.fold_in(dropout_rng, j)})
      logits, aux = split_outputs(outputs)
      loss = loss_fn(logits, y)
      if aux is not None:
        loss = loss + aux_weight * loss_fn(aux, y)
      return loss, (logits, new_vars)

    (loss, (logits, new_vars)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
        state.params)
    valid = losses.valid_mask(y, num_classes)
    correct = (jnp.argmax(logits, -1) == y) & valid
    grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
    return (new_vars.get('batch_stats', {}), grad_sum, loss_sum + loss,
            correct_sum + jnp.sum(correct), valid_sum + jnp.sum(valid)), None

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  init = (state.batch_stats, zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32),
          jnp.zeros((), jnp.int32))
  (batch_stats, grad_sum, loss_sum, correct, valid), _ = jax.lax.scan(
      micro, init, (jnp.arange(k), split(images), split(labels)))
  grads = jax.tree.map(lambda g: g / k, grad_sum)
  return loss_sum / k, grads, {'batch_stats': batch_stats}, (correct, valid)


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
  if meta.get('data_restored'):
    problem = pipeline.check_iterator_state(
        config, step, iterator.get_state(), process_index=jax.process_index(),
        process_count=jax.process_count())
    if problem is not None:
      if jax.process_index() == 0:
        print(f'WARNING: the data iterator state of checkpoint {step} is damaged ({problem}); '
              f'rebuilding the iterator from the position of step {step}', flush=True)
      meta['data_restored'] = False
  if not meta.get('data_restored'):
    if meta.get('data_error'):
      writers.info(f'WARNING: the data iterator state of checkpoint {step} does not fit this '
                   f'input pipeline ({meta["data_error"]}); continuing from the position of '
                   f'step {step}, which gives the same batches')
    iterator = None  # Built from the step below.
  writers.info(f'Resuming from step {step} in {directory}')
  return state, meta, iterator


def _set_lr_scale(state: TrainState, scale: float, mesh) -> TrainState:
  value = jax.device_put(np.float32(scale), sharding_lib.replicated(mesh))
  return state.replace(lr_scale=value)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming if possible), evaluates, and returns the final val metrics.

  The console lines also go, timestamped, to <workdir>/train.log.
  """
  config_lib.validate(config)
  compile_cache.setup(config)  # Persistent compilation cache (a no-op when already set).
  os.makedirs(workdir, exist_ok=True)
  with writers.log_to_file(workdir):
    return _train_and_evaluate(config, workdir)


def _sweep_hparams(workdir: str) -> dict | None:
  """The overrides of a sweep point (segjax.sweep writes them to
  sweep_point.json before training it), or None outside a sweep."""
  path = os.path.join(workdir, 'sweep_point.json')
  try:
    with open(path) as f:
      overrides = json.load(f).get('overrides')
  except (OSError, ValueError, AttributeError):
    return None
  return dict(overrides) if isinstance(overrides, dict) else None


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  mesh = sharding_lib.make_mesh()
  sharding_lib.check_batch_size(int(config.batch_size), mesh)
  spec = labels_lib.spec_from_config(config.data)
  model = build_model(config)
  # The val split is opened and checked now, so that no evaluation fails on it later.
  preflight.check_eval_data(config, mesh, model)
  tx, schedule = optim.make_optimizer(config)
  controller = control_lib.Controller(config)

  ckpt_directory = ckpt_lib.checkpoint_dir(workdir)
  ckpt = ckpt_lib.Checkpointer(ckpt_directory, keep=int(config.checkpoint.keep),
                               keep_best=int(config.checkpoint.keep_best),
                               async_save=bool(config.checkpoint.async_save),
                               best_metric=config.checkpoint.best_metric,
                               best_mode=control_lib.resolve_mode(
                                   config.checkpoint.best_metric, config.checkpoint.best_mode,
                                   'checkpoint.best'))
  writer = None
  progress = None
  try:
    ckpt.remove_orphans()
    state, meta, batches = _restore(config, model, tx, mesh, ckpt, ckpt_directory)
    latest = None if state is None else int(meta['step'])
    if state is None:
      state = init_state(config, model, tx, mesh)
    for message in controller.load_state_dict(meta.get('control')):
      writers.info(message)
    # Saved before its evaluation, which then did not finish: evaluate it first.
    eval_first = bool(meta.get('eval_pending')) and latest is not None
    if float(jax.device_get(state.lr_scale)) != controller.lr_scale:
      # reduce_on_plateau turned on or off since the checkpoint: the controller decides.
      state = _set_lr_scale(state, controller.lr_scale, mesh)
    # Written once the checkpoint (if any) is known to fit, so a refused
    # config does not overwrite the run's own.
    config_json = config.to_json_best_effort(indent=1)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config_json)
    writer = writers.MetricWriter(workdir)
    start_step = int(jax.device_get(state.step))
    # TensorBoard's text plugin renders Markdown: indent to keep the JSON verbatim.
    writer.write_text('config', '\n'.join('    ' + l for l in config_json.splitlines()),
                      start_step)
    last_saved = latest
    if latest is None:
      n_params = sum(x.size for x in jax.tree.leaves(state.params))
      writers.info(f'{config.model.name}/{config.model.backbone}: {n_params:,} parameters; '
                   f'{jax.device_count()} device(s) {jax.devices()[0].platform}; '
                   f'training {config.total_steps} steps of batch {config.batch_size}')
      if jax.process_index() == 0:
        writers.info(parameter_overview.get_parameter_overview(state.params, include_stats=True))

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
      if panel is not None and writer.enabled:
        writer.write_figure(step, 'val_predictions', eval_lib.panel_figure(
            panel, config, title=f'{val_split} @ step {step}'))
      if writer.enabled:
        writer.write_figure(step, 'val_confusion', eval_lib.confusion_figure(
            res, title=f'{val_split} @ step {step}'), png=False)
      eval_lib.write_result(workdir, val_split, step, res)
      return res

    def save(step: int, metrics=None, eval_pending=False):
      nonlocal last_saved
      ckpt.save(step, state, metrics=metrics, data_iterator=batches, meta={
          'config': json.loads(config.to_json_best_effort()),
          'control': controller.state_dict(), 'eval_pending': eval_pending})
      last_saved = step

    def evaluate_saved(step: int):
      """Evaluates the state saved at `step` and records the outcome with that
      checkpoint; (result, stop). An evaluation error keeps the checkpoint."""
      nonlocal state
      try:
        res = run_eval(step)
      except BaseException as e:
        e.add_note(f'The train state of step {step} was saved before this evaluation, in '
                   f'{ckpt_directory}: nothing trained is lost. Fix the cause and run the same '
                   f'command again; it resumes from step {step} and evaluates it first.')
        raise
      writers.info(f"step {step}: val mIoU {res['mIoU']:.4f} aAcc {res['aAcc']:.4f} "
                   f"loss {res['loss']:.4f}")
      before = controller.lr_scale
      for message in controller.update(step, eval_lib.scalar_metrics(res)):
        writers.info(message)
      if controller.lr_scale != before:
        state = _set_lr_scale(state, controller.lr_scale, mesh)
      ckpt.record_eval(step, eval_lib.scalar_metrics(res), controller.state_dict())
      return res, controller.stopped

    if eval_first:
      result, _ = evaluate_saved(start_step)

    if controller.stopped:
      writers.info(f'Early stopping ended this run at step '
                   f'{controller.early_stopping.stopped_step}; nothing left to train')
    if start_step < total and not controller.stopped:
      if batches is None:
        batches = pipeline.train_iterator(config, start_step, process_index=jax.process_index(),
                                          process_count=jax.process_count())
      progress = writers.TrainProgress(total, start_step, int(config.batch_size))
      collection = None  # TrainMetrics since the last log line (on device).
      pending_finite = []  # Per-step finite flags since the last log line.
      prev_finite = None
      t_start = time.perf_counter()
      with _SigtermFlag() as sigterm:
        for step in range(start_step, total):
          batch = sharding_lib.to_global(next(batches), mesh)
          ckpt.check_saved()  # A failed background save stops training here.
          if step == start_step:  # Compiled ahead of time, to log how long it took.
            writers.info(f'compiling the train step (batch {config.batch_size}, '
                         f'{"x".join(str(v) for v in config.data.crop_size)}) ...')
            t_compile = time.time()
            train_step, secs, hits = compile_cache.timed_compile(train_step, state, batch, rng)
            writers.info(compile_cache.compile_message('train step', secs, hits))
          state, metrics = train_step(state, batch, rng)
          collection = _merge_metrics(
              TrainMetrics.empty() if collection is None else collection,
              {k: metrics[k] for k in ('loss', 'grad_norm', 'pixel_acc', 'lr')})
          if step == start_step:
            # The metric programs compile here too, so no interval pays for them.
            jax.block_until_ready((metrics, _compute_metrics(collection)))
            now = time.time()
            writers.info(f'first step done {now - t_compile:.1f} s after compiling began '
                         '(img/s and ETA count from here)')
            progress.start(step + 1, now)
          pending_finite.append(metrics['finite'])
          progress.advance()
          # Check the previous step's flag while this one runs: stops within one
          # step of a non-finite loss without a host sync on every step.
          if prev_finite is not None and not float(prev_finite):
            _check_finite(state, config, last_saved, ckpt_directory)
          prev_finite = metrics['finite']
          done = final_step = step + 1
          is_last = done == total
          if done % int(config.log_every) == 0 or is_last:
            _check_finite(state, config, last_saved, ckpt_directory)
            means = {k: float(v) for k, v in jax.device_get(_compute_metrics(collection)).items()}
            finite = jax.device_get(pending_finite)
            now = time.time()
            skipped = [done - len(finite) + i + 1 for i, f in enumerate(finite) if not f]
            collection, pending_finite = None, []
            means['finite'] = float(np.mean(finite))
            if skipped:
              means['num_nonfinite'] = float(jax.device_get(state.num_nonfinite))
              writers.info(f'WARNING: skip_nonfinite: steps {skipped[:10]} had a non-finite '
                           'loss or gradient and were not applied '
                           f'({int(means["num_nonfinite"])} so far)')
            line, rate = progress.update(done, now, loss=means['loss'], lr=means['lr'])
            writers.info(line)
            if math.isfinite(rate):
              means['images_per_sec'] = rate
            writer.write_scalars(done, means, prefix='train/', wall_time=now)
          evaluated = done % int(config.eval_every) == 0 or is_last
          stop = False
          with progress.pause():  # Evaluation and checkpoints are not training time.
            if evaluated:
              # Saved before the evaluation, so that no evaluation error costs training.
              _check_finite(state, config, last_saved, ckpt_directory)
              save(done, eval_pending=True)
              result, stop = evaluate_saved(done)
            preempted = sigterm.reached(ckpt, done)
            if not evaluated and (preempted or done % int(config.checkpoint_every) == 0):
              _check_finite(state, config, last_saved, ckpt_directory)
              save(done)
            if preempted:
              ckpt.wait()
              # This session's time, so that reports sum every session's.
              writer.write_scalars(done, {'train_seconds': time.perf_counter() - t_start},
                                   prefix='time/')
              raise Preempted(done, ckpt_directory)
          if stop:
            break
      writer.write_scalars(final_step, {'train_seconds': time.perf_counter() - t_start},
                           prefix='time/')
    elif result is None:
      result = run_eval(start_step)
    ckpt.wait()
    hparams = _sweep_hparams(workdir) if writer.enabled else None
    if hparams:
      writer.write_hparams(hparams, {f'hparam/{k}': v for k, v in
                                     eval_lib.scalar_metrics(result).items()
                                     if k in ('mIoU', 'aAcc', 'mAcc', 'loss')})
  finally:
    if progress is not None:
      progress.close()
    ckpt.close()
    if writer is not None:
      writer.close()
  writers.info(metrics_lib.format_table(
      result, title=f'{val_split} @ step {final_step}, {result["num_examples"]} images'))
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
