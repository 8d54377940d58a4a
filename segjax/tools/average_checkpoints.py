r"""Checkpoint averaging: the mean of several checkpoints of one run, as a new workdir.

  segjax average_checkpoints --workdir=runs/x --steps=best:3 --out=runs/x_avg3
  segjax average_checkpoints --workdir=runs/x --steps=latest:2 --out=runs/x_last2
  segjax average_checkpoints --workdir=runs/x --steps=400,600,800 --out=runs/x_avg \
      --recompute_bn=50 --evaluate
  segjax evaluate --workdir=runs/x_avg3

Steps: 'best:K' (the K kept checkpoints ranked first by the run's
checkpoint.best_metric, val mIoU by default, stored with them; ties go to the
earlier step, as Checkpointer.best_step does), 'lowest_loss:K' (the K kept
checkpoints with the lowest val loss: the satellite write-up's ensemble; train
with checkpoint.best_metric='loss' and keep_best=K so that they are kept),
'latest:K' (the K highest kept steps) or a comma-separated list of steps.

`params` are averaged element-wise in float32 (accumulated in the steps' order,
then divided by their number). BatchNorm running statistics:
  * by default their element-wise mean, like the parameters. Cheap and exact
    to compute, and close to the right statistics when the checkpoints are
    close to each other (the late checkpoints of one run);
  * with recompute_bn=N, re-estimated for the averaged weights: every
    BatchNorm layer in training mode gets the cumulative (equal-weight) average
    of its batch means and of its batch variances over the first N training
    batches of the run's stream (with its augmentation and, where the model
    has dropout, dropout on), like torch.optim.swa_utils.update_bn with
    momentum=None. The mean of the checkpoints' statistics is not the
    statistics of the mean of their weights (the SWA paper, Izmailov et al.
    2018, recomputes them for this reason); recomputing costs N forward passes.
    Variances are the biased batch variances flax's BatchNorm itself keeps
    (torch keeps unbiased ones). Layers that run on their running statistics
    during training (freeze_encoder) keep the averaged statistics.

The output directory is a run directory `segjax evaluate` can read: out/config.json
(the run's, copied) and out/checkpoints with one checkpoint at the highest
averaged step. Its optimizer state, step and non-finite counters are those of
that checkpoint; its meta records the source run, the steps and how BatchNorm
statistics were made. With `--evaluate` the averaged model is also evaluated on
data.val_split: the result goes to out/eval/<split>_<step>.json and is stored
with the checkpoint, so eval.checkpoint=best works on the output too.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any, Optional

from absl import flags
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import checkpoint as ckpt_lib
from segjax import cli
from segjax import evaluate as eval_lib
from segjax import run_dir
from segjax import sharding as sharding_lib
from segjax import state as state_lib
from segjax.data import pipeline
from segjax.data import transforms


# --------------------------------------------------------------------------- config


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config, by segjax.run_dir's rule (config.json, else the latest
  checkpoint's meta)."""
  config, _ = run_dir.load_config(workdir)
  return config


# --------------------------------------------------------------------------- steps


def select_steps(ckpt: ckpt_lib.Checkpointer, steps_spec: str) -> list[int]:
  """'best:K' | 'latest:K' | 'S1,S2,...' -> kept steps, ascending; errors name what exists."""
  spec = str(steps_spec).strip()
  kept = ckpt.all_steps()
  if not kept:
    raise FileNotFoundError(f'no checkpoint in {ckpt.directory}')
  kind, colon, count = spec.partition(':')
  if colon:
    if (kind not in ('best', 'latest', 'lowest_loss') or not count.strip().isdigit()
        or int(count) < 1):
      raise ValueError(f"--steps={spec!r}: expected 'best:K', 'lowest_loss:K', 'latest:K' "
                       '(K >= 1) or a comma-separated list of steps')
    k = int(count)
    if kind == 'latest':
      if k > len(kept):
        raise ValueError(f'--steps={spec!r}: only {len(kept)} checkpoints are kept in '
                         f'{ckpt.directory}: steps {kept}')
      return kept[-k:]
    # best: the rank each checkpoint was saved with (its run's
    # checkpoint.best_metric, higher is better; val mIoU for older ones);
    # lowest_loss: the val loss, lowest first, whatever the run ranked by.
    what = 'val loss' if kind == 'lowest_loss' else 'val rank (checkpoint.best_metric)'
    scored = []
    for step in kept:
      metrics = ckpt.read_meta(step).get('metrics') or {}
      if kind == 'lowest_loss':
        value = metrics.get('loss')
        value = None if value is None else -float(value)
      else:
        value = metrics.get(ckpt_lib.RANK_KEY, metrics.get(ckpt_lib.BEST_METRIC))
      if value is not None and not math.isnan(value):
        scored.append((float(value), step))
    if k > len(scored):
      have = ', '.join(f'{s} ({abs(v):.4f})' for v, s in sorted(
          scored, key=lambda t: t[1])) or 'none'
      raise ValueError(f'--steps={spec!r}: only {len(scored)} of the kept checkpoints in '
                       f'{ckpt.directory} have a {what}: {have}; kept steps: {kept} (to '
                       'keep the K lowest-loss checkpoints of a run, train it with '
                       "checkpoint.best_metric='loss' and checkpoint.keep_best=K)")
    scored.sort(key=lambda t: (-t[0], t[1]))
    return sorted(step for _, step in scored[:k])
  try:
    steps = sorted({int(s) for s in spec.split(',') if s.strip()})
  except ValueError:
    raise ValueError(f"--steps={spec!r}: expected 'best:K', 'latest:K' or a comma-separated "
                     'list of steps') from None
  if not steps:
    raise ValueError('--steps is empty')
  missing = [s for s in steps if s not in kept]
  if missing:
    raise FileNotFoundError(f'--steps={spec!r}: steps {missing} are not in {ckpt.directory}; '
                            f'kept steps: {kept}')
  return steps


# --------------------------------------------------------------------------- averaging


def _f32(tree):
  return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def batch_norm_layers(model, variables: dict, image_shape) -> dict[tuple[str, ...], tuple]:
  """{module path: (momentum, updates running stats)} of every BatchNorm call in a
  training-mode forward pass (shapes only; nothing is computed)."""
  layers: dict[tuple[str, ...], tuple] = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.BatchNorm) and context.method_name == '__call__':
      path = tuple(module.path)
      if path in layers:
        raise ValueError(f'BatchNorm {"/".join(path)} is called more than once per forward '
                         'pass; its statistics cannot be recomputed one call at a time')
      use_ra = kwargs.get('use_running_average', args[1] if len(args) > 1 else None)
      if use_ra is None:
        use_ra = module.use_running_average
      layers[path] = (float(module.momentum), not bool(use_ra))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'],
                                            rngs={'dropout': jax.random.key(0)}),
                   variables, jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32))
  return layers


def recompute_batch_stats(config, model, params: Any, batch_stats: Any, num_batches: int, *,
                          mesh=None, rng: Optional[jax.Array] = None) -> Any:
  """BatchNorm running statistics of `params`, re-estimated over training batches.

  Each BatchNorm layer that updates its statistics in training mode gets the
  mean over training batches 0..num_batches-1 of the run's stream
  (pipeline.train_dataset(config)[i]) of its batch mean and (biased) batch
  variance; other layers keep `batch_stats`. Batch i uses dropout key
  jax.random.fold_in(rng, i) (rng defaults to a key derived from config.seed).

  How: with the running statistics set to 0, one training-mode apply returns
  (1 - momentum) * batch statistic for each layer, which is divided by
  (1 - momentum); the momentum of each layer is read from the module.
  """
  if num_batches < 1:
    raise ValueError(f'recompute_bn={num_batches} must be >= 1')
  mesh = mesh or sharding_lib.make_mesh()
  if rng is None:
    rng = jax.random.fold_in(jax.random.key(int(config.seed)), 3)
  h, w = tuple(config.data.crop_size)
  local = int(config.batch_size) // jax.process_count()
  layers = batch_norm_layers(model, {'params': params, 'batch_stats': batch_stats},
                             (local, h, w, 3))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(batch_stats))
  scale = {}
  for key in flat:
    module_path = key[:-1]
    if module_path not in layers:
      raise ValueError(f'batch_stats/{"/".join(key)} belongs to no BatchNorm layer of the '
                       'model; cannot recompute it')
    momentum, updates = layers[module_path]
    if updates:
      scale[key] = 1.0 - momentum
  if not scale:
    raise ValueError('no BatchNorm layer updates running statistics in training mode '
                     '(frozen encoder only?); nothing to recompute')
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  repl = sharding_lib.replicated(mesh)
  data = sharding_lib.batch_sharding(mesh)

  def batch_estimates(params, zeros, batch, key):
    images = transforms.normalize(batch['image'], mean, std)
    _, new = model.apply({'params': params, 'batch_stats': zeros}, images, train=True,
                         mutable=['batch_stats'], rngs={'dropout': key})
    return new['batch_stats']

  estimate = jax.jit(batch_estimates, in_shardings=(repl, repl, data, repl),
                     out_shardings=repl)
  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  dataset = pipeline.train_dataset(config, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  sums = {key: np.zeros(np.shape(v), np.float64) for key, v in flat.items() if key in scale}
  for i in range(num_batches):
    batch = sharding_lib.to_global(dataset[i], mesh)
    new = flax.traverse_util.flatten_dict(flax.core.unfreeze(jax.device_get(
        estimate(params, zeros, batch, jax.random.fold_in(rng, i)))))
    for key in sums:
      sums[key] += np.asarray(new[key], np.float64) / scale[key]
  out = {key: (np.asarray(sums[key] / num_batches, np.asarray(v).dtype) if key in sums else v)
         for key, v in flat.items()}
  out = flax.traverse_util.unflatten_dict(out)
  return jax.device_put(out, repl)


def average(workdir: str, steps_spec: str, out_dir: str, *, recompute_bn: int = 0,
            evaluate: bool = False) -> dict:
  """Averages checkpoints of `workdir` into a new workdir `out_dir`.

  Args:
    workdir: a training run's workdir (config.json and checkpoints/).
    steps_spec: 'best:K', 'latest:K' or 'S1,S2,...'.
    out_dir: the new workdir; must not hold checkpoints yet.
    recompute_bn: 0 averages BatchNorm statistics; N > 0 re-estimates them
      over N training batches (module docstring).
    evaluate: also evaluate the average on data.val_split.

  Returns:
    {'out_dir', 'step' (the saved step), 'steps' (averaged), 'source_metrics'
    ({step: val mIoU or None}), 'batch_stats' ('averaged' | 'recomputed'),
    and 'val' (the evaluation result) with evaluate=True}.
  """
  workdir, out_dir = os.path.abspath(workdir), os.path.abspath(out_dir)
  if workdir == out_dir:
    raise ValueError(f'--out must differ from --workdir ({workdir})')
  if recompute_bn < 0:
    raise ValueError(f'recompute_bn={recompute_bn} must be >= 0')
  if not os.path.isdir(ckpt_lib.checkpoint_dir(workdir)):
    raise FileNotFoundError(f'no checkpoints folder in {workdir}')
  out_ckpt_dir = ckpt_lib.checkpoint_dir(out_dir)
  if os.path.isdir(out_ckpt_dir) and os.listdir(out_ckpt_dir):
    raise FileExistsError(f'{out_ckpt_dir} already holds checkpoints; choose a new --out')
  config = load_config(workdir)
  mesh = sharding_lib.make_mesh()
  model = state_lib.build_model(config)
  abstract = state_lib.abstract_state(config, model, mesh)

  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir),
                               keep=int(config.checkpoint.keep),
                               keep_best=int(config.checkpoint.keep_best), async_save=False)
  try:
    steps = select_steps(ckpt, steps_spec)
    params_sum = stats_sum = last = None
    source_metrics = {}
    for step in steps:  # Running float32 sums: one restored state in memory at a time.
      state, meta = ckpt.restore(step, abstract)
      source_metrics[step] = (meta.get('metrics') or {}).get(ckpt_lib.BEST_METRIC)
      params_sum = _f32(state.params) if params_sum is None else jax.tree.map(
          jnp.add, params_sum, _f32(state.params))
      stats_sum = _f32(state.batch_stats) if stats_sum is None else jax.tree.map(
          jnp.add, stats_sum, _f32(state.batch_stats))
      last = state
  finally:
    ckpt.close()

  n = jnp.float32(len(steps))
  params = jax.tree.map(lambda s, x: (s / n).astype(x.dtype), params_sum, last.params)
  batch_stats = jax.tree.map(lambda s, x: (s / n).astype(x.dtype), stats_sum, last.batch_stats)
  if recompute_bn:
    batch_stats = recompute_batch_stats(config, model, params, batch_stats, int(recompute_bn),
                                        mesh=mesh)
  out_state = last.replace(params=params, batch_stats=batch_stats)
  out_step = steps[-1]
  how = (f'recomputed over {recompute_bn} training batches' if recompute_bn
         else 'averaged')

  os.makedirs(out_dir, exist_ok=True)
  if jax.process_index() == 0:
    src_config = os.path.join(workdir, 'config.json')
    if os.path.isfile(src_config):
      shutil.copyfile(src_config, os.path.join(out_dir, 'config.json'))
    else:
      with open(os.path.join(out_dir, 'config.json'), 'w') as f:
        f.write(config.to_json_best_effort(indent=1))

  result = {'out_dir': out_dir, 'step': out_step, 'steps': steps,
            'source_metrics': source_metrics,
            'batch_stats': 'recomputed' if recompute_bn else 'averaged'}
  scalars = None
  if evaluate:
    split = config.data.val_split
    eval_step = eval_lib.make_eval_step(model, config, mesh)
    val, _ = eval_lib.evaluate_split(eval_step, state_lib.variables_of(out_state), config,
                                     split, mesh)
    eval_lib.write_result(out_dir, split, out_step, val)
    scalars = eval_lib.scalar_metrics(val)
    result['val'] = val

  out_ckpt = ckpt_lib.Checkpointer(out_ckpt_dir, keep=1, keep_best=0, async_save=False)
  try:
    out_ckpt.save(out_step, out_state, metrics=scalars, meta={
        'config': json.loads(config.to_json_best_effort()),
        'averaged_from': {'workdir': workdir, 'steps_spec': str(steps_spec), 'steps': steps,
                          'source_metrics': {str(s): v for s, v in source_metrics.items()}},
        'batch_stats': how,
    })
    out_ckpt.wait()
  finally:
    out_ckpt.close()
  return result


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  flags.DEFINE_string('workdir', None, 'The training run.', required=True, flag_values=fv)
  flags.DEFINE_string('steps', None, "'best:K', 'lowest_loss:K', 'latest:K' or a "
                      'comma-separated list of steps.',
                      required=True, flag_values=fv)
  flags.DEFINE_string('out', None, 'New run directory for the averaged checkpoint.',
                      required=True, flag_values=fv)
  flags.DEFINE_integer('recompute_bn', 0, 'Re-estimate BatchNorm statistics over N training '
                       'batches (0: average them).', flag_values=fv)
  flags.DEFINE_bool('evaluate', False, 'Evaluate the average on data.val_split.',
                    flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  del argv
  res = average(os.path.expanduser(fv.workdir), fv.steps, os.path.expanduser(fv.out),
                recompute_bn=fv.recompute_bn, evaluate=fv.evaluate)
  sources = ', '.join(f'{s}' + (f' (mIoU {m:.4f})' if m is not None else '')
                      for s, m in res['source_metrics'].items())
  print(f'Averaged steps {sources} of {os.path.abspath(fv.workdir)}; BatchNorm statistics '
        f'{res["batch_stats"]}; wrote step {res["step"]} to {res["out_dir"]}')
  if 'val' in res:
    print(f'val mIoU of the average: {res["val"]["mIoU"]:.4f} (aAcc {res["val"]["aAcc"]:.4f})')
  return 0


if __name__ == '__main__':
  cli.run(main, define_flags)
