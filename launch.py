r"""segjax entry point: flags -> config -> train, or evaluate a checkpoint.

  python launch.py --config=configs/deeplabv3plus.py:runlocal --workdir=runs/x
  python launch.py --config=configs/deeplabv3plus.py:runlocal --workdir=runs/x \
      --mode=eval --config.eval.checkpoint=best --config.eval.split=val
  python launch.py --config=configs/deeplabv3plus.py:runlocal --workdir=runs/x \
      --mode=predict --input=photos/ --output=runs/x/predictions
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from segjax import config as config_lib
from segjax import evaluate
from segjax import sharding
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
_COORDINATOR = flags.DEFINE_string('coordinator_address', '', 'jax.distributed coordinator.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'jax.distributed process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'jax.distributed process index.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # orbax and grain log every save/restore at INFO; -v 0 brings that back.
    logging.set_verbosity(logging.WARNING)
  sharding.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value)
  config = config_lib.validate(_CONFIG.value)
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
    from segjax import predict  # pylint: disable=g-import-not-at-top
    summary = predict.run(_WORKDIR.value, _INPUT.value, _OUTPUT.value,
                          checkpoint=str(config.eval.checkpoint), alpha=_ALPHA.value,
                          mc_samples=int(config.eval.mc_samples))
    if not summary['predicted']:  # Failures of some files are counted, not fatal.
      raise SystemExit(1)


if __name__ == '__main__':
  app.run(main)
