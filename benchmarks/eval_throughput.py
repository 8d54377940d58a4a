r"""Images/s of evaluation: whole-image vs sliding-window vs multi-scale + flip.

  python benchmarks/eval_throughput.py [--config=configs/deeplabv3plus.py:dataset=camvid]
      [--model=deeplabv3plus] [--backbone=mobilenetv2] [--width=1.0] [--num_classes=11]
      [--dtype=float32] [--size=360x480] [--batch_size=8] [--batches=5]
      [--scales=0.5,0.75,1.0,1.25,1.5] [--no-flip] [--slide_crop=352x480]
      [--slide_stride=234x320] [--json=runs/eval_throughput.json]

  python benchmarks/eval_throughput.py --size=64x64 --width=0.35 --batch_size=2 \
      --batches=2 --slide_crop=32x32      # seconds on a CPU

Runs the real jitted eval step (evaluate.make_eval_step: normalise, inference,
confusion matrix, NLL, predictions, entropy) of a randomly initialised model
on one synthetic eval batch ({'image', 'label', 'valid'} as
pipeline._eval_batch builds them), already on the devices, so it measures the
device work and not the input pipeline. Three modes: whole image;
sliding windows of --slide_crop (default data.crop_size, 352x480 for CamVid)
every --slide_stride (default 2/3 of the window, as eval_modes.py and the
config default); whole image at --scales with (default) horizontal flips.
Per mode: compile time (the first call, compile + one run), then --batches
timed calls, each waited for with jax.block_until_ready; the median seconds
per batch give images/s and the ratio to whole-image inference. jax picks the
backend (CPU, GPU or TPU); the eval batch is sharded over all devices.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from segjax import config as config_lib  # noqa: E402
from segjax import platform  # noqa: E402
from segjax import evaluate  # noqa: E402
from segjax import optim  # noqa: E402
from segjax import sharding  # noqa: E402
from segjax import train  # noqa: E402

DEFAULT_CONFIG = 'configs/deeplabv3plus.py:dataset=camvid'


parse_hw = common.parse_hw
load_config = common.load_config


def host_init(model, size: tuple[int, int], mesh, seed: int = 0) -> dict:
  """Random variables drawn with NumPy in the shapes model.init gives (traced,
  not compiled): kernels He-normal over their fan-in, other weights N(0, 0.02),
  biases and BatchNorm means 0, scales and variances 1. Replicated on `mesh`."""
  shapes = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
      jnp.zeros((1, *size, 3), jnp.float32), train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], 'key', path[-1]))
    shape, dtype = leaf.shape, leaf.dtype
    if name in ('bias', 'mean'):
      x = np.zeros(shape)
    elif name in ('scale', 'var'):
      x = np.ones(shape)
    elif name == 'kernel' and len(shape) >= 2:
      x = rng.standard_normal(shape) * np.sqrt(2.0 / max(1, int(np.prod(shape[:-1]))))
    else:
      x = 0.02 * rng.standard_normal(shape)
    return np.asarray(x, dtype)

  variables = jax.tree_util.tree_map_with_path(fill, shapes)
  return jax.device_put(variables, sharding.replicated(mesh))


def synthetic_batch(config, batch_size: int, size: tuple[int, int]) -> dict:
  """A random eval batch in pipeline._eval_batch's format, every row valid."""
  rng = np.random.default_rng(0)
  h, w = size
  label = rng.integers(0, int(config.data.num_classes), (batch_size, h, w)).astype(np.int32)
  label[:, :, :max(1, w // 16)] = int(config.data.ignore_label)
  return {'image': rng.integers(0, 256, (batch_size, h, w, 3), dtype=np.uint8),
          'label': label, 'valid': np.ones((batch_size,), bool)}


def time_mode(model, config, mesh, variables, batch, batches: int) -> dict:
  step = evaluate.make_eval_step(model, config, mesh)
  keys = [jax.random.fold_in(jax.random.key(0), i) for i in range(batches + 1)]
  t0 = time.perf_counter()
  out = jax.block_until_ready(step(variables, batch, keys[0]))
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(batches):
    t0 = time.perf_counter()
    out = jax.block_until_ready(step(variables, batch, keys[i + 1]))
    times.append(time.perf_counter() - t0)
  labels = np.asarray(batch['label'])
  counted = int(np.asarray(out[0]).sum())  # Confusion matrix: every non-ignore pixel once.
  assert counted == int(np.sum(labels < int(config.data.num_classes))), counted
  assert np.isfinite(float(out[1])), 'non-finite NLL: the random weights overflow'
  return {'compile_s': compile_s, 's_per_batch': statistics.median(times),
          'all_s_per_batch': times}


def run(args) -> dict:
  config = load_config(args.config)
  m = config.model
  if args.model:
    m.name = args.model
  if args.backbone:
    m.backbone = args.backbone
  if args.width is not None:
    m.width_multiplier = float(args.width)
  if args.dtype:
    m.dtype = args.dtype
  if args.num_classes:
    config.data.num_classes = int(args.num_classes)
    # The dataset's names, palette and class weights no longer fit.
    config.data.class_names, config.data.palette = (), ()
    config.data.label_map, config.loss.class_weights = '', ()
  if config.data.name == 'folder' and not config.data.root:
    config.data.root = '/nonexistent'  # Never read: the batches are synthetic.
  size = tuple(args.size)
  bs = int(args.batch_size or config.eval.batch_size)
  config.eval.batch_size = bs
  config.eval.mc_samples = 1
  slide_crop = tuple(args.slide_crop or config.data.crop_size)
  slide_stride = tuple(args.slide_stride or (max(1, (2 * c) // 3) for c in slide_crop))
  scales = tuple(float(s) for s in args.scales.split(','))
  config.data.crop_size = size  # init_state traces the model at this size.
  config_lib.validate(config)

  mesh = sharding.make_mesh()
  sharding.check_batch_size(bs, mesh, 'eval batch_size')
  model = train.build_model(config)
  t0 = time.perf_counter()
  if args.init == 'model':
    tx, _ = optim.make_optimizer(config)
    state = train.init_state(config, model, tx, mesh)
    variables = train.variables_of(state)
    del state  # The optimizer state is not needed.
  else:
    variables = host_init(model, size, mesh)
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}
  variables = jax.block_until_ready(variables)
  init_s = time.perf_counter() - t0
  batch = jax.block_until_ready(sharding.to_global(synthetic_batch(config, bs, size), mesh))

  ch, cw = min(slide_crop[0], size[0]), min(slide_crop[1], size[1])
  windows = (len(evaluate.window_starts(size[0], ch, slide_stride[0])) *
             len(evaluate.window_starts(size[1], cw, slide_stride[1])))
  modes = [
      ('whole', dict(mode='whole', scales=(1.0,), flip=False)),
      (f'slide {slide_crop[0]}x{slide_crop[1]} stride {slide_stride[0]}x{slide_stride[1]} '
       f'({windows} window{"s" if windows != 1 else ""})',
       dict(mode='slide', scales=(1.0,), flip=False)),
      (f'multi-scale {",".join(f"{s:g}" for s in scales)}{" + flip" if args.flip else ""} '
       f'({len(scales) * (2 if args.flip else 1)} views)',
       dict(mode='whole', scales=scales, flip=bool(args.flip))),
  ]
  device = f'{jax.device_count()} {jax.devices()[0].platform} ({jax.devices()[0].device_kind})'
  print(f'{m.name}/{m.backbone} x{float(m.width_multiplier):g} {m.dtype}, '
        f'{config.data.num_classes} classes, random {args.init} init ({init_s:.1f}s); input '
        f'{size[0]}x{size[1]}, eval batch {bs}, {args.batches} timed batches; {device}',
        flush=True)
  rows = []
  for name, opts in modes:
    config.eval.mode, config.eval.scales, config.eval.flip = (opts['mode'], opts['scales'],
                                                              opts['flip'])
    config.eval.crop_size, config.eval.stride = slide_crop, slide_stride
    r = time_mode(model, config, mesh, variables, batch, int(args.batches))
    r.update(name=name, mode=opts['mode'], scales=list(opts['scales']), flip=opts['flip'],
             images_per_s=bs / r['s_per_batch'])
    if opts['mode'] == 'slide':
      r['windows'] = windows
    rows.append(r)
    print(f'{name}: compile {r["compile_s"]:.1f}s, {r["s_per_batch"] * 1e3:.1f} ms/batch, '
          f'{r["images_per_s"]:.2f} img/s', flush=True)
  base = rows[0]['images_per_s']
  for r in rows:
    r['vs_whole'] = r['images_per_s'] / base

  print()
  print('| mode | compile s | s/batch | img/s | vs whole |')
  print('|---|---:|---:|---:|---:|')
  for r in rows:
    print(f'| {r["name"]} | {r["compile_s"]:.1f} | {r["s_per_batch"]:.4f} | '
          f'{r["images_per_s"]:.2f} | {r["vs_whole"]:.2f}x |')
  result = {'config': args.config, 'model': m.name, 'backbone': m.backbone,
            'width': float(m.width_multiplier), 'dtype': m.dtype,
            'num_classes': int(config.data.num_classes), 'init': args.init, 'size': list(size),
            'batch_size': bs, 'batches': int(args.batches), 'device': device,
            'init_s': init_s, 'rows': rows}
  common.write_json(args.json, result)
  return result


def main(argv=None) -> int:
  platform.configure_xla_cpu()  # Before jax creates a backend.
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default=DEFAULT_CONFIG, help='config file[:arg]')
  parser.add_argument('--model', default='', help='override model.name')
  parser.add_argument('--backbone', default='', help='override model.backbone')
  parser.add_argument('--width', type=float, default=None,
                      help='override model.width_multiplier')
  parser.add_argument('--num_classes', type=int, default=0, help='override data.num_classes')
  parser.add_argument('--dtype', default='', choices=('', 'float32', 'bfloat16'),
                      help='override model.dtype')
  parser.add_argument('--size', type=parse_hw, default=(360, 480), help='input HxW')
  parser.add_argument('--batch_size', type=int, default=0,
                      help='eval batch (default eval.batch_size)')
  parser.add_argument('--batches', type=int, default=5, help='timed batches per mode')
  parser.add_argument('--scales', default='0.5,0.75,1.0,1.25,1.5')
  parser.add_argument('--flip', action=argparse.BooleanOptionalAction, default=True,
                      help='flip views in the multi-scale mode')
  parser.add_argument('--slide_crop', type=parse_hw, default=None,
                      help='window HxW (default data.crop_size)')
  parser.add_argument('--slide_stride', type=parse_hw, default=None,
                      help='window stride HxW (default 2/3 of the window)')
  parser.add_argument('--init', default='host', choices=('host', 'model'),
                      help='random weights drawn on the host (fast, no compile), or '
                      "train.init_state with the model's initialisers (compiles; slow on CPU)")
  parser.add_argument('--json', default='', help='write the raw numbers here')
  args = parser.parse_args(argv)
  run(args)
  return 0


if __name__ == '__main__':
  sys.exit(main())
