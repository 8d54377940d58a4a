r"""A depthwise-separable residual FCN: residual blocks of three separable
convolutions (ELU) with separable shortcuts, max-pooling between stages, and
FCN-8-style fusion of the last three stages. Light enough to train from
scratch on a CPU.

Arguments:
  runlocal          shrink the run for a 2-core CPU
  dataset=NAME      synthetic (default) | camvid | isbi | pets | folder

The recipe: AdamW (weight decay 1e-4), poly decay with linear warm-up; crop,
augmentation, run length, learning rate and warm-up per dataset from
configs/common.py's TRAINING table; runlocal halves the width (not on pets).

  python launch.py --config=configs/dsrfcn.py:runlocal --workdir=runs/dsrfcn
"""

from configs import common
from segjax import config as config_lib


def get_config(arg=None):
  a = common.parse_arg(arg, runlocal=False, dataset='synthetic')
  c = config_lib.base_config()
  common.dataset(c, a.dataset, a.runlocal)
  c.model.name = 'dsrfcn'
  c.model.backbone = 'dsrfcn'
  c.model.output_stride = 32
  c.optimizer.name = 'adamw'
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'poly'
  if a.runlocal and a.dataset != 'pets':
    c.model.width_multiplier = 0.5
  return c
