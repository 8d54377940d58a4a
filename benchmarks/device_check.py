r"""The prepared accelerator check: one command, at most ~9 minutes on a fresh
H100/H200, everything written to --out ($OUT): device_check.json and
device_check.md.

  python benchmarks/device_check.py --out=$OUT            # on the GPU machine
  python benchmarks/device_check.py --dry_run --out=/tmp/dc   # CPU, tiny sizes

(benchmarks/device_check.sh installs the carried wheels first; see
benchmarks/NOTES.md, "First accelerator hour".) Parts, in priority order, each
worker in its own subprocess under its own timeout, all inside --budget_s:

  a  DeepLabV3+-ResNet-50, output stride 16, 512x512, bf16, batch --r50_batch
     (64: torch eager fitted every power of two up to 128 on an 80 GB H100,
     and that search took most of a 10-minute call, so it is off unless
     --r50_max_batch > --r50_batch asks for it): segjax (XLA autotune level
     --autotune_level, default 0), torch eager (bf16 autocast, channels_last)
     and torch.compile at that batch:
     s/step, img/s, compile s, peak memory, MFU against a measured bf16 matmul
     peak (benchmarks/train_throughput.py's workers). Last, if time is left,
     segjax again at XLA's default autotune level, to price the autotuner.
  b  DeepLabV3+-MobileNetV2 at 352x480 with the input pipeline
     (benchmarks/input_pipeline.py: host and device augmentation, 0 and
     --pipeline_workers worker processes, beside the model's step rate).
  c  The CamVid recipe (configs/camvid.py, full resolution) trained for
     --camvid_steps steps (a watchdog stops it after --camvid_train_s seconds
     and keeps that step's checkpoint) from the packed data
     (benchmarks/pack_camvid.py: JPEG q95 images, PNG masks), then evaluated on
     val with flip + multi-scale TTA: val mIoU and per-class IoU.

A persistent compilation cache in --out/jax_cache is shared by all workers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import train_throughput as tt  # noqa: E402  pylint: disable=g-import-not-at-top

TTA_SCALES = (0.75, 1.0, 1.25, 1.5)


class Budget:

  def __init__(self, seconds: float):
    self.end = time.monotonic() + seconds

  def left(self) -> float:
    return self.end - time.monotonic()

  def timeout(self, cap: float, reserve: float = 5.0) -> int:
    return max(1, int(min(cap, self.left() - reserve)))


def _throughput_args(dry: bool, timeout: int, max_batch: int = 0):
  return argparse.Namespace(dtype='float32' if dry else 'bfloat16',
                            width=0.35 if dry else 1.0, steps=1 if dry else 5,
                            repeats=1 if dry else 3, warmup=1 if dry else 2,
                            max_batch=max_batch, profile='', worker_timeout=timeout)


def _spawn(kind: str, row: dict, args) -> dict:
  t0 = time.perf_counter()
  out = tt.spawn(kind, row, args)
  out['wall_s'] = time.perf_counter() - t0
  return out


def part_a(opts, budget: Budget, log) -> dict:
  dry = opts.dry_run
  row = tt.parse_row('dlv3p_mnv2:2:64' if dry else f'dlv3p_r50:{opts.r50_batch}:512')
  res = {'row': dict(row), 'runs': []}
  a = _throughput_args(dry, budget.timeout(60))
  res['matmul'] = _spawn('matmul', {}, a)
  log(f"matmul peak: {res['matmul'].get('tflops')} TFLOP/s")
  if not dry and opts.r50_max_batch > opts.r50_batch:
    a = _throughput_args(dry, budget.timeout(90), max_batch=opts.r50_max_batch)
    mb = _spawn('max_batch', row, a)
    res['max_batch'] = mb
    if mb.get('max_batch'):
      row['batch'] = mb['max_batch']
    log(f"largest torch eager batch: {mb.get('max_batch')} (fit: {mb.get('tried')})")
  res['row'] = dict(row)
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_gpu_autotune_level={opts.autotune_level}').strip()
  m = _spawn('segjax', row, _throughput_args(dry, budget.timeout(opts.segjax_timeout)))
  m['autotune_level'] = opts.autotune_level
  res['runs'].append(m)
  log(f"segjax (autotune {opts.autotune_level}): {m.get('step_s', m.get('error', ''))!s:.300}")
  for kind in ['torch']:  # torch.compile comes last (part_a_late): it may be slow.
    m = _spawn(kind, row, _throughput_args(dry, budget.timeout(opts.torch_timeout)))
    res['runs'].append(m)
    log(f"{kind}: {m.get('step_s', m.get('error', ''))!s:.300}")
  return res


def part_a_late(opts, budget: Budget, res: dict, log) -> None:
  """torch.compile, then segjax at XLA's default autotuning, as time allows."""
  if opts.dry_run:
    return
  row = res['row']
  if budget.left() > 60:
    m = _spawn('torch_compile', row, _throughput_args(False, budget.timeout(opts.torch_timeout)))
    res['runs'].append(m)
    log(f"torch.compile: {m.get('step_s', m.get('error', ''))!s:.300}")
  if budget.left() > 90:
    flags = ' '.join(f for f in os.environ.get('XLA_FLAGS', '').split()
                     if 'autotune_level' not in f)
    os.environ['XLA_FLAGS'] = flags
    m = _spawn('segjax', row, _throughput_args(False, budget.timeout(opts.segjax_timeout)))
    m['autotune_level'] = 'xla default (4)'
    res['runs'].append(m)
    log(f"segjax (XLA default autotune): {m.get('step_s', m.get('error', ''))!s:.300}")


def part_b(opts, budget: Budget, data_root: str, out: Path, log) -> dict:
  dry = opts.dry_run
  json_path = out / 'pipeline.json'
  cmd = [sys.executable, str(REPO / 'benchmarks' / 'input_pipeline.py'),
         f'--data_root={data_root}', '--augment_on=host,device', f'--json={json_path}']
  if dry:
    cmd += ['--workers=0', '--batch_size=2', '--crop=32x48', '--batches=2', '--repeats=1',
            '--warmup=1', '--no-model_row']
  else:
    cmd += [f'--workers=0,{opts.pipeline_workers}', '--batch_size=16', '--crop=352x480',
            '--batches=10', '--repeats=2', '--warmup=2', '--dtype=bfloat16',
            '--rotate_degrees=0']
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO),
                          timeout=budget.timeout(opts.pipeline_timeout))
  except subprocess.TimeoutExpired:
    return {'error': 'timed out', 'wall_s': time.perf_counter() - t0}
  res = {'wall_s': time.perf_counter() - t0, 'exit': proc.returncode,
         'tail': (proc.stdout + proc.stderr)[-2000:]}
  if json_path.is_file():
    res.update(json.loads(json_path.read_text()))
  log(f"pipeline: exit {proc.returncode}; {res.get('verdict', '')}")
  return res


def camvid_config(opts, data_root: str):
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  if opts.dry_run:
    c = common.load_config('configs/camvid.py:recipe=cpu,steps=2,crop=32x48')
    c.data.resize = ()
    c.schedule.warmup_steps = 0
    c.batch_size = 2
    c.eval.batch_size = 2
    c.model.width_multiplier = 0.35
    c.model.kwargs.aspp_channels = 16
    c.model.kwargs.decoder_channels = 16
    c.model.kwargs.low_level_channels = 8
  else:
    c = common.load_config(f'configs/camvid.py:recipe=full,steps={opts.camvid_steps}')
  c.data.root = data_root
  c.eval_every = c.checkpoint_every = int(c.total_steps)
  c.log_every = min(int(c.log_every), int(c.total_steps))
  c.eval.num_panel_images = 0
  return c


def camvid_worker(opts) -> int:
  """Runs in its own process: train (watchdog-limited), then TTA evaluation."""
  from segjax import config as config_lib  # pylint: disable=g-import-not-at-top
  from segjax.tools import evaluate as evaluate_tool  # pylint: disable=g-import-not-at-top
  from segjax import train  # pylint: disable=g-import-not-at-top
  c = camvid_config(opts, opts.data_root)
  config_lib.validate(c)
  workdir = opts.workdir
  timer = threading.Timer(opts.camvid_train_s, lambda: os.kill(os.getpid(), signal.SIGTERM))
  timer.start()
  t0 = time.perf_counter()
  preempted = None
  try:
    plain = train.train_and_evaluate(c, workdir)
  except train.Preempted as e:
    preempted, plain = e.step, None
  finally:
    timer.cancel()
  train_s = time.perf_counter() - t0
  scales = (1.0, 1.5) if opts.dry_run else TTA_SCALES
  t0 = time.perf_counter()
  tta = evaluate_tool.run(workdir, {'eval.flip': True, 'eval.scales': scales,
                                    'eval.checkpoint': 'latest'})
  out = {'steps': int(c.total_steps), 'stopped_at_step': preempted, 'train_s': train_s,
         'eval_s': time.perf_counter() - t0, 'batch_size': int(c.batch_size),
         'crop': list(c.data.crop_size), 'model': f'{c.model.name}/{c.model.backbone}',
         'val_mIoU_single_scale': None if plain is None else plain['mIoU'],
         'tta': {'flip': True, 'scales': list(scales)},
         'step': tta['step'], 'val_mIoU': tta['mIoU'], 'val_aAcc': tta['aAcc'],
         'per_class_IoU': tta['IoU']}
  print('RESULT ' + json.dumps(out), flush=True)
  return 0


def part_c(opts, budget: Budget, data_root: str, out: Path, log) -> dict:
  workdir = out / 'camvid_run'
  cmd = [sys.executable, __file__, '--worker=camvid', f'--data_root={data_root}',
         f'--workdir={workdir}', f'--camvid_steps={opts.camvid_steps}',
         f'--camvid_train_s={opts.camvid_train_s}'] + (['--dry_run'] if opts.dry_run else [])
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO),
                          timeout=budget.timeout(opts.camvid_timeout))
  except subprocess.TimeoutExpired as e:
    tail = e.stdout.decode(errors='replace')[-1500:] if isinstance(e.stdout, bytes) else ''
    return {'error': 'timed out', 'wall_s': time.perf_counter() - t0, 'tail': tail}
  for line in proc.stdout.splitlines():
    if line.startswith('RESULT '):
      res = json.loads(line[len('RESULT '):])
      res['wall_s'] = time.perf_counter() - t0
      log(f"camvid: val mIoU (flip + scales) {res['val_mIoU']:.4f} at step {res['step']}")
      return res
  return {'error': f'exit {proc.returncode}', 'tail': (proc.stdout + proc.stderr)[-3000:]}


def prepare_data(opts, tmp: Path, log) -> str:
  """A CamVid folder: the unpacked --packed tar, else (dry run) a tiny packed
  synthetic one, else ../shared/data/camvid."""
  from benchmarks import pack_camvid  # pylint: disable=g-import-not-at-top
  archive = Path(opts.packed)
  if opts.dry_run:
    from benchmarks import input_pipeline  # pylint: disable=g-import-not-at-top
    fake = tmp / 'fake_camvid'
    input_pipeline.write_fake_camvid(fake, 6, (48, 64))
    archive = tmp / 'camvid.tar'
    info = pack_camvid.pack(fake, archive, 95)
    log(f"packed synthetic CamVid: {info['bytes']} bytes")
  if archive.is_file():
    root = pack_camvid.unpack(archive, tmp / 'camvid')
    log(f'unpacked {archive} to {root}')
    return str(root)
  shared = REPO.parent / 'shared' / 'data' / 'camvid'
  if shared.is_dir():
    return str(shared)
  raise SystemExit(f'{archive}: no packed CamVid (run benchmarks/pack_camvid.py) and no '
                   f'{shared}')


def _fmt(v, spec='.4f'):
  return '-' if v is None else format(v, spec)


def markdown(info: dict) -> str:
  lines = [f"# Device check ({info.get('date')}, {'dry run' if info['dry_run'] else 'GPU'})",
           '', f"Command: `{info['command']}`; total {info.get('total_s', 0):.0f} s.", '']
  a = info.get('a')
  if a:
    lines += ['## a. DeepLabV3+ train step, segjax vs PyTorch', '']
    peak = (a.get('matmul') or {}).get('tflops')
    lines.append(tt.table([dict(a['row'], runs=a['runs'])], peak))
    for m in a['runs']:
      if m.get('framework') == 'segjax':
        lines.append(f"- segjax autotune level {m.get('autotune_level')}: compile "
                     f"{_fmt(m.get('compile_s'), '.1f')} s, step {_fmt(m.get('step_s'))} s"
                     + (f" (error: {m['error'][-200:]})" if 'error' in m else ''))
    lines.append('')
  b = info.get('b')
  if b:
    lines += ['## b. Input pipeline (CamVid, MobileNetV2 model row)', '',
              '| row | img/s |', '|---|---:|']
    for r in b.get('rows', []):
      lines.append(f"| {r['name']} | {r['images_per_s']:.1f} |")
    lines += ['', f"{b.get('verdict', b.get('error', ''))}", '']
  c = info.get('c')
  if c:
    lines += ['## c. CamVid recipe', '']
    if 'error' in c:
      lines.append(f"error: {c['error']}")
    else:
      lines.append(f"{c['model']}, batch {c['batch_size']}, crop {c['crop']}, "
                   f"{c['step']} steps in {c['train_s']:.0f} s (stopped early: "
                   f"{c['stopped_at_step'] is not None}); val mIoU single scale "
                   f"{_fmt(c['val_mIoU_single_scale'])}, with flip + scales "
                   f"{c['tta']['scales']}: **{c['val_mIoU']:.4f}**")
      lines += ['', '| class | IoU |', '|---|---:|']
      lines += [f'| {k} | {_fmt(v)} |' for k, v in c['per_class_IoU'].items()]
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', default=os.environ.get('OUT', 'runs/device_check'))
  p.add_argument('--dry_run', action='store_true', help='CPU, tiny sizes, every part')
  p.add_argument('--budget_s', type=float, default=530)
  p.add_argument('--parts', default='a,c,b', help='which parts, in this order')
  p.add_argument('--packed', default=str(REPO / '.devdata' / 'camvid.tar'))
  p.add_argument('--r50_batch', type=int, default=64)
  p.add_argument('--r50_max_batch', type=int, default=0,
                 help='>r50_batch: first search (doubling) the largest torch eager batch up to this')
  p.add_argument('--autotune_level', type=int, default=0)
  p.add_argument('--segjax_timeout', type=int, default=150)
  p.add_argument('--torch_timeout', type=int, default=90)
  p.add_argument('--pipeline_timeout', type=int, default=100)
  p.add_argument('--pipeline_workers', type=int, default=8)
  p.add_argument('--camvid_steps', type=int, default=1500)
  p.add_argument('--camvid_train_s', type=float, default=150)
  p.add_argument('--camvid_timeout', type=int, default=230)
  p.add_argument('--worker', default='', help=argparse.SUPPRESS)
  p.add_argument('--data_root', default='', help=argparse.SUPPRESS)
  p.add_argument('--workdir', default='', help=argparse.SUPPRESS)
  opts = p.parse_args(argv)
  if opts.dry_run:
    # Tiny sizes, but a CPU shared with other jobs compiles slowly (a 40 s
    # compile took over 400 s at load 20 on 2 cores): generous limits, so
    # the dry run checks the plumbing, not the machine's load.
    opts.budget_s = max(opts.budget_s, 3000)
    opts.segjax_timeout = opts.torch_timeout = opts.pipeline_timeout = 1200
    opts.camvid_timeout = opts.camvid_train_s = 1500
  if opts.worker == 'camvid':
    return camvid_worker(opts)

  out = Path(opts.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(out / 'jax_cache'))
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  if opts.dry_run:
    os.environ['JAX_PLATFORMS'] = 'cpu'
  budget = Budget(opts.budget_s)
  t_start = time.perf_counter()
  info = {'dry_run': opts.dry_run, 'command': ' '.join(sys.argv),
          'date': time.strftime('%Y-%m-%d %H:%M:%S'), 'budget_s': opts.budget_s}

  def log(msg):
    print(f'[{time.perf_counter() - t_start:6.1f}s] {msg}', flush=True)

  def save():
    info['total_s'] = time.perf_counter() - t_start
    (out / 'device_check.json').write_text(json.dumps(info, indent=1, default=str))
    (out / 'device_check.md').write_text(markdown(info))

  with tempfile.TemporaryDirectory(prefix='segjax_device_check_') as tmp:
    data_root = prepare_data(opts, Path(tmp), log)
    for part in [x for x in opts.parts.split(',') if x]:
      if budget.left() < 20:
        info.setdefault('skipped', []).append(part)
        continue
      try:
        if part == 'a':
          info['a'] = part_a(opts, budget, log)
        elif part == 'b':
          info['b'] = part_b(opts, budget, data_root, out, log)
        elif part == 'c':
          info['c'] = part_c(opts, budget, data_root, out, log)
        else:
          raise SystemExit(f'--parts: unknown part {part!r}')
      except Exception as e:  # pylint: disable=broad-except
        info[part] = {'error': f'{type(e).__name__}: {e}'}
      save()
    if 'a' in info and 'runs' in info['a']:
      part_a_late(opts, budget, info['a'], log)
    save()
  print(markdown(info))
  return 0


if __name__ == '__main__':
  sys.exit(main())
