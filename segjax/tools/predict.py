r"""Prediction on image files with a trained run: class-index PNGs and overlays.

  segjax predict --workdir=runs/deeplabv3plus --input=photos/ --out=preds/
  segjax predict --workdir=runs/bsegnet --input='scans/**/*.png' --out=preds/ \
      --checkpoint=best --config.eval.mc_samples=16

The model, its preprocessing and the label spec come from the run
(segjax.run_dir: its config.json; `--config.eval.*`
may change the inference: mode, scales, flip, mc_samples); the weights from
its checkpoints (`latest`, `best` or a step). An output folder that already
holds predictions (`*_pred.png`) is refused unless `--overwrite`.
`--input` is an image file, a folder (searched recursively for .png .jpg .jpeg
.bmp .tif .tiff, any case) or a glob (`**` recurses); it may be given more than
once. For every image the output folder gets, at the image's path relative to
the input folder (the glob's leading non-wildcard folder; nothing for a single
file):

  <stem>_pred.png         class indices, PNG mode 'P' with the dataset palette
                          (pixel values are class indices; viewers show colours)
  <stem>_overlay.png      the image blended with the coloured prediction,
                          round((1 - alpha) * image + alpha * colour)
  <stem>_uncertainty.png  with Monte Carlo dropout (eval.mc_samples > 1 in the
                          run's config, or --mc_samples): predictive entropy,
                          black = certain, white = log(num_classes)

Images are decoded as the folder datasets decode them
(`segjax.data.sources.decode_image`), resized to `data.resize` if the run set
one (the prediction is resized back with nearest neighbour), normalised with
`data.mean`/`data.std` and run through the evaluation's inference
(`segjax.evaluate.predict_log_probs`). Images are batched by size: images of
the same (H, W) fill batches of their own; the rest are sorted by size and
batched together, zero-padded at the bottom/right to the batch's largest H, W
(as evaluation pads) and the predictions cropped back. A file that cannot be
read is reported on stderr and skipped; the run ends with
`N images predicted, M failed` on stdout. Exit status: 0, or 1 if every image
failed, 2 for a bad workdir, checkpoint, input, output folder or argument.
"""

from __future__ import annotations

import concurrent.futures
import glob as glob_lib
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from absl import flags

from segjax import cli
from segjax import evaluate as eval_lib
from segjax import run_dir
from segjax import writers
from segjax import sharding as sharding_lib
from segjax.data import labels as labels_lib
from segjax.data import sources
from segjax.data import transforms

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
_GLOB_CHARS = ('*', '?', '[')
# Dropout keys of batch b are fold_in(fold_in(key(config.seed), _RNG_TAG), b).
_RNG_TAG = 3


# --------------------------------------------------------------------------- inputs


def _has_glob(text: str) -> bool:
  return any(c in text for c in _GLOB_CHARS)


def _is_image_name(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def _glob_root(pattern: str) -> str:
  """The leading path components of `pattern` without wildcards."""
  parts = Path(pattern).parts
  keep = []
  for part in parts[:-1]:
    if _has_glob(part):
      break
    keep.append(part)
  return str(Path(*keep)) if keep else '.'


def _inside(path: str, directory: str | None) -> bool:
  if not directory:
    return False
  path, directory = os.path.abspath(path), os.path.abspath(directory)
  return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def collect_inputs(inputs: str | Sequence[str], *,
                   exclude: str | None = None) -> list[tuple[str, str]]:
  """(file path, output path stem relative to the output folder) per input image.

  `inputs` is one path or glob, or a list of them. A file is taken as it is
  (stem: its name without suffix); a folder is searched recursively for
  IMAGE_SUFFIXES (case-insensitive) and a glob (recursive with `**`) is
  expanded to the files it matches; their stems keep the path relative to the
  folder, or to the glob's leading folder. Files under `exclude` (the output
  folder) are skipped. Where two images would get the same stem (`a.png` and
  `a.jpg`), both keep their suffix (`a.png`, `a.jpg`).

  Raises:
    FileNotFoundError: an input names nothing, or a folder or glob holds no image.
    ValueError: two inputs still map to the same output name.
  """
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  found: list[tuple[str, str]] = []  # (path, relative path without the suffix change)
  for item in inputs:
    item = os.path.expanduser(str(item))
    if os.path.isfile(item):
      found.append((item, os.path.basename(item)))
      continue
    if os.path.isdir(item):
      matches = []
      for dirpath, dirnames, filenames in os.walk(item):
        dirnames[:] = sorted(d for d in dirnames if not _inside(os.path.join(dirpath, d), exclude))
        matches += [os.path.join(dirpath, f) for f in filenames if _is_image_name(f)]
      root = item
      what = f'folder {item} holds no image file ({", ".join(IMAGE_SUFFIXES)})'
    elif _has_glob(item):
      matches = [p for p in glob_lib.glob(item, recursive=True) if os.path.isfile(p)]
      root = _glob_root(item)
      what = f'glob {item!r} matches no file'
    else:
      raise FileNotFoundError(f'input {item}: no such file or folder')
    matches = [p for p in matches if not _inside(p, exclude)]
    if not matches:
      raise FileNotFoundError(what)
    for p in sorted(matches, key=sources.natural_key):
      found.append((p, os.path.relpath(p, root)))
  # Drop repeats of one file (overlapping inputs), then name outputs.
  seen, unique = set(), []
  for path, rel in found:
    key = os.path.realpath(path)
    if key not in seen:
      seen.add(key)
      unique.append((path, rel))
  stems = [os.path.splitext(rel)[0] for _, rel in unique]
  counts: dict[str, int] = {}
  for s in stems:
    counts[s] = counts.get(s, 0) + 1
  out = []
  by_stem: dict[str, str] = {}
  for (path, rel), stem in zip(unique, stems):
    if counts[stem] > 1:
      stem = rel
    if stem in by_stem:
      raise ValueError(f'inputs {by_stem[stem]} and {path} would both be written as '
                       f'{stem}_pred.png; predict them into different --output folders')
    by_stem[stem] = path
    out.append((path, stem))
  return out


def load_image(path: str) -> np.ndarray:
  """uint8 (H, W, 3) RGB, decoded as the folder datasets decode images.

  Raises:
    sources.DataError: the file cannot be read or decoded; the message names it.
  """
  try:
    with Image.open(path) as img:
      img.load()
      return sources.decode_image(img)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise sources.DataError(f'{path}: cannot read image ({type(e).__name__}: {e})') from None


def image_size(path: str) -> tuple[int, int]:
  """(H, W) from the file header (no full decode); DataError if unreadable."""
  try:
    with Image.open(path) as img:
      w, h = img.size
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise sources.DataError(f'{path}: cannot read image ({type(e).__name__}: {e})') from None
  if h < 1 or w < 1:
    raise sources.DataError(f'{path}: empty image ({w}x{h})')
  return h, w


# --------------------------------------------------------------------------- batching


def plan_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
  """Groups indices of images with sizes (H, W) into batches of <= batch_size.

  Images of one exact size fill whole batches of their own (no padding);
  the remainders of every size are sorted by (H, W) and batched in that order,
  so each padded batch holds images of similar size. Every index appears in
  exactly one batch.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  groups: dict[tuple[int, int], list[int]] = {}
  for i, size in enumerate(sizes):
    groups.setdefault((int(size[0]), int(size[1])), []).append(i)
  batches, rest = [], []
  for size in sorted(groups):
    idx = groups[size]
    full = len(idx) - len(idx) % batch_size
    batches += [idx[j:j + batch_size] for j in range(0, full, batch_size)]
    rest += idx[full:]
  rest.sort(key=lambda i: (int(sizes[i][0]), int(sizes[i][1]), i))
  batches += [rest[j:j + batch_size] for j in range(0, len(rest), batch_size)]
  return batches


def _batch_rows(n: int, batch_size: int, num_devices: int) -> int:
  """Rows of a device batch holding n images: the smallest power of two >= n
  (at most batch_size), rounded up to a multiple of the devices, so that few
  batch shapes are compiled and small runs do not compute empty rows."""
  rows = min(1 << max(0, n - 1).bit_length(), batch_size)
  rows = max(rows, n)
  return -(-rows // num_devices) * num_devices


def pad_batch(images: Sequence[np.ndarray], rows: int | None = None) -> np.ndarray:
  """uint8 (rows, H, W, 3): the images at the top-left, zero elsewhere
  (H, W = the largest height and width; rows defaults to len(images))."""
  rows = len(images) if rows is None else rows
  h = max(im.shape[0] for im in images)
  w = max(im.shape[1] for im in images)
  out = np.zeros((rows, h, w, 3), np.uint8)
  for i, im in enumerate(images):
    out[i, :im.shape[0], :im.shape[1]] = im
  return out


# --------------------------------------------------------------------------- images


def palette_image(pred: np.ndarray, spec: labels_lib.LabelSpec) -> Image.Image:
  """Class-index map -> PNG-ready image whose pixel values are the indices:
  mode 'P' with the spec's colours (mode 'I;16' beyond 256 classes)."""
  if spec.num_classes > 256:
    return Image.fromarray(np.asarray(pred, np.uint16))
  img = Image.fromarray(np.asarray(pred, np.uint8), mode='P')
  colors = spec.colors[:spec.num_classes]
  pal = np.zeros((256, 3), np.uint8)
  pal[:len(colors)] = colors
  img.putpalette(pal.reshape(-1).tolist())
  return img


def overlay(image: np.ndarray, pred: np.ndarray, spec: labels_lib.LabelSpec,
            alpha: float) -> np.ndarray:
  """round((1 - alpha) * image + alpha * colorize(pred)) as uint8 (H, W, 3)."""
  colour = spec.colorize(pred).astype(np.float64)
  blend = (1.0 - alpha) * np.asarray(image, np.float64) + alpha * colour
  return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def _resize_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(h, w) int or float map -> size (H, W), nearest neighbour (PIL geometry)."""
  if x.shape[:2] == tuple(size):
    return x
  if x.dtype.kind == 'f':
    img = Image.fromarray(x.astype(np.float32), mode='F')
  else:
    img = Image.fromarray(x.astype(np.int32), mode='I')
  out = np.asarray(img.resize((size[1], size[0]), Image.NEAREST))
  return out.astype(x.dtype)


# --------------------------------------------------------------------------- model


def _inference(config):
  """The evaluation's inference settings, where this version of evaluate has them."""
  cls = getattr(eval_lib, 'Inference', None)
  return cls.from_config(config) if cls is not None else None


def make_predict_fn(model, config, mc_samples: int, mesh):
  """jit(variables, uint8 images (B, H, W, 3), rng) -> (int32 classes (B, H, W),
  predictive entropy (B, H, W) float32, or None without MC dropout)."""
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  model = eval_lib.mc_model(model, mc_samples)
  inference = _inference(config)
  kwargs = {} if inference is None else {'inference': inference}
  with_entropy = mc_samples > 1

  def predict(variables, images, rng):
    x = transforms.normalize(images, mean, std)
    logp = eval_lib.predict_log_probs(model, variables, x, rng, mc_samples, **kwargs)
    preds = jnp.argmax(logp, axis=-1).astype(jnp.int32)
    return preds, (eval_lib.predictive_entropy(logp) if with_entropy else None)

  repl = sharding_lib.replicated(mesh)
  data = sharding_lib.batch_sharding(mesh)
  return jax.jit(predict, in_shardings=(repl, data, repl), out_shardings=(data, data))


def earlier_predictions(output_dir: str) -> list[str]:
  """Prediction files (`*_pred.png`) already under output_dir, sorted."""
  found = []
  for dirpath, _, filenames in os.walk(output_dir):
    found += [os.path.join(dirpath, f) for f in filenames if f.endswith('_pred.png')]
  return sorted(found)


# --------------------------------------------------------------------------- run


class _Progress:
  """A tqdm bar 'predict: done/total files' on a TTY; the closing line
  'predict: done/total files | x img/s' always.

  The rate counts images predicted after the first batch, whose time includes
  compilation, over the time since that batch finished.
  """

  def __init__(self, total: int, stream=None):
    self.total = total
    self.stream = stream or sys.stderr
    self.bar = writers.progress(None, total=total, desc='predict', unit='file', file=self.stream)
    self._t_first = None
    self._n_first = 0
    self._done = 0
    self.images_per_sec = float('nan')

  def _line(self) -> str:
    rate = f'{self.images_per_sec:.1f} img/s' if math.isfinite(self.images_per_sec) else '- img/s'
    return f'predict: {self._done}/{self.total} files | {rate}'

  def update(self, done: int, predicted: int) -> None:
    now = time.perf_counter()
    if self._t_first is None:
      self._t_first, self._n_first = now, predicted
    elif now > self._t_first:
      self.images_per_sec = (predicted - self._n_first) / (now - self._t_first)
    self.bar.update(done - self._done)
    self._done = done
    self.bar.set_postfix_str(self._line().split(' | ')[-1], refresh=False)

  def close(self) -> None:
    self.bar.close()
    self.stream.write(self._line() + '\n')
    self.stream.flush()


def run(workdir: str, inputs: str | Sequence[str], output_dir: str, *,
        checkpoint: str = 'latest', alpha: float = 0.5, batch_size: int = 8,
        mc_samples: int | None = None, overrides: dict | None = None, overwrite: bool = False,
        stream=None) -> dict:
  """Predicts every input image with a checkpoint of the run in `workdir`.

  Args:
    workdir: training run directory (config.json, checkpoints/).
    inputs: an image file, a folder, a glob, or a list of them (collect_inputs).
    output_dir: where `<rel>/<stem>_pred.png`, `_overlay.png` and (with MC
      dropout) `_uncertainty.png` are written.
    checkpoint: 'latest', 'best' or a step number.
    alpha: weight of the coloured prediction in the overlay, in [0, 1].
    batch_size: images per device batch.
    mc_samples: Monte Carlo dropout passes; None takes the run's
      eval.mc_samples. Above 1 the model must have MC dropout.
    overrides: --config.eval.* overrides of the run's config (segjax.run_dir).
    overwrite: write into an output folder that holds earlier predictions.
    stream: where failures and progress go (default stderr).

  Returns:
    {'predicted': [input paths], 'failed': [(input path, reason)],
     'output': output_dir, 'step': the checkpoint step,
     'images_per_sec': throughput after the first batch (NaN with one batch)}.

  Raises:
    FileNotFoundError, ValueError: bad workdir, checkpoint, inputs or arguments.
    FileExistsError: output_dir holds earlier predictions and not overwrite.
  """
  stream = stream or sys.stderr
  if not 0.0 <= float(alpha) <= 1.0:
    raise ValueError(f'alpha must be in [0, 1], got {alpha}')
  if int(batch_size) < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if not overwrite:
    earlier = earlier_predictions(output_dir)
    if earlier:
      raise FileExistsError(f'{output_dir} already holds {len(earlier)} predictions (e.g. '
                            f'{earlier[0]}); pass --overwrite to replace them, or choose '
                            'another --out')
  if mc_samples is not None and int(mc_samples) < 1:
    raise ValueError(f'mc_samples must be >= 1, got {mc_samples}')
  files = collect_inputs(inputs, exclude=output_dir)
  mesh = sharding_lib.make_mesh(jax.local_devices())
  loaded = run_dir.load_run(workdir, checkpoint, overrides=overrides, mesh=mesh)
  config, variables, step = loaded.config, loaded.variables, loaded.step
  mc = int(config.eval.mc_samples) if mc_samples is None else int(mc_samples)
  spec = labels_lib.spec_from_config(config.data)
  resize = tuple(int(v) for v in (config.data.resize or ()))
  predict_fn = make_predict_fn(loaded.model, config, mc, mesh)
  num_devices = mesh.devices.size
  base_key = jax.random.fold_in(jax.random.key(int(config.seed)), _RNG_TAG)

  failed: list[tuple[str, str]] = []
  predicted: list[str] = []

  def fail(path: str, err: Exception) -> None:
    reason = str(err)
    if not reason.startswith(path):
      reason = f'{path}: {reason}'
    failed.append((path, reason))
    stream.write(f'skipped {reason}\n')
    stream.flush()

  sizes, ok = [], []
  for path, stem in files:
    try:
      hw = image_size(path)
    except sources.DataError as e:
      fail(path, e)
      continue
    ok.append((path, stem, hw))
    sizes.append(resize or hw)
  plan = plan_batches(sizes, int(batch_size))
  progress = _Progress(len(files), stream)
  done_files = len(files) - len(ok)

  def decode(i):
    path = ok[i][0]
    try:
      image = load_image(path)
    except sources.DataError as e:
      return i, None, e
    model_in, _ = transforms.resize(image, None, resize) if resize else (image, None)
    return i, image, model_in

  def write(i, image, pred, entropy):
    path, stem, _ = ok[i]
    h, w = image.shape[:2]
    pred = _resize_nearest(pred, (h, w))
    base = os.path.join(output_dir, stem)
    os.makedirs(os.path.dirname(base) or '.', exist_ok=True)
    palette_image(pred, spec).save(base + '_pred.png')
    Image.fromarray(overlay(image, pred, spec, float(alpha))).save(base + '_overlay.png')
    if entropy is not None:
      entropy = _resize_nearest(entropy, (h, w))
      Image.fromarray(writers.uncertainty_image(entropy, spec.num_classes)).save(
          base + '_uncertainty.png')

  def finish(writes, force: bool = False) -> None:
    nonlocal done_files
    for path, future in writes:
      try:
        future.result()
      except OSError as e:
        fail(path, sources.DataError(f'{path}: cannot write outputs ({e})'))
      else:
        predicted.append(path)
      done_files += 1
    if writes or force:
      progress.update(done_files, len(predicted))

  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    writes = []  # The previous batch's, finished while the next one runs.
    next_decoded = pool.map(decode, plan[0]) if plan else iter(())
    for b in range(len(plan)):
      decoded = list(next_decoded)
      if b + 1 < len(plan):  # Decode the next batch while this one runs.
        next_decoded = pool.map(decode, plan[b + 1])
      good = []
      for i, image, model_in in decoded:
        if image is None:
          fail(ok[i][0], model_in)
          done_files += 1
        else:
          good.append((i, image, model_in))
      if not good:
        finish(writes, force=True)
        writes = []
        continue
      rows = _batch_rows(len(good), int(batch_size), num_devices)
      x = pad_batch([m for _, _, m in good], rows)
      out = predict_fn(variables, x, jax.random.fold_in(base_key, b))  # Asynchronous.
      finish(writes)
      preds, entropy = jax.device_get(out)
      writes = []
      for r, (i, image, model_in) in enumerate(good):
        mh, mw = model_in.shape[:2]
        ent = None if entropy is None else entropy[r, :mh, :mw]
        writes.append((ok[i][0], pool.submit(write, i, image, preds[r, :mh, :mw], ent)))
    finish(writes)
    progress.close()
  print(f'{len(predicted)} images predicted, {len(failed)} failed', flush=True)
  return {'predicted': predicted, 'failed': failed, 'output': output_dir, 'step': step,
          'images_per_sec': progress.images_per_sec}


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  flags.DEFINE_string('workdir', None, 'The training run directory.', required=True,
                      flag_values=fv)
  flags.DEFINE_multi_string('input', None, 'Image file, folder or glob (repeatable).',
                            required=True, flag_values=fv)
  flags.DEFINE_string('out', None, 'Output folder.', required=True, flag_values=fv)
  flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best' or a step.", flag_values=fv)
  flags.DEFINE_float('alpha', 0.5, 'Weight of the coloured prediction in the overlay.',
                     flag_values=fv)
  flags.DEFINE_integer('batch_size', 8, 'Images per device batch.', flag_values=fv)
  flags.DEFINE_bool('overwrite', False, 'Write into a folder that holds earlier predictions.',
                    flag_values=fv)
  cli.define_run_overrides(fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  del argv
  summary = run(fv.workdir, fv.input, fv.out, checkpoint=fv.checkpoint, alpha=fv.alpha,
                batch_size=fv.batch_size, overrides=cli.run_overrides(fv),
                overwrite=fv.overwrite)
  return 1 if summary['failed'] and not summary['predicted'] else 0


if __name__ == '__main__':
  cli.run(main, define_flags)
