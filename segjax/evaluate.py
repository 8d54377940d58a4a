"""Evaluation: one dataset-level confusion matrix from jitted, sharded batches.

The library part: inference modes (whole image, sliding window, test-time
augmentation, Monte Carlo dropout), the jitted eval step, `evaluate_split`
and `write_result`. `evaluate_split` is used for periodic validation during
training and by `segjax.tools.evaluate` (`--mode=eval` of launch.py), which
restores a checkpoint of a run and evaluates it on any split.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from PIL import Image

from segjax import crf as crf_lib
from segjax import figures
from segjax import metrics as metrics_lib
from segjax.models import layers
from segjax import sharding as sharding_lib
from segjax import writers
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


@dataclasses.dataclass(frozen=True)
class Inference:
  """How logits are computed from a batch of normalised images (static).

  mode 'whole' runs the model on the image; 'slide' runs it on windows of
  `crop` (h, w) placed every `stride` pixels (the last window flush with the
  border, as mmsegmentation places them), all windows of the batch in one
  call, and averages the logits where windows overlap. `scales` and `flip`
  are test-time augmentation on top: the image is resized by each factor
  (bilinear), optionally also flipped left-right, and the softmax of every
  view, mapped back to the input size, is averaged.
  """
  mode: str = 'whole'
  crop: tuple[int, int] | None = None
  stride: tuple[int, int] | None = None
  scales: tuple[float, ...] = (1.0,)
  flip: bool = False
  crf: crf_lib.DenseCRF | None = None  # Dense CRF on the probabilities (eval.crf).

  @classmethod
  def from_config(cls, config) -> 'Inference':
    e = config.eval
    crop = tuple(int(v) for v in (e.crop_size or config.data.crop_size))
    stride = tuple(int(v) for v in e.stride) or tuple(max(1, (2 * c) // 3) for c in crop)
    return cls(mode=str(e.mode), crop=crop, stride=stride,
               scales=tuple(float(v) for v in e.scales), flip=bool(e.flip),
               crf=crf_lib.DenseCRF.from_config(config))

  @property
  def is_tta(self) -> bool:
    return self.flip or tuple(self.scales) != (1.0,)


def window_starts(size: int, window: int, stride: int) -> list[int]:
  """Start offsets of sliding windows covering [0, size): every `stride`, the
  last one flush with the end (one window if it covers the whole side)."""
  if window >= size:
    return [0]
  n = -(-(size - window) // stride) + 1
  return sorted({min(i * stride, size - window) for i in range(n)})


def _logits(model, variables, images, key) -> jax.Array:
  outputs = model.apply(variables, images, train=False, rngs={'dropout': key})
  logits = outputs['logits'] if isinstance(outputs, dict) else outputs
  return logits.astype(jnp.float32)


def slide_logits(model, variables, images: jax.Array, key, crop: Sequence[int],
                 stride: Sequence[int]) -> jax.Array:
  """Sliding-window logits (B, H, W, C): all windows of the batch in one
  batched call, overlapping logits averaged."""
  b, h, w, _ = images.shape
  ch, cw = min(int(crop[0]), h), min(int(crop[1]), w)
  ys = window_starts(h, ch, int(stride[0]))
  xs = window_starts(w, cw, int(stride[1]))
  if len(ys) == 1 and len(xs) == 1:
    return _logits(model, variables, images, key)
  windows = [(y, x) for y in ys for x in xs]
  crops = jnp.concatenate([images[:, y:y + ch, x:x + cw] for y, x in windows], axis=0)
  out = _logits(model, variables, crops, key)
  num_classes = out.shape[-1]
  total = jnp.zeros((b, h, w, num_classes), jnp.float32)
  count = np.zeros((h, w), np.float32)
  for i, (y, x) in enumerate(windows):
    total = total.at[:, y:y + ch, x:x + cw].add(out[i * b:(i + 1) * b])
    count[y:y + ch, x:x + cw] += 1
  return total / jnp.asarray(count)[None, :, :, None]


def _view_logits(model, variables, images, key, inference: Inference) -> jax.Array:
  if inference.mode == 'slide':
    return slide_logits(model, variables, images, key, inference.crop, inference.stride)
  return _logits(model, variables, images, key)


def predict_log_probs(model, variables, images: jax.Array, rng: jax.Array,
                      mc_samples: int = 1, inference: Inference | None = None) -> jax.Array:
  """Log class probabilities (B, H, W, C) float32 of normalised `images`.

  One plain pass gives log_softmax of the logits. Test-time augmentation
  (`inference.scales`, `inference.flip`) and Monte Carlo dropout
  (`mc_samples` > 1, `model` from mc_model) give the log of the mean softmax
  over all views and samples; sample i uses dropout key fold_in(rng, i).
  With `inference.crf`, those probabilities are refined by the dense CRF.
  """
  inference = inference or Inference()
  if inference.crf is not None:  # Mean-field CRF on top of the probabilities below.
    log_probs = predict_log_probs(model, variables, images, rng, mc_samples,
                                  dataclasses.replace(inference, crf=None))
    return inference.crf.refine(log_probs, images)
  h, w = images.shape[1:3]

  def probs_of_sample(key):
    total, n = 0.0, 0
    for scale in inference.scales:
      size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
      scaled = layers.resize_bilinear(images, size)
      for flip in ((False, True) if inference.flip else (False,)):
        view = scaled[:, :, ::-1] if flip else scaled
        logits = _view_logits(model, variables, view, key, inference)
        if flip:
          logits = logits[:, :, ::-1]
        logits = layers.resize_bilinear(logits, (h, w))
        total = total + jax.nn.softmax(logits, axis=-1)
        n += 1
    return total / n

  if mc_samples <= 1 and not inference.is_tta:
    return jax.nn.log_softmax(_view_logits(model, variables, images, rng, inference), axis=-1)
  if mc_samples <= 1:
    mean = probs_of_sample(rng)
  else:
    first = probs_of_sample(jax.random.fold_in(rng, 0))
    mean = jax.lax.fori_loop(
        1, mc_samples, lambda i, acc: acc + probs_of_sample(jax.random.fold_in(rng, i)),
        first) / mc_samples
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
  inference = Inference.from_config(config)
  repl = sharding_lib.replicated(mesh)
  data = sharding_lib.batch_sharding(mesh)

  def step(variables, batch, rng):
    images = transforms.normalize(batch['image'], mean, std)
    logp = predict_log_probs(model, variables, images, rng, mc_samples, inference)
    labels = jnp.where(batch['valid'][:, None, None], batch['label'], -1)
    preds = jnp.argmax(logp, axis=-1).astype(jnp.int32)
    cm = metrics_lib.confusion_matrix(labels, preds, num_classes)
    valid = (labels >= 0) & (labels < num_classes)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return (cm, jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid), preds,
            predictive_entropy(logp))

  return jax.jit(step, in_shardings=(repl, data, repl),
                 out_shardings=(repl, repl, repl, data, data))


def panel_indices(num_examples: int, num_panel_images: int) -> list[int]:
  """Indices of the panel examples: spread evenly over the split (first and
  last included), so consecutive near-identical video frames are not all
  that is shown; the same at every evaluation."""
  if num_examples <= 0 or num_panel_images <= 0:
    return []
  k = min(int(num_panel_images), int(num_examples))
  return sorted({int(i) for i in np.round(np.linspace(0, num_examples - 1, k))})


def evaluate_split(eval_step: Callable, variables: Any, config, split: str, mesh, *,
                   num_panel_images: int = 0,
                   limit: Optional[int] = None) -> tuple[dict, Optional[dict]]:
  """Runs the whole split. Returns (metrics, panel or None).

  The panel holds lists 'image', 'label', 'pred', 'uncertainty' (predictive
  entropy) and 'index' of `num_panel_images` examples at panel_indices
  (fixed across evaluations, so panels over steps are comparable). With
  several processes, process 0 draws the panel from its own rows: each index
  moves to the nearest row of its global batch that process 0 holds.
  """
  spec = labels_lib.spec_from_config(config.data)
  sharding_lib.check_batch_size(int(config.eval.batch_size), mesh, 'eval.batch_size')
  batches, num_examples = pipeline.eval_batches(
      config, split, process_index=jax.process_index(), process_count=jax.process_count(),
      limit=limit)
  acc = metrics_lib.ConfusionMatrix.empty(spec.num_classes)
  loss_sum = 0.0
  pixels = 0
  global_batch = int(config.eval.batch_size)
  local_batch = global_batch // jax.process_count()
  wanted = {}  # (batch index, local row) -> example index.
  for i in panel_indices(num_examples, num_panel_images):
    b, row = divmod(i, global_batch)
    wanted[(b, min(row, local_batch - 1))] = b * global_batch + min(row, local_batch - 1)
  panel = {'image': [], 'label': [], 'pred': [], 'uncertainty': [], 'index': []}
  rng = jax.random.fold_in(jax.random.key(int(config.seed)), 2)
  bar = writers.progress(batches, total=len(batches), desc=f'eval {split}', unit='batch')
  for index, batch in enumerate(bar):
    sharded = sharding_lib.to_global(batch, mesh)
    try:
      cm, nll, nvalid, preds, entropy = eval_step(variables, sharded,
                                                  jax.random.fold_in(rng, index))
      acc = acc.merge(metrics_lib.ConfusionMatrix.from_counts(
          cm, int(np.prod(batch['label'].shape)) * jax.process_count()))  # May sync.
    except jax.errors.JaxRuntimeError as e:
      if 'RESOURCE_EXHAUSTED' not in str(e):
        raise
      raise EvalOutOfMemoryError(_oom_message(config, split, batch, e)) from None
    loss_sum += nll  # Stays on device: no per-batch sync.
    pixels += nvalid
    rows = [r for r in range(local_batch) if (index, r) in wanted]
    if rows and jax.process_index() == 0:
      local_preds = sharding_lib.local_rows(preds)
      local_entropy = sharding_lib.local_rows(entropy)
      for r in rows:
        panel['image'].append(np.asarray(batch['image'][r]))
        panel['label'].append(np.asarray(batch['label'][r]))
        panel['pred'].append(np.asarray(local_preds[r]))
        panel['uncertainty'].append(np.asarray(local_entropy[r]))
        panel['index'].append(wanted[(index, r)])
  bar.close()
  cm = acc.compute()
  result = metrics_lib.compute_metrics(cm, spec.names)
  total_pixels = float(jax.device_get(pixels)) if not isinstance(pixels, int) else float(pixels)
  result['loss'] = float(jax.device_get(loss_sum)) / max(total_pixels, 1.0)
  result['num_examples'] = int(num_examples)
  result['confusion_matrix'] = cm.tolist()
  return result, (panel if panel['index'] else None)


def panel_figure(panel: dict, config, *, title: str = ''):
  """The matplotlib figure of an evaluation panel: image | ground truth |
  prediction [| entropy with eval.mc_samples > 1], class legend, ignored
  pixels in a colour no class uses; rows titled with the example index."""
  spec = labels_lib.spec_from_config(config.data)
  mc = int(config.eval.mc_samples) > 1
  return figures.prediction_figure(
      panel['image'], panel['label'], panel['pred'], class_colors=spec.colors[:-1],
      class_names=spec.names, uncertainty=panel['uncertainty'] if mc else None,
      num_classes=spec.num_classes, row_titles=[f'#{i}' for i in panel['index']], title=title)


def confusion_figure(result: dict, *, title: str = ''):
  """The row-normalised confusion matrix of a result, with class names."""
  return figures.confusion_figure(np.asarray(result['confusion_matrix'], np.int64),
                                  list(result['IoU']), title=title, normalize='true')


class EvalOutOfMemoryError(MemoryError):
  """Evaluation ran out of device memory; the message names the size and remedies."""


def _oom_message(config, split: str, batch: dict, error: Exception) -> str:
  n, h, w = batch['image'].shape[:3]
  first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
  return (f'out of memory evaluating {split!r}: a batch of {n} image(s) of {h}x{w} with '
          f'eval.mode={config.eval.mode} ({first}). Remedies: --config.data.resize=H,W '
          '(evaluate at a lower resolution), --config.eval.mode=slide (windows of '
          'eval.crop_size), or a smaller --config.eval.batch_size.')


def scalar_metrics(result: dict) -> dict:
  """The scalar summary of a result (for logs and checkpoint ranking)."""
  out = {k: result[k] for k in ('aAcc', 'mAcc', 'mIoU', 'fwIoU', 'mDice', 'loss') if k in result}
  for name, value in result['IoU'].items():
    out[f'IoU/{name}'] = value
  return out


EVAL_DIR = 'eval'


def eval_dir(workdir: str) -> str:
  """Where evaluation files go: <workdir>/eval."""
  return os.path.join(workdir, EVAL_DIR)


def result_stem(workdir: str, split: str, step: int, suffix: str = '') -> str:
  return os.path.join(eval_dir(workdir), f'{_safe(split)}_{int(step):08d}{suffix}')


def write_result(workdir: str, split: str, step: int, result: dict, suffix: str = '') -> str:
  """Process 0 only, in <workdir>/eval/: <split>_<step><suffix>.json (all
  metrics and the confusion matrix), .md (the table with class names) and
  _confusion.png (the row-normalised confusion matrix with class names).
  Returns the JSON's path."""
  stem = result_stem(workdir, split, step, suffix)
  path = stem + '.json'
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      json.dump({'split': split, 'step': int(step), **result}, f, indent=1,
                default=lambda x: None)
    title = f'{split} @ step {int(step)}' + (' (EMA weights)' if suffix == '_ema' else '')
    with open(stem + '.md', 'w') as f:
      f.write(metrics_lib.format_markdown(result, title=title))
    figures.save_png(confusion_figure(result, title=title), stem + '_confusion.png')
  return path


def write_prediction_images(workdir: str, split: str, step: int, panel: dict, config) -> str:
  """PNGs of the panel examples in <workdir>/eval/<split>_<step>/:
  <index>_pred.png (palette colours; <index> is the example's position in the
  split) and, with eval.mc_samples > 1, <index>_uncertainty.png (predictive
  entropy, black = certain, white = log num_classes); panel.png is the
  figure with headers and legend."""
  spec = labels_lib.spec_from_config(config.data)
  out_dir = result_stem(workdir, split, step)
  os.makedirs(out_dir, exist_ok=True)
  mc = int(config.eval.mc_samples) > 1
  for i, pred in zip(panel['index'], panel['pred']):
    Image.fromarray(spec.colorize(pred)).save(os.path.join(out_dir, f'{i:04d}_pred.png'))
  if mc:
    for i, entropy in zip(panel['index'], panel['uncertainty']):
      Image.fromarray(writers.uncertainty_image(entropy, spec.num_classes)).save(
          os.path.join(out_dir, f'{i:04d}_uncertainty.png'))
  figures.save_png(panel_figure(panel, config, title=f'{split} @ step {int(step)}'),
                   os.path.join(out_dir, 'panel.png'))
  return out_dir


def _safe(split: str) -> str:
  return ''.join(c if c.isalnum() or c in '-_' else '_' for c in split).strip('_')
