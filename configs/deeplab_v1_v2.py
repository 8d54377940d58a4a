r"""DeepLab v1 (LargeFOV, VGG-16) and DeepLab v2 (ResNet-101, ASPP-L)
(Chen et al., 2015 and 2017), without the CRF post-processing.

Arguments (after ':' in --config, comma-separated):
  runlocal          shrink the run for a 2-core CPU
  dataset=NAME      synthetic (default) | camvid | isbi | pets | folder
  variant=V         v2 (default): ResNet-101 at output stride 8, four summed
                    3x3 atrous classifiers (rates 6/12/18/24); v1: VGG-16
                    LargeFOV (fc6 3x3 rate 12, 1024 filters), output stride 8

The recipe (the DeepLab v2 paper, sec. 4): SGD with momentum 0.9, weight decay
5e-4, poly decay (power 0.9), base learning rate 2.5e-4 for ResNet-101 and
1e-3 for VGG-16 (v1's rate); crop, augmentation and run length per dataset from
configs/common.py's TRAINING table. runlocal: AdamW at the table's rate, batch 8
and 300 steps. ImageNet weights for the encoder:

  python -m segjax.convert --from=torchvision --arch=resnet101 \
      --weights=resnet101.pth --out=weights/resnet101
  python launch.py --config=configs/deeplab_v1_v2.py:dataset=camvid \
      --config.data.root=/path/to/camvid --config.model.pretrained=weights/resnet101
"""

from configs import common
from segjax import config as config_lib

VARIANTS = {'v1': ('deeplabv1', 'vgg16', 1e-3), 'v2': ('deeplabv2', 'resnet101', 2.5e-4)}


def get_config(arg=None):
  a = common.parse_arg(arg, runlocal=False, dataset='synthetic', variant='v2')
  if a.variant not in VARIANTS:
    raise ValueError(f'variant={a.variant!r}: expected one of {tuple(VARIANTS)}')
  name, backbone, lr = VARIANTS[a.variant]
  c = config_lib.base_config()
  common.dataset(c, a.dataset, a.runlocal)
  c.model.name = name
  c.model.backbone = backbone
  c.model.output_stride = 8
  c.schedule.name = 'poly'
  c.schedule.power = 0.9
  if not a.runlocal:
    c.optimizer.name = 'sgd'
    c.optimizer.lr = lr
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
  else:
    c.optimizer.name = 'adamw'
    c.optimizer.weight_decay = 1e-4
    c.batch_size = 8
    c.total_steps = 300
    c.eval_every = c.checkpoint_every = min(c.eval_every, 300)
  return c
