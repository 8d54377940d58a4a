"""Evaluation: one dataset-level confusion matrix from jitted, sharded batches.

`evaluate_split` is used for periodic validation during training and by
`--mode=eval`, which restores a checkpoint (latest, best or a step) and
evaluates it on any split under the data root.
"""

from __future__ import annotations

import dataclasses
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


def mc_model(model, mc_samples: int):
  """The model to evaluate: with mc_samples > 1, a clone whose dropout stays
  on at inference (Monte Carlo dropout; Bayesian SegNet's `mc_dropout`)."""
  if mc_samples <= 1:
    return model
  fields = {f.name for f in dataclasses.fields(model)}
  if 'mc_dropout' not in fields or not getattr(model, 'dropout_rate', 0.0):
    raise ValueError(f'eval.mc_samples={mc_samples} needs a model with Monte Carlo dropout '
                     f"(e.g. 'bayesian_segnet'); {type(model).__name__} has none")
  return model.clone(mc_dropout=True)


def predict_log_probs(model, variables, images: jax.Array, rng: jax.Array,
                      mc_samples: int = 1) -> jax.Array:
  """Log class probabilities (B, H, W, C) float32: log_softmax of one pass, or
  the log of the mean softmax of `mc_samples` stochastic passes (`model` from
  mc_model)."""

  def logits_of(key):
    outputs = model.apply(variables, images, train=False, rngs={'dropout': key})
    logits = outputs['logits'] if isinstance(outputs, dict) else outputs
    return logits.astype(jnp.float32)

  if mc_samples <= 1:
    return jax.nn.log_softmax(logits_of(rng), axis=-1)

  def add(i, acc):
    return acc + jax.nn.softmax(logits_of(jax.random.fold_in(rng, i)), axis=-1)

  first = jax.nn.softmax(logits_of(jax.random.fold_in(rng, 0)), axis=-1)
  mean = jax.lax.fori_loop(1, mc_samples, add, first) / mc_samples
  return jnp.log(jnp.maximum(mean, jnp.finfo(jnp.float32).tiny))


def predictive_entropy(log_probs: jax.Array) -> jax.Array:
  """-sum_c p log p per pixel (nats); 0 for a one-hot prediction, log C at most."""
  return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def make_eval_step(model, config, mesh) -> Callable:
  """jit(variables, batch, rng) -> (confusion matrix, NLL sum, valid pixels,
  predictions, predictive entropy).

  With config.eval.mc_samples > 1 the softmax is averaged over that many
  dropout samples (keys folded from `rng`); the NLL is of the averaged
  probabilities.
  """
  num_classes = int(config.data.num_classes)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  mc_samples = int(config.eval.mc_samples)
  model = mc_model(model, mc_samples)
  repl = sharding_lib.replicated(mesh)
  data = sharding_lib.batch_sharding(mesh)

  def step(variables, batch, rng):
    images = transforms.normalize(batch['image'], mean, std)
    logp = predict_log_probs(model, variables, images, rng, mc_samples)
    labels = jnp.where(batch['valid'][:, None, None], batch['label'], -1)
    preds = jnp.argmax(logp, axis=-1).astype(jnp.int32)
    cm = metrics_lib.confusion_matrix(labels, preds, num_classes)
    valid = (labels >= 0) & (labels < num_classes)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return (cm, jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid), preds,
            predictive_entropy(logp))

  return jax.jit(step, in_shardings=(repl, data, repl),
                 out_shardings=(repl, repl, repl, data, data))


def evaluate_split(eval_step: Callable, variables: Any, config, split: str, mesh, *,
                   num_panel_images: int = 0,
                   limit: Optional[int] = None) -> tuple[dict, Optional[dict]]:
  """Runs the whole split. Returns (metrics, panel arrays or None).

  Panels hold image/label/prediction/uncertainty (predictive entropy) of the
  split's first `num_panel_images` examples (fixed across evaluations, so
  panels over steps are comparable).
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
  rng = jax.random.fold_in(jax.random.key(int(config.seed)), 2)
  for index, batch in enumerate(batches):
    global_batch = sharding_lib.to_global(batch, mesh)
    cm, nll, nvalid, preds, entropy = eval_step(variables, global_batch,
                                                jax.random.fold_in(rng, index))
    acc.add(cm, int(np.prod(batch['label'].shape)) * jax.process_count())
    loss_sum += nll  # Stays on device: no per-batch sync.
    pixels += nvalid
    if seen < num_panel_images and jax.process_index() == 0:
      take = min(num_panel_images - seen, int(np.sum(batch['valid'])))
      part = {'image': batch['image'][:take], 'label': batch['label'][:take],
              'pred': sharding_lib.local_rows(preds)[:take],
              'uncertainty': sharding_lib.local_rows(entropy)[:take]}
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


def write_prediction_images(workdir: str, split: str, step: int, panel: dict, config) -> str:
  """PNGs of the panel examples in workdir/eval_<split>_<step>/: NNNN_pred.png
  (palette colours) and, with eval.mc_samples > 1, NNNN_uncertainty.png
  (predictive entropy, black = certain, white = log num_classes)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from segjax import logging as log_lib  # pylint: disable=g-import-not-at-top
  spec = labels_lib.spec_from_config(config.data)
  out_dir = os.path.join(workdir, f'eval_{_safe(split)}_{int(step):08d}')
  os.makedirs(out_dir, exist_ok=True)
  mc = int(config.eval.mc_samples) > 1
  for i, pred in enumerate(panel['pred']):
    Image.fromarray(spec.colorize(pred)).save(os.path.join(out_dir, f'{i:04d}_pred.png'))
    if mc:
      Image.fromarray(log_lib.uncertainty_image(panel['uncertainty'][i], spec.num_classes)).save(
          os.path.join(out_dir, f'{i:04d}_uncertainty.png'))
  Image.fromarray(log_lib.prediction_panel(
      panel['image'], panel['label'], panel['pred'], spec.colorize,
      uncertainty=panel['uncertainty'] if mc else None, num_classes=spec.num_classes)).save(
          os.path.join(out_dir, 'panel.png'))
  return out_dir


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
  result, panel = evaluate_split(eval_step, train_lib.variables_of(state), config, split, mesh,
                                 num_panel_images=int(config.eval.num_panel_images))
  path = write_result(workdir, split, step, result)
  if panel is not None and jax.process_index() == 0:
    image_dir = write_prediction_images(workdir, split, step, panel, config)
    logging.info('Wrote predictions to %s', image_dir)
  if jax.process_index() == 0:
    print(metrics_lib.format_table(
        result, title=f'{split} @ step {step} ({config.eval.checkpoint}), '
        f'{result["num_examples"]} images'), flush=True)
    logging.info('Wrote %s', path)
  return {'step': step, 'split': split, **result}
