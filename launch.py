r"""segjax entry point: flags -> config -> train, or evaluate a checkpoint.

  python launch.py --config=configs/deeplabv3plus.py:runlocal --workdir=runs/x
  python launch.py --config=configs/deeplabv3plus.py:runlocal --workdir=runs/x \
      --mode=eval --config.eval.checkpoint=best --config.eval.split=val
  python launch.py --config=configs/deeplabv3plus.py:runlocal --workdir=runs/x \
      --mode=predict --input=photos/ --output=runs/x/predictions
  python launch.py --config=configs/deeplabv3plus.py:runlocal --workdir=runs/sweep --sweep
  python launch.py --config=configs/deeplabv3plus.py --workdir=/mnt/runs/sweep --sweep \
      --emit=tpu --tpu_name=my-tpu --tpu_zone=us-central2-b
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from segjax import config as config_lib
from segjax import evaluate
from segjax import sharding
from segjax import sweep
from segjax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with arguments: configs/x.py:a=1,b', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and logs.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict'],
                          'train (resumes from workdir), eval (a checkpoint of workdir) or '
                          'predict (--input images with a checkpoint of workdir).')
_INPUT = flags.DEFINE_string('input', None, '--mode=predict: an image, a folder or a glob.')
_OUTPUT = flags.DEFINE_string('output', None, '--mode=predict: output folder.')
_ALPHA = flags.DEFINE_float('alpha', 0.5, '--mode=predict: mask weight in the overlays.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'on', 'off'],
    'jax.distributed: auto = with the flags below or JAX_COORDINATOR_ADDRESS/'
    'JAX_NUM_PROCESSES/JAX_PROCESS_ID when given, else on a detected Cloud TPU VM, '
    'SLURM or Open MPI job; on = always (jax detects the cluster); off = never.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', '',
                                   'jax.distributed coordinator host:port (process 0).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'jax.distributed process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'jax.distributed process index.')
_SWEEP = flags.DEFINE_bool(
    'sweep', False, "Train every point of the config file's get_sweep(arg), one after "
    'another, each in <workdir>/<point name>; finished points are skipped when rerun.')
_EMIT = flags.DEFINE_enum('emit', None, ['local', 'tpu'],
                          '--sweep: print one launch command per point instead of training '
                          '(local: python launch.py ...; tpu: gcloud ... ssh --worker=all).')
_TPU_NAME = flags.DEFINE_string('tpu_name', '', '--emit=tpu: the TPU VM or pod slice name.')
_TPU_ZONE = flags.DEFINE_string('tpu_zone', '', '--emit=tpu: its zone.')
_TPU_PROJECT = flags.DEFINE_string('tpu_project', None, '--emit=tpu: its project.')
flags.mark_flags_as_required(['config', 'workdir'])


def run_sweep(workdir: str) -> None:
  config_arg = config_flags.get_config_filename(flags.FLAGS['config'])
  base_overrides = dict(config_flags.get_override_values(flags.FLAGS['config']))
  path, arg = sweep.split_config_arg(config_arg)
  points = sweep.load_sweep(path, arg)
  if _EMIT.value:
    expanded = sweep.expand(_CONFIG.value, points)  # Every point's config is validated.
    for command in sweep.emit_commands(
        config_arg, workdir, expanded, emit=_EMIT.value, base_overrides=base_overrides,
        tpu_name=_TPU_NAME.value, tpu_zone=_TPU_ZONE.value, tpu_project=_TPU_PROJECT.value):
      print(command)
    return
  sweep.run(_CONFIG.value, workdir, points, config_arg=config_arg,
            base_overrides=base_overrides)
  if jax.process_index() == 0:
    from segjax.tools import results  # pylint: disable=g-import-not-at-top
    print(results.format_markdown(results.collect(workdir)), flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # orbax and grain log every save/restore at INFO; -v 0 brings that back.
    logging.set_verbosity(logging.WARNING)
  sharding.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value, mode=_DISTRIBUTED.value)
  if '://' in _WORKDIR.value:
    raise app.UsageError(f'--workdir={_WORKDIR.value}: URLs are not supported; on a pod slice '
                         'use a filesystem that every worker mounts at the same path (NFS, '
                         'Filestore, or a bucket mounted with gcsfuse)')
  if _EMIT.value and not _SWEEP.value:
    raise app.UsageError('--emit needs --sweep')
  config = config_lib.validate(_CONFIG.value)
  if _SWEEP.value:
    if _MODE.value != 'train':
      raise app.UsageError('--sweep trains; it cannot be combined with --mode=' + _MODE.value)
    try:
      run_sweep(_WORKDIR.value)
    except train.Preempted as e:
      print(e, flush=True)
    except sweep.SweepError as e:
      print(f'ERROR: {e}', file=sys.stderr, flush=True)
      raise SystemExit(1) from e
    return
  if _MODE.value == 'train':
    try:
      train.train_and_evaluate(config, _WORKDIR.value)
    except train.Preempted as e:
      # The checkpoint is complete: exit 0, as a preempted VM's restart script expects.
      print(e, flush=True)
      return
  elif _MODE.value == 'eval':
    evaluate.run(config, _WORKDIR.value)
  else:
    if not _INPUT.value or not _OUTPUT.value:
      raise app.UsageError('--mode=predict needs --input and --output')
    from segjax.tools import predict  # pylint: disable=g-import-not-at-top
    summary = predict.run(_WORKDIR.value, _INPUT.value, _OUTPUT.value,
                          checkpoint=str(config.eval.checkpoint), alpha=_ALPHA.value,
                          mc_samples=int(config.eval.mc_samples))
    if not summary['predicted']:  # Failures of some files are counted, not fatal.
      raise SystemExit(1)


if __name__ == '__main__':
  app.run(main)
