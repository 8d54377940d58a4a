r"""Images/s of the grain training pipeline on CamVid-sized images, next to the model's.

  python benchmarks/input_pipeline.py [--data_root=../shared/data/camvid]
      [--workers=0,2,4] [--batch_size=8] [--crop=352x480] [--batches=20]
      [--repeats=3] [--no-model_row] [--json=runs/input_pipeline.json]

Times `pipeline.train_iterator(config)` (PNG decode + label map + random scale
+ crop with ignore padding + flips + rotation + colour jitter + batching), the
real training input path, for each data.num_workers value and each
--augment_on value (host; device: the host decodes + pads, and the jitted
device augmentation gets its own row, timed on the accelerator) (0 = grain threads
in-process, else grain worker processes). The config is
configs/deeplabv3plus.py:dataset=camvid (the full CamVid recipe: scale
0.5-2.0, brightness/contrast/saturation 0.2, horizontal flips) with
--rotate_degrees on top (the recipe has none; 0 gives the recipe exactly).
Each worker count gets one iterator: the first --warmup batches (worker start,
first decodes) are discarded, then --repeats windows of --batches batches are
timed; a row is the median images/s over the windows. A reference row times
the decode alone (FolderSource[i]: PIL decode of image + mask and the label
map, one thread, no augmentation).

With --model_row (the default) the jitted train step of DeepLabV3+-MobileNetV2
(--width, --dtype) is timed at the same batch and crop on synthetic arrays
(already on device, --model_steps steps after the compiling one, median), and
the verdict compares the best pipeline row with it: the pipeline is the
bottleneck when it delivers fewer images/s than the step consumes (prefetching
overlaps the two, so a training step then waits for data). On a CPU backend
the pipeline and the step share the cores, so there the ratio is optimistic.

Without --data_root (default ../shared/data/camvid next to the repo) on disk,
or with --synthetic, a temporary CamVid-layout folder (train/, trainannot/) of
--num_images random --image_size PNGs (smooth RGB with noise, ~200 kB like
CamVid's photos; 8-bit masks of 12 values with 11 = void) is written first and
removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks import common  # noqa: E402
from segjax import config as config_lib  # noqa: E402
from segjax import platform  # noqa: E402
from segjax import optim  # noqa: E402
from segjax import sharding  # noqa: E402
from segjax import train  # noqa: E402
from segjax.data import pipeline  # noqa: E402
from segjax.data import sources  # noqa: E402

DEFAULT_CONFIG = 'configs/deeplabv3plus.py:dataset=camvid'
DEFAULT_DATA_ROOT = ROOT.parent / 'shared' / 'data' / 'camvid'


parse_hw = common.parse_hw
load_config = common.load_config


def write_fake_camvid(root: Path, num_images: int, size: tuple[int, int], seed: int = 0) -> None:
  """train/ + trainannot/ (and a 2-image val split) of CamVid-like PNGs."""
  rng = np.random.default_rng(seed)
  h, w = size
  for split, n in (('train', num_images), ('val', 2)):
    (root / split).mkdir(parents=True)
    (root / f'{split}annot').mkdir(parents=True)
    for i in range(n):
      # Smooth colour field (a bilinearly upsampled 9x12 grid) plus pixel noise,
      # which PNG-compresses to about CamVid's ~200 kB per 480x360 photo.
      coarse = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
      base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), np.int16)
      noise = rng.integers(-2, 3, (h, w, 3), dtype=np.int16)
      image = np.clip(base + noise, 0, 255).astype(np.uint8)
      # Blocky label regions (nearest-upsampled 12x16 grid), values 0..11.
      cells = rng.integers(0, 12, (12, 16), dtype=np.uint8)
      mask = np.asarray(Image.fromarray(cells, mode='L').resize((w, h), Image.NEAREST))
      name = f'0001TP_{i:06d}.png'
      Image.fromarray(image).save(root / split / name)
      Image.fromarray(mask, mode='L').save(root / f'{split}annot' / name)


def time_decode(config, num: int, repeats: int) -> dict:
  """FolderSource[i] (decode image + mask, label map) on one thread."""
  src = sources.make_source(config.data, config.data.train_split)
  num = max(1, min(num, len(src)))
  src[0]  # Page in the first file and Pillow's decoder.
  rates = []
  for r in range(repeats):
    t0 = time.perf_counter()
    for i in range(num):
      src[(r * num + i) % len(src)]
    rates.append(num / (time.perf_counter() - t0))
  return {'name': 'decode only (1 thread)', 'workers': None, 'images_per_s':
          statistics.median(rates), 'ms_per_image': 1e3 / statistics.median(rates),
          'all_images_per_s': rates, 'images_per_repeat': num}


def time_pipeline(config, workers: int, batches: int, warmup: int, repeats: int) -> dict:
  """Median images/s of train_iterator over `repeats` windows of `batches` batches."""
  config.data.num_workers = int(workers)
  bs = int(config.batch_size)
  it = pipeline.train_iterator(config)
  try:
    t0 = time.perf_counter()
    for _ in range(warmup):
      batch = next(it)
    warm_s = time.perf_counter() - t0
    rates = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      for _ in range(batches):
        batch = next(it)
      rates.append(batches * bs / (time.perf_counter() - t0))
  finally:
    it.close()
  if config.data.augment_on == 'host':
    assert batch['image'].shape == (bs, *config.data.crop_size, 3), batch['image'].shape
  if workers:
    name = f'pipeline, {workers} worker process{"es" if workers > 1 else ""}'
  else:
    threads = pipeline._num_threads()  # pylint: disable=protected-access
    name = f'pipeline, in-process ({threads} threads)'
  if config.data.augment_on == 'device':
    name += ', decode + pad only (augment_on=device)'
  ips = statistics.median(rates)
  return {'name': name, 'workers': int(workers), 'images_per_s': ips,
          'ms_per_batch': 1e3 * bs / ips, 'all_images_per_s': rates,
          'warmup_s': warm_s}


def time_device_augment(config, steps: int) -> dict:
  """Median images/s of the jitted device augmentation (data.augment_on=
  'device') on one pipeline batch of canvases already on the device."""
  from segjax.data import device_augment  # pylint: disable=g-import-not-at-top
  c = config.copy_and_resolve_references()
  c.data.augment_on = 'device'
  p = device_augment.params_from_config(c)
  mesh = sharding.make_mesh()
  host = pipeline.train_dataset(c)[0]
  batch = sharding.to_global(host, mesh)
  bs = int(c.batch_size)
  fn = jax.jit(lambda b, step: device_augment.augment_batch(
      b, device_augment.example_keys(int(c.seed), step, bs), p))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(batch, 0))
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(batch, i + 1))
    times.append(time.perf_counter() - t0)
  t = statistics.median(times)
  return {'name': f'device augmentation (jitted, canvas {host["image"].shape[1]}x'
                  f'{host["image"].shape[2]} -> crop {c.data.crop_size[0]}x'
                  f'{c.data.crop_size[1]}, {jax.devices()[0].platform})',
          'workers': None, 'images_per_s': bs / t, 'ms_per_batch': 1e3 * t,
          'compile_s': compile_s, 'all_s_per_step': times}


def time_model(config, steps: int) -> dict:
  """Median images/s of the jitted train step on synthetic, on-device batches."""
  mesh = sharding.make_mesh()
  bs = int(config.batch_size)
  sharding.check_batch_size(bs, mesh)
  model = train.build_model(config)
  tx, schedule = optim.make_optimizer(config)
  state = train.init_state(config, model, tx, mesh)
  step = train.jit_train_step(train.make_train_step(config, model, tx, schedule), mesh)
  h, w = tuple(config.data.crop_size)
  rng = np.random.default_rng(0)
  label = rng.integers(0, int(config.data.num_classes), (bs, h, w)).astype(np.int32)
  label[:, :, :w // 16] = int(config.data.ignore_label)  # Some ignore pixels, as padding gives.
  batch = sharding.to_global({'image': rng.integers(0, 256, (bs, h, w, 3), dtype=np.uint8),
                              'label': label}, mesh)
  key = jax.random.key(0)
  t0 = time.perf_counter()
  state, metrics = jax.block_until_ready(step(state, batch, key))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = jax.block_until_ready(step(state, batch, key))
    times.append(time.perf_counter() - t0)
  t = statistics.median(times)
  m = config.model
  return {'name': f'model train step ({m.name}/{m.backbone} x{float(m.width_multiplier):g}, '
                  f'{m.dtype}, {jax.device_count()} {jax.devices()[0].platform})',
          'workers': None, 'images_per_s': bs / t, 'ms_per_batch': 1e3 * t,
          'compile_s': compile_s, 'all_s_per_step': times,
          'loss': float(metrics['loss'])}


def run(args) -> dict:
  config = load_config(args.config)
  config.batch_size = int(args.batch_size)
  config.data.crop_size = tuple(args.crop)
  config.augment.rotate_degrees = float(args.rotate_degrees)
  config.model.width_multiplier = float(args.width)
  config.model.dtype = args.dtype
  workers = [int(w) for w in str(args.workers).split(',') if w.strip()]
  tmp = None
  device_rows = []  # Timed on the accelerator, not in the host pipeline.
  root = Path(args.data_root) if args.data_root else DEFAULT_DATA_ROOT
  synthetic = args.synthetic or not (root / 'train').is_dir()
  if synthetic:
    tmp = tempfile.TemporaryDirectory(prefix='segjax_fake_camvid_')
    root = Path(tmp.name)
    t0 = time.perf_counter()
    write_fake_camvid(root, int(args.num_images), tuple(args.image_size))
    print(f'wrote {args.num_images} random {args.image_size[0]}x{args.image_size[1]} '
          f'CamVid-layout PNG pairs to {root} in {time.perf_counter() - t0:.1f}s', flush=True)
  config.data.root = str(root)
  config_lib.validate(config)
  try:
    n = len(sources.make_source(config.data, config.data.train_split))
    a = config.augment
    print(f'data {root} ({"synthetic" if synthetic else "on disk"}, {n} train pairs), '
          f'batch {config.batch_size}, crop {config.data.crop_size[0]}x'
          f'{config.data.crop_size[1]}, scale {tuple(a.scale_range)}, hflip {a.hflip}, '
          f'rotate +-{a.rotate_degrees:g} deg, jitter b/c/s/h {a.brightness:g}/{a.contrast:g}/'
          f'{a.saturation:g}/{a.hue:g}; {os.cpu_count()} CPUs', flush=True)
    rows = [time_decode(config, int(args.batches) * int(args.batch_size), int(args.repeats))]
    print(f'{rows[-1]["name"]}: {rows[-1]["images_per_s"]:.1f} img/s', flush=True)
    for where in [x for x in str(args.augment_on).split(',') if x]:
      c = config.copy_and_resolve_references()
      c.data.augment_on = where
      if where == 'device':
        c.augment.rotate_degrees = 0.0  # Not done on the device.
      for wk in workers:
        rows.append(time_pipeline(c, wk, int(args.batches), int(args.warmup),
                                  int(args.repeats)))
        print(f'{rows[-1]["name"]}: {rows[-1]["images_per_s"]:.1f} img/s '
              f'({[round(r, 1) for r in rows[-1]["all_images_per_s"]]})', flush=True)
      if where == 'device':
        device_rows.append(time_device_augment(c, int(args.model_steps)))
        print(f'{device_rows[-1]["name"]}: {device_rows[-1]["images_per_s"]:.1f} img/s',
              flush=True)
  finally:
    if tmp is not None:
      tmp.cleanup()
  result = {'config': args.config, 'data_root': str(root), 'synthetic_data': synthetic,
            'batch_size': int(config.batch_size), 'crop': list(config.data.crop_size),
            'rotate_degrees': float(args.rotate_degrees), 'batches': int(args.batches),
            'warmup': int(args.warmup), 'repeats': int(args.repeats),
            'cpus': os.cpu_count(), 'rows': rows}
  best = max(rows[1:], key=lambda r: r['images_per_s']) if len(rows) > 1 else None
  rows.extend(device_rows)
  if args.model_row:
    model = time_model(config, int(args.model_steps))
    rows.append(model)
    print(f'{model["name"]}: {model["images_per_s"]:.1f} img/s (compile '
          f'{model["compile_s"]:.1f}s)', flush=True)
    if best is not None:
      ratio = best['images_per_s'] / model['images_per_s']
      result['ratio'] = ratio
      result['best_pipeline'] = best['name']
      result['verdict'] = ('pipeline is the bottleneck' if ratio < 1.0 else
                           'pipeline is not the bottleneck')

  print()
  print('| row | img/s | ms/batch | ms/image | vs model |')
  print('|---|---:|---:|---:|---:|')
  model_ips = rows[-1]['images_per_s'] if args.model_row else None
  for r in rows:
    ms_batch = r.get('ms_per_batch')
    vs = f'{r["images_per_s"] / model_ips:.2f}x' if model_ips else '-'
    print(f'| {r["name"]} | {r["images_per_s"]:.1f} | '
          f'{"-" if ms_batch is None else f"{ms_batch:.1f}"} | '
          f'{1e3 / r["images_per_s"]:.2f} | {vs} |')
  if 'verdict' in result:
    print(f'\nbest pipeline / model = {result["ratio"]:.2f} ({result["best_pipeline"]}): '
          f'{result["verdict"]}')
  common.write_json(args.json, result)
  return result


def main(argv=None) -> int:
  platform.configure_xla_cpu()  # Before jax creates a backend.
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default=DEFAULT_CONFIG, help='config file[:arg]')
  parser.add_argument('--data_root', default='',
                      help=f'CamVid folder (default {DEFAULT_DATA_ROOT}); synthetic if absent')
  parser.add_argument('--synthetic', action='store_true',
                      help='use a temporary random CamVid-layout folder even if data exists')
  parser.add_argument('--num_images', type=int, default=64, help='synthetic train images')
  parser.add_argument('--image_size', type=parse_hw, default=(360, 480),
                      help='synthetic image HxW')
  parser.add_argument('--workers', default='0,2,4', help='data.num_workers values')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--crop', type=parse_hw, default=(352, 480),
                      help='training crop HxW (the CamVid recipe: 352x480)')
  parser.add_argument('--rotate_degrees', type=float, default=10.0,
                      help='augment.rotate_degrees (0 = the CamVid recipe)')
  parser.add_argument('--augment_on', default='host',
                      help="comma list of data.augment_on values to time: host, device "
                           "(device: the host decodes and pads; the augmentation is timed as "
                           "a jitted op on the accelerator; rotation off)")
  parser.add_argument('--batches', type=int, default=20, help='batches per timed window')
  parser.add_argument('--warmup', type=int, default=3, help='batches discarded first')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--model_row', action=argparse.BooleanOptionalAction, default=True,
                      help='also time the jitted train step (--no-model_row: skip)')
  parser.add_argument('--model_steps', type=int, default=5, help='timed train steps')
  parser.add_argument('--width', type=float, default=1.0, help='MobileNetV2 width multiplier')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--json', default='', help='write the raw numbers here')
  args = parser.parse_args(argv)
  run(args)
  return 0


if __name__ == '__main__':
  sys.exit(main())
