r"""A depthwise-separable residual FCN: residual blocks of three separable
convolutions (ELU) with separable shortcuts, max-pooling between stages, and
FCN-8-style fusion of the last three stages. Light enough to train from
scratch on a CPU.

Arguments:
  runlocal          shrink the run for a 2-core CPU
  dataset=NAME      synthetic (default) | camvid | isbi | pets

  python launch.py --config=configs/dsrfcn.py:runlocal --workdir=runs/dsrfcn
"""

from configs import common
from segjax import config as config_lib


def get_config(arg=None):
  a = common.parse_arg(arg, runlocal=False, dataset='synthetic')
  c = config_lib.base_config()
  common.set_dataset(c, a.dataset)
  c.model.name = 'dsrfcn'
  c.model.backbone = 'dsrfcn'
  c.model.output_stride = 32
  common.recipe(c, a.dataset, a.runlocal)
  if a.runlocal and a.dataset != 'pets':
    c.model.width_multiplier = 0.5
  return c
