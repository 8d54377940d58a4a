"""Evaluation: one dataset-level confusion matrix from jitted, sharded batches.

`evaluate_split` is used for periodic validation during training and by
`--mode=eval`, which restores a checkpoint (latest, best or a step) and
evaluates it on any split under the data root.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from segjax import metrics as metrics_lib
from segjax import sharding as sharding_lib
from segjax.data import labels as labels_lib
from segjax.data import pipeline
from segjax.data import transforms


def make_eval_step(model, config, mesh) -> Callable:
  """jit(variables, batch) -> (confusion matrix, CE sum, valid pixels, predictions)."""
  num_classes = int(config.data.num_classes)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  repl = sharding_lib.replicated(mesh)
  data = sharding_lib.batch_sharding(mesh)

  def step(variables, batch):
    images = transforms.normalize(batch['image'], mean, std)
    logits = model.apply(variables, images, train=False)
    labels = jnp.where(batch['valid'][:, None, None], batch['label'], -1)
    preds = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    cm = metrics_lib.confusion_matrix(labels, preds, num_classes)
    valid = (labels >= 0) & (labels < num_classes)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return cm, jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid), preds

  return jax.jit(step, in_shardings=(repl, data), out_shardings=(repl, repl, repl, data))


def evaluate_split(eval_step: Callable, variables: Any, config, split: str, mesh, *,
                   num_panel_images: int = 0, limit: Optional[int] = None) -> tuple[dict, Optional[dict]]:
  """Runs the whole split. Returns (metrics, panel arrays or None).

  Panels hold image/label/prediction of the split's first `num_panel_images`
  examples (fixed across evaluations, so panels over steps are comparable).
  """
  spec = labels_lib.spec_from_config(config.data)
  sharding_lib.check_batch_size(int(config.eval.batch_size), mesh, 'eval.batch_size')
  batches, num_examples = pipeline.eval_batches(
      config, split, process_index=jax.process_index(), process_count=jax.process_count(),
      limit=limit)
  acc = metrics_lib.ConfusionAccumulator(spec.num_classes)
  loss_sum = 0.0
  pixels = 0
  panel = None
  seen = 0
  for batch in batches:
    global_batch = sharding_lib.to_global(batch, mesh)
    cm, nll, nvalid, preds = eval_step(variables, global_batch)
    acc.add(cm, int(np.prod(batch['label'].shape)) * jax.process_count())
    loss_sum += nll  # Stays on device: no per-batch sync.
    pixels += nvalid
    if seen < num_panel_images and jax.process_index() == 0:
      take = min(num_panel_images - seen, int(np.sum(batch['valid'])))
      local_preds = sharding_lib.local_rows(preds)
      part = {'image': batch['image'][:take], 'label': batch['label'][:take],
              'pred': local_preds[:take]}
      panel = part if panel is None else {k: np.concatenate([panel[k], part[k]]) for k in panel}
      seen += take
  cm = acc.result()
  result = metrics_lib.compute_metrics(cm, spec.names)
  total_pixels = float(jax.device_get(pixels)) if not isinstance(pixels, int) else float(pixels)
  result['loss'] = float(jax.device_get(loss_sum)) / max(total_pixels, 1.0)
  result['num_examples'] = int(num_examples)
  result['confusion_matrix'] = cm.tolist()
  return result, panel


def scalar_metrics(result: dict) -> dict:
  """The scalar summary of a result (for logs and checkpoint ranking)."""
  out = {k: result[k] for k in ('aAcc', 'mAcc', 'mIoU', 'fwIoU', 'mDice', 'loss') if k in result}
  for name, value in result['IoU'].items():
    out[f'IoU/{name}'] = value
  return out


def write_result(workdir: str, split: str, step: int, result: dict) -> str:
  """JSON next to the run: eval_<split>_<step>.json (process 0 only)."""
  path = os.path.join(workdir, f'eval_{_safe(split)}_{int(step):08d}.json')
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w') as f:
      json.dump({'split': split, 'step': int(step), **result}, f, indent=1,
                default=lambda x: None)
  return path


def _safe(split: str) -> str:
  return ''.join(c if c.isalnum() or c in '-_' else '_' for c in split).strip('_')


def run(config, workdir: str) -> dict:
  """--mode=eval: restore a checkpoint from workdir and evaluate config.eval.split."""
  # Imported here: train imports this module.
  from segjax import checkpoint as ckpt_lib
  from segjax import train as train_lib

  mesh = sharding_lib.make_mesh()
  model = train_lib.build_model(config)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir),
                               keep=int(config.checkpoint.keep),
                               keep_best=int(config.checkpoint.keep_best), async_save=False)
  try:
    step = ckpt.resolve(str(config.eval.checkpoint))
    abstract = train_lib.abstract_state(config, model, mesh)
    state, _ = ckpt.restore(step, abstract)
  finally:
    ckpt.close()
  split = config.eval.split or config.data.val_split
  eval_step = make_eval_step(model, config, mesh)
  result, _ = evaluate_split(eval_step, train_lib.variables_of(state), config, split, mesh)
  path = write_result(workdir, split, step, result)
  if jax.process_index() == 0:
    print(metrics_lib.format_table(
        result, title=f'{split} @ step {step} ({config.eval.checkpoint}), '
        f'{result["num_examples"]} images'), flush=True)
    logging.info('Wrote %s', path)
  return {'step': step, 'split': split, **result}
