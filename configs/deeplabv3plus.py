r"""DeepLabV3+ (MobileNetV2 or Xception-65 backbone) on synthetic, CamVid, ISBI,
Pets or your own folder of images and masks.

Arguments (after ':' in --config, comma-separated):
  runlocal          shrink the run for a 2-core CPU (minutes, not hours)
  dataset=NAME      synthetic (default, offline) | camvid | isbi | pets | folder |
                    cityscapes | ade20k | voc | voc_aug | pascal_context | coco_stuff
                    (the benchmarks: docs/benchmarks.md; their published recipes
                    are configs/benchmarks_deeplabv3plus.py)
  backbone=NAME     mobilenetv2 (default) | xception65
  output_stride=N   16 or 8 (default 16; with dataset=camvid, configs/camvid.py's)

The recipe: AdamW (weight decay 1e-4), poly decay with linear warm-up, random
horizontal flips; crop, batch, run length, learning rate and warm-up per
dataset from configs/common.py's TRAINING table. dataset=camvid is
configs/camvid.py (recipe=full, or recipe=cpu with runlocal): one CamVid recipe.

  python launch.py --config=configs/deeplabv3plus.py:runlocal
  python launch.py --config=configs/deeplabv3plus.py:dataset=camvid,runlocal \
      --config.data.root=/path/to/camvid
  python launch.py --config=configs/deeplabv3plus.py:dataset=folder \
      --config.data.root=/path/to/my_data --config.data.num_classes=5

get_sweep(arg): learning rate x output stride, 4 points (launch.py --sweep).
"""

from configs import camvid
from configs import common
from segjax import config as config_lib


def get_config(arg=None):
  a = common.parse_arg(arg, runlocal=False, dataset='synthetic', backbone='mobilenetv2',
                       output_stride=0)
  if a.dataset == 'camvid':
    recipe = 'cpu' if a.runlocal else 'full'
    return camvid.get_config(f'recipe={recipe},backbone={a.backbone},'
                             f'output_stride={a.output_stride}')
  c = config_lib.base_config()
  common.dataset(c, a.dataset, a.runlocal)
  c.model.name = 'deeplabv3plus'
  c.model.backbone = a.backbone
  c.model.output_stride = a.output_stride or 16
  c.optimizer.name = 'adamw'
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'poly'
  if a.runlocal and a.backbone == 'mobilenetv2' and a.dataset != 'pets':
    # A narrow encoder so the CPU runs take minutes.
    c.model.width_multiplier = 0.35 if a.dataset == 'synthetic' else 0.5
  return c


def get_sweep(arg=None):
  """Learning rate x output stride (4 points) around this config's recipe:

  python launch.py --config=configs/deeplabv3plus.py:runlocal --sweep --workdir=runs/sweep
  segjax results --workdir=runs/sweep --sort=best_mIoU
  """
  # Imported here: loading a config stays free of the training stack.
  from segjax import sweep  # pylint: disable=g-import-not-at-top
  lr = get_config(arg).optimizer.lr
  return sweep.product({'config.optimizer.lr': [lr, lr / 3]},
                       {'config.model.output_stride': [16, 8]})
