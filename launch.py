r"""segjax entry point: flags -> config -> train, evaluate, or a sweep.

  python launch.py --config=configs/deeplabv3plus.py          # -> runs/deeplabv3plus
  python launch.py --config=configs/deeplabv3plus.py:runlocal --workdir=runs/x
  python launch.py --config=configs/deeplabv3plus.py --mode=eval --config.eval.split=test
  python launch.py --config=configs/deeplabv3plus.py:runlocal --sweep

Running the same command again resumes. The other jobs (predict, export, TPU
VMs, sweep launch commands, ...) are tools: `segjax --help`. This file is
intentionally short; the logic is in the library.
"""

from absl import flags
import jax
from ml_collections import config_flags

from segjax import cli
from segjax import config as config_lib
from segjax import sharding
from segjax import sweep
from segjax import train
from segjax.tools import evaluate
from segjax.tools import report
from segjax.tools import results

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with arguments: configs/x.py:a=1,b', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config name>'
                               '[_<config argument>]); rerunning resumes it.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'train (resumes from --workdir) '
                          'or eval (a checkpoint of --workdir, with its own config).')
_OUT = flags.DEFINE_string('out', None, '--mode=eval: where result files go (default: workdir).')
_SWEEP = flags.DEFINE_bool('sweep', False, "Train every point of the config file's "
                           'get_sweep(arg), each in <workdir>/<point name>.')
_DISTRIBUTED = flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                                 'jax.distributed: see segjax.sharding.distributed_args.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', '', 'jax.distributed host:port.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'jax.distributed process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'jax.distributed process index.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  sharding.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value, mode=_DISTRIBUTED.value)
  config_arg = config_flags.get_config_filename(flags.FLAGS['config'])
  overrides = dict(config_flags.get_override_values(flags.FLAGS['config']))
  workdir = cli.resolve_workdir(_WORKDIR.value, config_arg)
  if _MODE.value == 'eval':
    if _SWEEP.value:
      raise cli.UsageError('--sweep trains; it cannot be combined with --mode=eval')
    return 0 if evaluate.main_run(workdir, overrides, out=_OUT.value) else 1
  config = config_lib.validate(_CONFIG.value)
  if jax.process_index() == 0:
    print(f'Writing to {workdir}', flush=True)
  with cli.removed_on_failure(workdir):
    if _SWEEP.value:
      status = sweep.run_from_file(config, workdir, config_arg, overrides)
      if status == 'done' and jax.process_index() == 0:
        print(results.format_markdown(results.collect(workdir)), flush=True)
      return 1 if status == 'failed' else 0
    if train.run(config, workdir) and jax.process_index() == 0:
      print(f'Report: {report.write_report(workdir)}', flush=True)
  return 0


if __name__ == '__main__':
  cli.run(main)
