r"""A config file for tests that launch real runs: a tiny DeepLabV3+ on 32x32 synthetic shapes.

  python launch.py --config=tests/tiny_run.py:steps=4 --workdir=DIR
  python launch.py --config=tests/tiny_run.py --sweep --workdir=DIR

Arguments: steps=N (total_steps, default 4), eval_every=N (default: steps),
lr=X (SGD with momentum, default 0.05), model=deeplabv3plus (default) | unet
(MobileNetV2 x0.35 encoder frozen, 16-filter decoder).
get_sweep is a 3-point sweep (two learning rates, one of them also with a
different seed) used by tests/test_sweep.py.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)


def _args(arg):
  from configs import common  # pylint: disable=g-import-not-at-top
  return common.parse_arg(arg, steps=4, eval_every=0, lr=0.05, model='deeplabv3plus')


def get_config(arg=None):
  from tests.test_train import tiny_config  # pylint: disable=g-import-not-at-top
  a = _args(arg)
  return tiny_config(**{'total_steps': a.steps, 'eval_every': a.eval_every or a.steps,
                        'checkpoint_every': 2, 'optimizer.name': 'sgd',
                        'optimizer.lr': a.lr, 'eval.num_panel_images': 0}, model=a.model)


def get_sweep(arg=None):
  del arg
  from segjax import sweep  # pylint: disable=g-import-not-at-top
  return sweep.chain(sweep.sweep('config.optimizer.lr', [0.05, 0.01]),
                     [{'config.optimizer.lr': 0.01, 'config.seed': 7}])
