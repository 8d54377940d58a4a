r"""Print one launch command per point of a config file's sweep.

  segjax sweep --config=configs/deeplabv3plus.py --workdir=runs/sweep --emit=local
  segjax sweep --config=configs/deeplabv3plus.py --workdir=/mnt/runs/sweep --emit=tpu \
      --tpu_name=my-tpu --tpu_zone=us-central2-b

Every point's config is validated first. `--emit=local` prints
`python launch.py --config=... --workdir=<workdir>/<point> --config.<key>=...`
lines (run them on as many machines as you like); `--emit=tpu` prints the
`gcloud ... ssh --worker=all` command that runs each on a Cloud TPU VM (see
`segjax tpu`). To train the points one after another here instead:
`python launch.py --config=... --sweep`.
"""

from __future__ import annotations

import os
import shlex
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from segjax import cli
from segjax import config as config_lib
from segjax import sweep
from segjax.tools import tpu


def emit_commands(config_arg: str, workdir: str, points: Sequence[dict], *, emit: str,
                  base_overrides: dict | None = None, tpu_name: str = '', tpu_zone: str = '',
                  tpu_project: str | None = None) -> list[str]:
  """One shell command per point: 'local' (python launch.py ...) or 'tpu' (gcloud ssh
  --worker=all on a TPU VM, see segjax.tools.tpu)."""
  commands = []
  for p in points:
    args = sweep.launch_args(config_arg, os.path.join(workdir, p['name']), p['overrides'],
                             base_overrides)
    if emit == 'local':
      commands.append(shlex.join(['python', 'launch.py', *args]))
    elif emit == 'tpu':
      if not tpu_name or not tpu_zone:
        raise sweep.SweepError('--emit=tpu needs --tpu_name and --tpu_zone')
      try:
        argv = tpu.launch_argv(name=tpu_name, zone=tpu_zone, launch_args=args,
                               project=tpu_project)
      except ValueError as e:
        raise sweep.SweepError(f'--emit=tpu: {e}') from e
      commands.append(shlex.join(argv))
    else:
      raise sweep.SweepError(f"emit={emit!r}: expected 'local' or 'tpu'")
  return commands


def define_flags() -> None:
  """Defined only when run as a command, so tools can be imported side by side."""
  config_flags.DEFINE_config_file('config', None, 'Config file with a get_sweep(arg): '
                                  'configs/x.py:a=1,b', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Sweep directory (default: runs/<config name>'
                      '[_<config argument>]); point i trains in <workdir>/<point name>.')
  flags.DEFINE_enum('emit', 'local', ['local', 'tpu'], 'local: python launch.py ...; '
                    'tpu: gcloud ... ssh --worker=all on a TPU VM.')
  flags.DEFINE_string('tpu_name', '', '--emit=tpu: the TPU VM or pod slice name.')
  flags.DEFINE_string('tpu_zone', '', '--emit=tpu: its zone.')
  flags.DEFINE_string('tpu_project', None, '--emit=tpu: its project.')
  flags.mark_flags_as_required(['config'])


def main(argv) -> int:
  del argv
  f = flags.FLAGS
  config_arg = config_flags.get_config_filename(f['config'])
  base_overrides = dict(config_flags.get_override_values(f['config']))
  workdir = cli.resolve_workdir(f.workdir, config_arg)
  path, arg = sweep.split_config_arg(config_arg)
  expanded = sweep.expand(config_lib.validate(f.config), sweep.load_sweep(path, arg))
  for command in emit_commands(config_arg, workdir, expanded, emit=f.emit,
                               base_overrides=base_overrides, tpu_name=f.tpu_name,
                               tpu_zone=f.tpu_zone, tpu_project=f.tpu_project):
    print(command)
  return 0


if __name__ == '__main__':
  define_flags()
  cli.run(main)
