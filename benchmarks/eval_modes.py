r"""Whole-image vs sliding-window vs multi-scale + flip evaluation of one checkpoint.

  python benchmarks/eval_modes.py --workdir=runs/camvid700 [--checkpoint=latest]
      [--scales=0.75,1.0,1.25] [--repeats=3]

Reads the run's config, evaluates its val split in each mode with the jitted,
sharded evaluator (the same code as --mode=eval), and prints mIoU / aAcc and
throughput: the median over `repeats` full passes (after one compiling pass
over the first batch), with the ratio to whole-image inference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from segjax import checkpoint as ckpt_lib  # noqa: E402
from segjax import config as config_lib  # noqa: E402
from segjax import platform  # noqa: E402
from segjax import evaluate  # noqa: E402
from segjax import sharding  # noqa: E402
from segjax import train  # noqa: E402


def main(argv=None) -> int:
  platform.configure_xla_cpu()  # Before jax creates a backend.
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--checkpoint', default='latest')
  parser.add_argument('--scales', default='0.75,1.0,1.25')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--data_root', default='', help='override data.root of the run')
  args = parser.parse_args(argv)

  config = config_lib.load_run_config(args.workdir)
  if args.data_root:
    config.data.root = args.data_root
  mesh = sharding.make_mesh()
  model = train.build_model(config)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(args.workdir), async_save=False)
  try:
    step = ckpt.resolve(args.checkpoint)
    state, _ = ckpt.restore(step, train.abstract_state(config, model, mesh))
  finally:
    ckpt.close()
  variables = train.variables_of(state)
  crop = tuple(config.data.crop_size)
  scales = tuple(float(s) for s in args.scales.split(','))
  modes = {
      'whole': dict(mode='whole', scales=(1.0,), flip=False),
      f'slide {crop[0]}x{crop[1]}': dict(mode='slide', scales=(1.0,), flip=False),
      f'whole + scales {scales} + flip': dict(mode='whole', scales=scales, flip=True),
  }
  split = config.data.val_split
  print(f'{args.workdir} step {step}: {config.model.name}/{config.model.backbone}, '
        f'split {split}, eval.batch_size {config.eval.batch_size}, '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s)')
  rows = []
  for name, opts in modes.items():
    config.eval.mode, config.eval.scales, config.eval.flip = (opts['mode'], opts['scales'],
                                                              opts['flip'])
    config.eval.crop_size = crop
    config.eval.stride = tuple(max(1, (2 * c) // 3) for c in crop)
    step_fn = evaluate.make_eval_step(model, config, mesh)
    evaluate.evaluate_split(step_fn, variables, config, split, mesh,
                            limit=int(config.eval.batch_size))  # Compile.
    times, result = [], None
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      result, _ = evaluate.evaluate_split(step_fn, variables, config, split, mesh)
      times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    rows.append((name, result['mIoU'], result['aAcc'], result['num_examples'] / t))
  base = rows[0][3]
  print(f"{'mode':40s} {'mIoU':>7s} {'aAcc':>7s} {'img/s':>7s} {'vs whole':>8s}")
  for name, miou, aacc, ips in rows:
    print(f'{name:40s} {miou:7.4f} {aacc:7.4f} {ips:7.2f} {ips / base:8.2f}x')
  return 0


if __name__ == '__main__':
  sys.exit(main())
