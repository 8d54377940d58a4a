r"""Train-step throughput of segjax next to PyTorch peers, in one invocation.

  python benchmarks/train_throughput.py                      # CPU rows of issue 6
  python benchmarks/train_throughput.py --rows=unet_mnv2:8:128,dlv3p_mnv2:8:256 \
      --peers=torch --json=/tmp/train.json
  python benchmarks/train_throughput.py --dtype=bfloat16 --rows=dlv3p_r50:32:512 \
      --peers=torch,torch_compile                            # GPU

A row is `name:batch:size` (square `size`, or `HxW`). For every row the same
architecture is trained with the same global batch, input size, number of
classes, loss (softmax cross-entropy, ignore label 255) and optimizer:

  unet_mnv2    segjax 'unet' (TF-tutorial U-Net, MobileNetV2 taps + pix2pix
               decoder 512-256-128-64), 3 classes, Adam(1e-3, eps 1e-7).
               Peer: the same network written in PyTorch below (torchvision's
               MobileNetV2 features + ConvTranspose decoder): no PyTorch
               library ships this U-Net.
  dlv3p_mnv2   segjax 'deeplabv3plus' / MobileNetV2, output stride 16, 21
               classes, SGD(0.01, momentum 0.9, weight decay 1e-4).
               Peer: segmentation_models_pytorch.DeepLabV3Plus('mobilenet_v2').
  dlv3p_r50    the same with ResNet-50; peer smp.DeepLabV3Plus('resnet50').
  dlv3_r50     segjax 'deeplabv3' / ResNet-50, output stride 8; peer
               torchvision.models.segmentation.deeplabv3_resnet50 (stride 8,
               aux head off).

Each framework runs in its own child process (clean memory statistics, no
allocator fights on a GPU); each measurement warms up (compile, cuDNN
autotuning) and then times `--repeats` runs of `--steps` consecutive steps,
device-synchronised at the end of each run; the row's time is the median
seconds per step. Reported per row: step time, images/s, compile time (segjax:
lower + compile; torch.compile: its first step minus an eager step), peak
device memory (GPU only), model FLOPs per step, achieved TFLOP/s and MFU
against a bf16/f32 matmul peak measured in the same invocation, and speedup =
peer time / segjax time (>1: segjax faster).

Model FLOPs are 3 x the forward pass's convolution and matmul FLOPs (2 per
multiply-add; the backward pass does twice the forward's work), counted from
the jaxpr for segjax and by torch.utils.flop_counter for the peer, so the two
columns use one convention and show how much work each architecture does.
(torch's counter over-counts the input gradient of strided convolutions, and
XLA's cost analysis counts elementwise work and zero taps: neither is used.)

Inputs are a fixed random batch already on the device (the input pipeline has
its own benchmark, benchmarks/input_pipeline.py). On GPU the peers run with
bf16 autocast, channels_last and cudnn.benchmark when --dtype=bfloat16;
segjax runs bf16 compute with float32 parameters and optimizer state.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segjax import platform  # noqa: E402  pylint: disable=wrong-import-position

ROWS = {
    'unet_mnv2': dict(model='unet', backbone='mobilenetv2', output_stride=32, classes=3,
                      optimizer='adam', peer='tutorial U-Net (torchvision MobileNetV2)'),
    'dlv3p_mnv2': dict(model='deeplabv3plus', backbone='mobilenetv2', output_stride=16,
                       classes=21, optimizer='sgd', peer='smp DeepLabV3Plus mobilenet_v2'),
    'dlv3p_r50': dict(model='deeplabv3plus', backbone='resnet50', output_stride=16,
                      classes=21, optimizer='sgd', peer='smp DeepLabV3Plus resnet50'),
    'dlv3_r50': dict(model='deeplabv3', backbone='resnet50', output_stride=8, classes=21,
                     optimizer='sgd', peer='torchvision deeplabv3_resnet50'),
}
PEERS = ('torch', 'torch_compile')
ADAM = dict(lr=1e-3, eps=1e-7)
SGD = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)


def parse_row(text: str) -> dict:
  parts = text.split(':')
  if len(parts) != 3 or parts[0] not in ROWS:
    raise ValueError(f'row {text!r} is not name:batch:size with name in {sorted(ROWS)}')
  size = parts[2].lower().split('x')
  hw = (int(size[0]), int(size[-1]))
  return dict(ROWS[parts[0]], name=parts[0], batch=int(parts[1]), hw=hw)


def _timed_runs(run_steps, sync, steps: int, repeats: int) -> list[float]:
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run_steps(steps)
    sync()
    out.append((time.perf_counter() - t0) / steps)
  return out


# ---------------------------------------------------------------------------
# segjax


def segjax_config(row: dict, dtype: str, width: float):
  from segjax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.model.name = row['model']
  c.model.backbone = row['backbone']
  c.model.output_stride = row['output_stride']
  if row['backbone'] == 'mobilenetv2':
    c.model.width_multiplier = width
  c.model.dtype = dtype
  c.data.num_classes = row['classes']
  c.data.crop_size = row['hw']
  c.batch_size = row['batch']
  c.schedule.name = 'constant'
  c.schedule.warmup_steps = 0
  if row['optimizer'] == 'adam':
    c.optimizer.name, c.optimizer.lr, c.optimizer.eps = 'adam', ADAM['lr'], ADAM['eps']
    c.optimizer.weight_decay = 0.0
  else:
    c.optimizer.name, c.optimizer.lr = 'sgd', SGD['lr']
    c.optimizer.momentum, c.optimizer.weight_decay = SGD['momentum'], SGD['weight_decay']
  return c


def random_batch(row: dict, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  b, (h, w) = row['batch'], row['hw']
  image = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
  label = rng.integers(0, row['classes'], (b, h, w)).astype(np.int32)
  label[rng.random((b, h, w)) < 0.05] = 255  # Some ignored pixels, as in real masks.
  return image, label


def jaxpr_flops(jaxpr) -> float:
  """Convolution and matmul FLOPs (2 per multiply-add) of a closed jaxpr,
  sub-jaxprs included: what torch.utils.flop_counter counts for the peer."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.extend import core as jex_core  # pylint: disable=g-import-not-at-top
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      lhs, rhs = (v.aval for v in eqn.invars[:2])
      dn, p = eqn.params['dimension_numbers'], eqn.params
      # Multiply-adds per output element: kernel window x input features per
      # group. An input-dilated conv (the input gradient of a strided conv)
      # multiplies mostly inserted zeros: count only the real inputs, as
      # torch's counter does for the same gradient.
      per_out = (np.prod([rhs.shape[d] for d in dn.rhs_spec[2:]])
                 * lhs.shape[dn.lhs_spec[1]] / p['feature_group_count'])
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * per_out / np.prod(p['lhs_dilation'])
    elif name == 'dot_general':
      (lc, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs.shape[d] for d in lc])
    for sub in jex_core.jaxprs_in_params(eqn.params):
      total += jaxpr_flops(sub)
  return total


def device_peak_bytes() -> int | None:
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats()
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def profile_steps(run_steps, sync, directory: str, steps: int = 3, top: int = 25) -> dict:
  """jax.profiler trace of `steps` steps: device time per step by op/kernel
  name on the busiest timeline (GPU streams, or the CPU's XLA threads)."""
  import collections  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  with jax.profiler.trace(directory):
    run_steps(steps)
    sync()
  path = sorted(glob.glob(f'{directory}/**/*.xplane.pb', recursive=True))[-1]
  data = jax.profiler.ProfileData.from_file(path)
  by_name, by_line = collections.Counter(), collections.Counter()
  for plane in data.planes:
    device = plane.name.startswith('/device:')
    for line in plane.lines:
      if not device and 'XLAEigen' not in line.name:
        continue
      if device and 'stream' not in line.name.lower():
        continue
      for ev in line.events:
        by_name[(plane.name, ev.name)] += ev.duration_ns
        by_line[(plane.name, line.name)] += ev.duration_ns
  return dict(trace=path, per_step_ms={f'{p} | {n}': v / steps / 1e6
                                       for (p, n), v in by_name.most_common(top)},
              lines_ms={f'{p} | {n}': v / steps / 1e6 for (p, n), v in by_line.most_common(8)})


def run_segjax(row: dict, dtype: str, width: float, steps: int, repeats: int,
               warmup: int, profile_dir: str = '') -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from segjax import optim, sharding, train  # pylint: disable=g-import-not-at-top

  config = segjax_config(row, dtype, width)
  model = train.build_model(config)
  tx, schedule = optim.make_optimizer(config)
  mesh = sharding.make_mesh()
  state = train.init_state(config, model, tx, mesh)
  step = train.jit_train_step(train.make_train_step(config, model, tx, schedule), mesh)
  image, label = random_batch(row)
  batch = sharding.to_global({'image': image, 'label': label}, mesh)
  rng = jax.random.key(0)
  t0 = time.perf_counter()
  lowered = step.lower(state, batch, rng)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  cost = lowered.cost_analysis() or {}
  if isinstance(cost, list):
    cost = cost[0]
  xla_flops = float(cost.get('flops', float('nan')))
  images = jax.numpy.zeros((row['batch'], *row['hw'], 3), jax.numpy.float32)
  # Model FLOPs of the network as written (lax convolutions), whatever the
  # lowering that runs: a lowering must not change the work it is credited with.
  saved = os.environ.get('SEGJAX_CONV_IMPL')
  os.environ['SEGJAX_CONV_IMPL'] = 'xla'
  try:
    reference = (model.clone(depthwise_impl='xla') if hasattr(model, 'depthwise_impl')
                 else model)
    forward = jax.make_jaxpr(lambda v, x: reference.apply(
        v, x, train=True, mutable=['batch_stats'], rngs={'dropout': rng}))(
            train.variables_of(state), images)
  finally:
    if saved is None:
      os.environ.pop('SEGJAX_CONV_IMPL')
    else:
      os.environ['SEGJAX_CONV_IMPL'] = saved
  flops = 3 * jaxpr_flops(forward.jaxpr)
  mem = compiled.memory_analysis()
  plan_bytes = None
  if mem is not None:
    plan_bytes = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                     - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
  holder = {'state': state}

  def run_steps(n):
    s = holder['state']
    for _ in range(n):
      s, metrics = compiled(s, batch, rng)
    holder['state'], holder['metrics'] = s, metrics

  run_steps(warmup)
  jax.block_until_ready(holder['state'])
  times = _timed_runs(run_steps, lambda: jax.block_until_ready(holder['state']), steps,
                      repeats)
  profile = profile_steps(run_steps, lambda: jax.block_until_ready(holder['state']),
                          profile_dir) if profile_dir else None
  loss = float(holder['metrics']['loss'])
  n_params = sum(x.size for x in jax.tree.leaves(holder['state'].params))
  return dict(framework='segjax', step_s=statistics.median(times), times=times,
              compile_s=compile_s, lower_s=t1 - t0, flops=flops, xla_flops=xla_flops,
              peak_bytes=device_peak_bytes(),
              plan_bytes=plan_bytes, loss=loss, params=int(n_params),
              device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
              jax=jax.__version__, profile=profile)


def run_matmul_peak(dtype: str) -> dict:
  """Matmul TFLOP/s of the device in `dtype`: the MFU denominator."""
  import jax  # pylint: disable=g-import-not-at-top
  n = 8192 if jax.default_backend() == 'gpu' else 2048
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), dtype)
  b = jax.random.normal(k2, (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(10):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t0)
  t = statistics.median(times)
  return dict(framework='matmul', n=n, dtype=dtype, step_s=t, tflops=2 * n**3 / t / 1e12,
              device=str(jax.devices()[0].device_kind))


# ---------------------------------------------------------------------------
# PyTorch peers


def _torch_unet(classes: int, width: float):
  """The TF tutorial's U-Net in PyTorch: torchvision MobileNetV2 features,
  taps block_1/3/6/13 expand ReLU and block_16's projection conv (before its
  BatchNorm), decoder of ConvTranspose(3, stride 2) + BN + ReLU blocks
  512-256-128-64 with skip concatenation, final ConvTranspose to classes."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  class TutorialUNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.features = torchvision.models.mobilenet_v2(weights=None, width_mult=width).features
      # Feature index of block k (Keras numbering) is k + 1.
      self.taps = {2: 'expand', 4: 'expand', 7: 'expand', 14: 'expand', 17: 'project'}
      chans = []
      for idx, kind in self.taps.items():
        conv = self.features[idx].conv
        chans.append(conv[0][0].out_channels if kind == 'expand' else conv[2].out_channels)
      ups, cin = [], chans[-1]
      for filters, skip in zip((512, 256, 128, 64), reversed(chans[:-1])):
        ups.append(nn.Sequential(
            nn.ConvTranspose2d(cin, filters, 3, stride=2, padding=1, output_padding=1,
                               bias=False),
            nn.BatchNorm2d(filters, eps=1e-3, momentum=0.1), nn.ReLU(inplace=True)))
        cin = filters + skip
      self.ups = nn.ModuleList(ups)
      self.last = nn.ConvTranspose2d(cin, classes, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x):
      skips = []
      for idx, layer in enumerate(self.features):
        if idx > 17:
          break
        kind = self.taps.get(idx)
        if kind is None:
          x = layer(x)
          continue
        conv = layer.conv
        y = conv[0](x)  # Expand ConvBNReLU6.
        if kind == 'expand':
          skips.append(y)
          y = conv[3](conv[2](conv[1](y)))
          x = x + y if layer.use_res_connect else y
        else:
          skips.append(conv[2](conv[1](y)))  # Projection conv, before its BN.
      x = skips[-1]
      for up, skip in zip(self.ups, reversed(skips[:-1])):
        x = torch.cat([up(x), skip], dim=1)
      return self.last(x)

  return TutorialUNet()


def torch_model(row: dict, width: float):
  if row['name'] == 'unet_mnv2':
    return _torch_unet(row['classes'], width)
  if row['name'] == 'dlv3_r50':
    import torchvision  # pylint: disable=g-import-not-at-top
    return torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=row['classes'], aux_loss=False)
  import segmentation_models_pytorch as smp  # pylint: disable=g-import-not-at-top
  encoder = {'mobilenetv2': 'mobilenet_v2', 'resnet50': 'resnet50'}[row['backbone']]
  return smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None,
                           encoder_output_stride=row['output_stride'], classes=row['classes'])


def run_torch(row: dict, dtype: str, width: float, steps: int, repeats: int, warmup: int,
              compile_model: bool) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  cuda = torch.cuda.is_available()
  dev = torch.device('cuda' if cuda else 'cpu')
  bf16 = dtype == 'bfloat16'
  if cuda:
    torch.backends.cudnn.benchmark = True
  model = torch_model(row, width).to(dev).train()
  if cuda:
    model = model.to(memory_format=torch.channels_last)
  if row['optimizer'] == 'adam':
    opt = torch.optim.Adam(model.parameters(), lr=ADAM['lr'], eps=ADAM['eps'])
  else:
    opt = torch.optim.SGD(model.parameters(), lr=SGD['lr'], momentum=SGD['momentum'],
                          weight_decay=SGD['weight_decay'])
  image, label = random_batch(row)
  mean = torch.tensor([123.675, 116.28, 103.53], device=dev).view(1, 3, 1, 1)
  std = torch.tensor([58.395, 57.12, 57.375], device=dev).view(1, 3, 1, 1)
  x_u8 = torch.from_numpy(image).to(dev).permute(0, 3, 1, 2)
  y = torch.from_numpy(label).long().to(dev)
  fwd = torch.compile(model) if compile_model else model

  def one_step():
    x = (x_u8.float() - mean) / std
    if cuda:
      x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
      out = fwd(x)
      if isinstance(out, dict):
        out = out['out']
    loss = F.cross_entropy(out.float(), y, ignore_index=255)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  def sync():
    if cuda:
      torch.cuda.synchronize()

  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  counter = FlopCounterMode(display=False)
  with counter, torch.no_grad():
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
      model((x_u8.float() - mean) / std)
  flops = 3.0 * counter.get_total_flops()
  sync()
  t0 = time.perf_counter()
  one_step()
  sync()
  first_s = time.perf_counter() - t0
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  for _ in range(max(0, warmup - 1)):
    one_step()
  sync()
  holder = {}

  def run_steps(n):
    for _ in range(n):
      holder['loss'] = one_step()

  times = _timed_runs(run_steps, sync, steps, repeats)
  step_s = statistics.median(times)
  return dict(framework='torch.compile' if compile_model else 'torch', step_s=step_s,
              times=times, compile_s=(first_s - step_s) if compile_model else None,
              flops=flops, loss=float(holder['loss']),
              peak_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None,
              params=sum(p.numel() for p in model.parameters()),
              device=torch.cuda.get_device_name() if cuda else 'cpu',
              threads=torch.get_num_threads(), torch=torch.__version__)


def run_torch_max_batch(row: dict, dtype: str, width: float, limit: int) -> dict:
  """Largest power-of-two multiple of row['batch'] whose torch eager step fits."""
  import torch  # pylint: disable=g-import-not-at-top
  fits, b = [], row['batch']
  while b <= limit:
    try:
      run_torch(dict(row, batch=b), dtype, width, steps=1, repeats=1, warmup=1,
                compile_model=False)
      fits.append(b)
    except torch.OutOfMemoryError:
      break
    finally:
      torch.cuda.empty_cache()
    b *= 2
  return dict(framework='torch', max_batch=max(fits) if fits else None, tried=fits)


# ---------------------------------------------------------------------------
# driver


def worker(args) -> int:
  row = json.loads(args.worker_row)
  if 'hw' in row:
    row['hw'] = tuple(row['hw'])
  if args.worker == 'segjax':
    out = run_segjax(row, args.dtype, args.width, args.steps, args.repeats, args.warmup,
                     profile_dir=args.profile)
  elif args.worker == 'matmul':
    out = run_matmul_peak(args.dtype)
  elif args.worker == 'max_batch':
    out = run_torch_max_batch(row, args.dtype, args.width, args.max_batch)
  else:
    out = run_torch(row, args.dtype, args.width, args.steps, args.repeats, args.warmup,
                    compile_model=args.worker == 'torch_compile')
  print('RESULT ' + json.dumps(out), flush=True)
  return 0


def spawn(kind: str, row: dict, args) -> dict:
  cmd = [sys.executable, __file__, f'--worker={kind}', f'--worker_row={json.dumps(row)}',
         f'--dtype={args.dtype}', f'--width={args.width}', f'--steps={args.steps}',
         f'--repeats={args.repeats}', f'--warmup={args.warmup}',
         f'--max_batch={args.max_batch}', f'--profile={args.profile}']
  env = dict(os.environ)
  env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO),
                          timeout=args.worker_timeout or None)
  except subprocess.TimeoutExpired as e:
    out = (e.stdout or b'') + (e.stderr or b'')
    out = out.decode(errors='replace') if isinstance(out, bytes) else out
    return dict(framework=kind, error=f'timed out after {args.worker_timeout} s '
                f'(--worker_timeout); output tail: {out[-1500:]}')
  for line in proc.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[len('RESULT '):])
  tail = (proc.stdout + proc.stderr)[-3000:]
  return dict(framework=kind, error=f'exit {proc.returncode}: {tail}')


def _fmt(v, spec, none='-'):
  return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(results: list[dict], peak_tflops: float | None) -> str:
  head = ('| row | framework | batch | size | s/step | img/s | compile s | peak GiB | '
          'GFLOP/step | TFLOP/s | MFU | speedup vs peer |')
  lines = [head, '|' + '---|' * 12]
  for r in results:
    seg = next((m for m in r['runs'] if m['framework'] == 'segjax' and 'error' not in m), None)
    for m in r['runs']:
      label = f"{r['name']}" + (f" ({r['peer']})" if m['framework'] != 'segjax' else '')
      if 'error' in m:
        lines.append(f"| {label} | {m['framework']} | {r['batch']} | {r['hw'][0]}x{r['hw'][1]} "
                     f"| error: {(m['error'].strip().splitlines() or [''])[-1][:80]} |" + ' |' * 7)
        continue
      if m['flops'] != m['flops']:  # torch.compile: the eager row's count.
        m['flops'] = next((o['flops'] for o in r['runs'] if o['framework'] == 'torch'
                           and 'error' not in o), float('nan'))
      t = m['step_s']
      tflops = m['flops'] / t / 1e12 if m['flops'] == m['flops'] else float('nan')
      mfu = tflops / peak_tflops if peak_tflops else float('nan')
      speed = '' if m['framework'] == 'segjax' or seg is None else f"{t / seg['step_s']:.2f}x"
      peak = m.get('peak_bytes')
      lines.append(
          f"| {label} | {m['framework']} | {r['batch']} | {r['hw'][0]}x{r['hw'][1]} | "
          f"{t:.4f} | {r['batch'] / t:.1f} | {_fmt(m.get('compile_s'), '.1f')} | "
          f"{_fmt(peak / 2**30 if peak else None, '.2f')} | {m['flops'] / 1e9:.1f} | "
          f"{_fmt(tflops, '.2f')} | {_fmt(mfu * 100 if mfu == mfu else None, '.1f')}"
          f"{'%' if mfu == mfu else ''} | {speed} |")
  return '\n'.join(lines)


def main(argv=None) -> dict | int:
  platform.configure_xla_cpu()  # Before jax creates a backend.
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--rows', default='unet_mnv2:8:128,dlv3p_mnv2:8:256')
  p.add_argument('--peers', default='torch', help=f'comma list from {PEERS}, or "" for none')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--width', type=float, default=1.0,
                 help='MobileNetV2 width multiplier (both frameworks; for tiny test runs)')
  p.add_argument('--steps', type=int, default=5, help='consecutive steps per timed run')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--max_batch', type=int, default=0,
                 help='>0: also find the largest batch (doubling, up to this) that fits the '
                      'torch eager peer')
  p.add_argument('--json', default='', help='write raw numbers here (after every row)')
  p.add_argument('--worker_timeout', type=int, default=0,
                 help='seconds each measurement (one framework, one row) may take, compile '
                      'included; 0 = no limit. A lent GPU has a fixed lease: set it there.')
  p.add_argument('--profile', default='',
                 help='trace 3 segjax steps per row into this folder and print the ops that '
                      'take the most device time')
  p.add_argument('--worker', default='', help=argparse.SUPPRESS)
  p.add_argument('--worker_row', default='{}', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    return worker(args)

  peers = [x for x in args.peers.split(',') if x]
  for x in peers:
    if x not in PEERS:
      raise SystemExit(f'--peers: {x!r} is not one of {PEERS}')
  rows = [parse_row(r) for r in args.rows.split(',') if r]
  peak = spawn('matmul', {}, args)
  peak_tflops = peak.get('tflops')
  print(f"matmul peak ({peak.get('dtype')}, n={peak.get('n')}) on {peak.get('device')}: "
        f"{_fmt(peak_tflops, '.2f')} TFLOP/s", flush=True)
  results = []
  for row in rows:
    runs = []
    if args.max_batch:
      mb = spawn('max_batch', row, args)
      print(f"{row['name']}: largest torch batch (doubling from {row['batch']}): "
            f"{mb.get('max_batch')} (fit: {mb.get('tried')})", flush=True)
      if mb.get('max_batch'):
        row['torch_max_batch'] = row['batch'] = mb['max_batch']
    for kind in ['segjax'] + peers:
      m = spawn(kind, row, args)
      runs.append(m)
      if 'error' in m:
        print(f"{row['name']} {kind}: ERROR {m['error'][-600:]}", flush=True)
      else:
        print(f"{row['name']} {kind}: {m['step_s']:.4f} s/step (runs: "
              f"{', '.join(f'{t:.4f}' for t in m['times'])}), loss {m['loss']:.3f}, "
              f"params {m['params']:,}", flush=True)
        for name, ms in (m.get('profile') or {}).get('per_step_ms', {}).items():
          print(f'  profile {ms:9.2f} ms/step  {name[:150]}', flush=True)
    results.append(dict(row, runs=runs))
    info = dict(date=time.strftime('%Y-%m-%d'), command=' '.join(sys.argv), dtype=args.dtype,
                steps=args.steps, repeats=args.repeats, warmup=args.warmup, matmul=peak,
                results=results, host_cpus=os.cpu_count())
    if args.json:
      Path(args.json).write_text(json.dumps(info, indent=1))
  print()
  print(table(results, peak_tflops))
  return info


if __name__ == '__main__':
  out = main()
  sys.exit(out if isinstance(out, int) else 0)
