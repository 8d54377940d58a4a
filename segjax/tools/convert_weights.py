r"""Converts a local torchvision / Keras / timm weights file for segjax.

  segjax convert_weights --from=torchvision --arch=resnet50 \
      --weights=~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth --out=weights/resnet50
  python launch.py --config=configs/deeplabv3.py --workdir=runs/x \
      --config.model.pretrained=weights/resnet50

  segjax convert_weights --list     # every (source, arch) and what it reproduces

The output directory holds an orbax checkpoint of {'params', 'batch_stats'}
and segjax_pretrained.json (kind 'backbone' or 'model', the peer, and the
config.model entries under which our model computes the peer's function).
No torch, Keras or timm is needed to convert: the files are read directly.
"""

from __future__ import annotations

import json
import os

from absl import flags

from segjax import cli
from segjax.models import convert as convert_lib


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  flags.DEFINE_enum('from', None, list(convert_lib.SOURCES), 'The peer library of the file.',
                    flag_values=fv)
  flags.DEFINE_string('arch', None, 'Peer architecture, e.g. resnet50, mobilenet_v2.',
                      flag_values=fv)
  flags.DEFINE_string('weights', None, 'Local weights file (.pth, .safetensors, .h5).',
                      flag_values=fv)
  flags.DEFINE_string('out', None, 'Output directory (must not hold a conversion yet).',
                      flag_values=fv)
  flags.DEFINE_bool('list', False, 'List the converters and exit.', flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  del argv
  source = fv['from'].value
  if fv.list:
    for (src, arch), conv in sorted(convert_lib.converters().items()):
      print(f'--from={src:12s} --arch={arch:22s} {conv.kind:9s} {conv.peer}; '
            f'config.model: {json.dumps(convert_lib.config_entries(conv.model))}')
    return 0
  missing = [f'--{n}' for n, v in (('from', source), ('arch', fv.arch),
                                   ('weights', fv.weights), ('out', fv.out)) if not v]
  if missing:
    raise cli.UsageError(f'missing {", ".join(missing)} (or use --list)')
  variables, meta = convert_lib.convert(source, fv.arch, os.path.expanduser(fv.weights))
  out = convert_lib.save_pretrained(os.path.expanduser(fv.out), variables, meta)
  n = sum(v.size for v in convert_lib.common.flatten(variables['params']).values())
  print(f'Wrote {out}: {meta["kind"]} {source}/{fv.arch} ({meta["peer"]}), '
        f'{n:,} parameters.')
  entries = ', '.join(f'--config.model.{k}={v}' for k, v in meta['model'].items()
                      if k != 'kwargs')
  print(f'Use it with --config.model.pretrained={out}'
        + (f' and {entries}' if entries else '')
        + (f'; model kwargs {meta["model"]["kwargs"]}' if meta['model'].get('kwargs') else ''))
  return 0


if __name__ == '__main__':
  cli.run(main, define_flags)
