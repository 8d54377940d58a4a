r"""Peak temporary memory of the train step with and without rematerialisation
and gradient accumulation, from XLA's buffer assignment
(`compiled.memory_analysis().temp_size_in_bytes`; no device needed).

  python benchmarks/remat_memory.py [--backbone=resnet50] [--batch=4] [--size=128]

Rows: model.remat none / blocks with each --policies entry, and
grad_accum_steps k (no remat). Temp bytes are the activations and other
scratch XLA keeps alive at once; arguments (parameters, optimizer state, the
batch) are the same for every row and reported once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks import train_throughput as tt  # noqa: E402
from segjax import optim, sharding, train  # noqa: E402


def measure(config) -> dict:
  model = train.build_model(config)
  tx, schedule = optim.make_optimizer(config)
  mesh = sharding.make_mesh()
  state = jax.eval_shape(lambda: train.init_state(config, model, tx, mesh))
  h, w = config.data.crop_size
  b = config.batch_size
  batch = {'image': jax.ShapeDtypeStruct((b, h, w, 3), jax.numpy.uint8),
           'label': jax.ShapeDtypeStruct((b, h, w), jax.numpy.int32)}
  step = jax.jit(train.make_train_step(config, model, tx, schedule), donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, jax.random.key(0)).compile()
  mem = compiled.memory_analysis()
  return {'temp_bytes': int(mem.temp_size_in_bytes),
          'argument_bytes': int(mem.argument_size_in_bytes),
          'compile_s': time.perf_counter() - t0}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--backbone', default='resnet50')
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--size', type=int, default=128)
  p.add_argument('--policies', default='nothing_saveable,dots_saveable')
  p.add_argument('--accum', default='2')
  p.add_argument('--json', default='')
  args = p.parse_args(argv)
  row = dict(tt.ROWS['dlv3p_r50'], name='dlv3p_r50', batch=args.batch,
             hw=(args.size, args.size), backbone=args.backbone)
  rows = []
  variants = [('none', None, 1)] + [('blocks', pol, 1) for pol in args.policies.split(',') if pol]
  variants += [('none', None, int(k)) for k in args.accum.split(',') if k]
  for remat, policy, k in variants:
    c = tt.segjax_config(row, 'float32', 1.0)
    c.model.remat = remat
    if policy:
      c.model.remat_policy = policy
    c.grad_accum_steps = k
    r = measure(c)
    r.update(remat=remat, policy=policy or '-', accum=k)
    rows.append(r)
    print(f"remat={remat} policy={policy or '-'} accum={k}: temp "
          f"{r['temp_bytes'] / 2**20:.1f} MiB (compile {r['compile_s']:.0f} s)", flush=True)
  base = rows[0]['temp_bytes']
  print(f'\nDeepLabV3+-{args.backbone}, batch {args.batch}, {args.size}x{args.size}, float32, '
        f'{jax.devices()[0].platform}; arguments {rows[0]["argument_bytes"] / 2**20:.1f} MiB\n')
  print('| model.remat | policy | grad_accum_steps | temp MiB | vs none |')
  print('|---|---|---:|---:|---:|')
  for r in rows:
    print(f"| {r['remat']} | {r['policy']} | {r['accum']} | {r['temp_bytes'] / 2**20:.1f} | "
          f"{r['temp_bytes'] / base:.2f}x |")
  common.write_json(args.json, {'rows': rows, 'args': vars(args)})
  return 0


if __name__ == '__main__':
  sys.exit(main())
