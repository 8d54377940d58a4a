r"""DeepLabV3+ (MobileNetV2 or Xception-65 backbone) on synthetic, CamVid or ISBI data.

Arguments (after ':' in --config, comma-separated):
  runlocal          shrink the run for a 2-core CPU (minutes, not hours)
  dataset=NAME      synthetic (default, offline) | camvid | isbi | pets
  backbone=NAME     mobilenetv2 (default) | xception65
  output_stride=N   16 (default) or 8

  python launch.py --config=configs/deeplabv3plus.py:runlocal --workdir=runs/dlv3p
  python launch.py --config=configs/deeplabv3plus.py:dataset=camvid,runlocal \
      --config.data.root=../shared/data/camvid --workdir=runs/camvid

get_sweep(arg): learning rate x output stride, 4 points (launch.py --sweep).
"""

from configs import common
from segjax import config as config_lib


def get_config(arg=None):
  a = common.parse_arg(arg, runlocal=False, dataset='synthetic', backbone='mobilenetv2',
                       output_stride=16)
  c = config_lib.base_config()
  common.set_dataset(c, a.dataset)
  c.model.name = 'deeplabv3plus'
  c.model.backbone = a.backbone
  c.model.output_stride = a.output_stride
  common.recipe(c, a.dataset, a.runlocal)
  if a.runlocal and a.backbone == 'mobilenetv2' and a.dataset != 'pets':
    # A narrow encoder so the CPU runs take minutes.
    c.model.width_multiplier = 0.35 if a.dataset == 'synthetic' else 0.5
  return c


def get_sweep(arg=None):
  """Learning rate x output stride (4 points) around this config's recipe:

  python launch.py --config=configs/deeplabv3plus.py:runlocal --sweep --workdir=runs/sweep
  segjax results --workdir=runs/sweep --sort=best_mIoU
  """
  from segjax import sweep  # pylint: disable=g-import-not-at-top
  lr = get_config(arg).optimizer.lr
  return sweep.product({'config.optimizer.lr': [lr, lr / 3]},
                       {'config.model.output_stride': [16, 8]})
