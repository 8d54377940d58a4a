r"""List files for a dataset in the DLCV satellite layout (`xxxx_sat.jpg` beside
`xxxx_mask.png` in one folder per split), optionally after generating one.

  segjax prepare_dlcv --root=hw1_data/p2_data --splits=train,validation
  segjax prepare_dlcv --root=/tmp/sat --generate=16     # a generated set, no data needed

Writes `<root>/<split>.txt` ('<image> <mask>' per line, relative to root),
which configs/satellite_*.py read; see segjax/data/dlcv.py for the layout and
the palette.
"""

from __future__ import annotations

from absl import flags

from segjax import cli
from segjax.data import dlcv


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  flags.DEFINE_string('root', None, 'Folder holding the split folders.', required=True,
                      flag_values=fv)
  flags.DEFINE_list('splits', list(dlcv.SPLITS), 'Splits, comma-separated.', flag_values=fv)
  flags.DEFINE_integer('generate', 0, 'First write N generated pairs per split.',
                       flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  del argv
  splits = [s.strip() for s in fv.splits if s.strip()]
  if fv.generate:
    for split in splits:
      dlcv.write_generated(fv.root, split, fv.generate)
  for path in dlcv.write_list_files(fv.root, splits):
    print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  cli.run(main, define_flags)
