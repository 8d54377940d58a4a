r"""Converts a local torchvision / Keras / timm weights file for segjax.

  python -m segjax.tools.convert_weights --from=torchvision --arch=resnet50 \
      --weights=~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth --out=weights/resnet50
  python launch.py --config=configs/deeplabv3.py --workdir=runs/x \
      --config.model.pretrained=weights/resnet50

  python -m segjax.tools.convert_weights --list     # every (source, arch) and what it reproduces

The output directory holds an orbax checkpoint of {'params', 'batch_stats'}
and segjax_pretrained.json (kind 'backbone' or 'model', the peer, and the
config.model entries under which our model computes the peer's function).
No torch, Keras or timm is needed to convert: the files are read directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from segjax.models import convert as convert_lib


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m segjax.tools.convert_weights', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--from', dest='source', choices=convert_lib.SOURCES)
  parser.add_argument('--arch', help='peer architecture, e.g. resnet50, mobilenet_v2')
  parser.add_argument('--weights', help='local weights file (.pth, .safetensors, .h5)')
  parser.add_argument('--out', help='output directory (must not hold a conversion yet)')
  parser.add_argument('--list', action='store_true', help='list the converters and exit')
  args = parser.parse_args(argv)

  if args.list:
    for (source, arch), conv in sorted(convert_lib.converters().items()):
      print(f'--from={source:12s} --arch={arch:22s} {conv.kind:9s} {conv.peer}; '
            f'config.model: {json.dumps(convert_lib.config_entries(conv.model))}')
    return 0
  missing = [f'--{n}' for n, v in (('from', args.source), ('arch', args.arch),
                                   ('weights', args.weights), ('out', args.out)) if not v]
  if missing:
    parser.error(f'missing {", ".join(missing)} (or use --list)')
  try:
    variables, meta = convert_lib.convert(args.source, args.arch,
                                          os.path.expanduser(args.weights))
    out = convert_lib.save_pretrained(os.path.expanduser(args.out), variables, meta)
  except (convert_lib.ConversionError, ValueError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  n = sum(v.size for v in convert_lib.common.flatten(variables['params']).values())
  print(f'Wrote {out}: {meta["kind"]} {args.source}/{args.arch} ({meta["peer"]}), '
        f'{n:,} parameters.')
  entries = ', '.join(f'--config.model.{k}={v}' for k, v in meta['model'].items()
                      if k != 'kwargs')
  print(f'Use it with --config.model.pretrained={out}'
        + (f' and {entries}' if entries else '')
        + (f'; model kwargs {meta["model"]["kwargs"]}' if meta['model'].get('kwargs') else ''))
  return 0


if __name__ == '__main__':
  sys.exit(main())
