r"""DeepLabV3 (Chen et al., 2017) on a dilated ResNet-50/101/152.

Multi-grid (1, 2, 4) in the last stage, ASPP with rates 6/12/18 at output
stride 16 (12/24/36 at 8) and image pooling, BatchNorm everywhere. With
`torchvision` the model is exactly torchvision's deeplabv3_resnet50/101
(output stride 8, no multi-grid, auxiliary FCN head on layer3), so weights
converted with `python -m segjax.tools.convert_weights --from=torchvision
--arch=deeplabv3_resnet50` load as the whole model.

Arguments:
  runlocal          shrink the run for a 2-core CPU
  dataset=NAME      synthetic (default) | camvid | isbi | pets | folder
  backbone=NAME     resnet50 (default) | resnet101 | resnet152
  output_stride=N   16 (default) or 8
  aux               add the auxiliary FCN head on layer3 (loss weight loss.aux_weight)
  torchvision       torchvision's layout: output stride 8, no multi-grid, aux head

The recipe (Chen et al. 2017): SGD with momentum 0.9, lr 0.007 at batch 16,
weight decay 1e-4, poly decay (power 0.9); crop, augmentation and run length per
dataset from configs/common.py's TRAINING table. runlocal: AdamW at the table's
rate, batch 8 and 300 steps (ResNet-50 is ~20x MobileNetV2-0.35's compute per
image).

  python launch.py --config=configs/deeplabv3.py:runlocal --workdir=runs/dlv3
  python -m segjax.tools.convert_weights --from=torchvision --arch=resnet50 --weights=resnet50.pth \
      --out=weights/resnet50
  python launch.py --config=configs/deeplabv3.py:dataset=camvid \
      --config.data.root=/path/to/camvid --config.model.pretrained=weights/resnet50 \
      --workdir=runs/dlv3_camvid
"""

from configs import common
from segjax import config as config_lib


def get_config(arg=None):
  a = common.parse_arg(arg, runlocal=False, dataset='synthetic', backbone='resnet50',
                       output_stride=16, aux=False, torchvision=False)
  c = config_lib.base_config()
  common.dataset(c, a.dataset, a.runlocal)
  c.model.name = 'deeplabv3'
  c.model.backbone = a.backbone
  c.model.output_stride = 8 if a.torchvision else a.output_stride
  if a.torchvision:
    c.model.kwargs.multi_grid = None
  c.model.kwargs.aux_head = a.aux or a.torchvision
  c.schedule.name = 'poly'
  c.schedule.power = 0.9
  c.optimizer.weight_decay = 1e-4
  if not a.runlocal:
    c.optimizer.name = 'sgd'
    c.optimizer.lr = 0.007
    c.optimizer.momentum = 0.9
  else:
    c.optimizer.name = 'adamw'
    c.batch_size = 8
    c.total_steps = 300
    c.eval_every = c.checkpoint_every = min(c.eval_every, 300)
  return c
