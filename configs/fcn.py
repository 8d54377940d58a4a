r"""FCN-32s / 16s / 8s (Long et al., 2015) on VGG16 or ResNet-50/101.

VGG16: fc6/fc7 as convolutions (loadable from the ImageNet classifier),
score layers on pool4 (16s) and pool3 (8s). ResNet: torchvision's FCN head
(3x3 conv, BN, ReLU, dropout, 1x1) on the last stage with the same skip
fusion from the stride-16 and stride-8 stages. With `torchvision` the model
is exactly torchvision's fcn_resnet50 (output stride 8, no skips, aux head).

Arguments:
  runlocal          shrink the run for a 2-core CPU
  dataset=NAME      synthetic (default) | camvid | isbi | pets | folder
  variant=V         8s (default) | 16s | 32s
  backbone=NAME     vgg16 (default) | resnet50 | resnet101
  upsample=MODE     bilinear (default) | transposed (learnable, bilinear init, as the paper)
  torchvision       torchvision's fcn_resnet50/101 layout (needs backbone=resnet50|101)

The recipe (torchvision's segmentation reference): SGD with momentum 0.9, lr
0.02 at batch 32 (0.01 at 16), weight decay 1e-4, poly decay (power 0.9); crop,
augmentation and run length per dataset from configs/common.py's TRAINING
table. runlocal: AdamW at the table's rate, batch 8 and 300 steps.

  python launch.py --config=configs/fcn.py:runlocal --workdir=runs/fcn8s
  python launch.py --config=configs/fcn.py:variant=32s,backbone=resnet50 --workdir=runs/fcn32s
"""

from configs import common
from segjax import config as config_lib


def get_config(arg=None):
  a = common.parse_arg(arg, runlocal=False, dataset='synthetic', variant='8s',
                       backbone='vgg16', upsample='bilinear', torchvision=False)
  if a.variant not in ('8s', '16s', '32s'):
    raise ValueError(f'variant={a.variant!r} is not one of 8s, 16s, 32s')
  if a.torchvision and not a.backbone.startswith('resnet'):
    raise ValueError(f'torchvision needs backbone=resnet50|resnet101, got {a.backbone!r}')
  c = config_lib.base_config()
  common.dataset(c, a.dataset, a.runlocal)
  c.model.name = 'fcn32s' if a.torchvision else f'fcn{a.variant}'
  c.model.backbone = a.backbone
  c.model.output_stride = 8 if a.torchvision else 32
  c.model.kwargs.upsample = a.upsample
  if a.torchvision:
    c.model.kwargs.aux_head = True
  c.schedule.name = 'poly'
  c.schedule.power = 0.9
  c.optimizer.weight_decay = 1e-4
  if not a.runlocal:
    c.optimizer.name = 'sgd'
    c.optimizer.lr = 0.01
    c.optimizer.momentum = 0.9
  else:
    c.optimizer.name = 'adamw'
    c.batch_size = 8
    c.total_steps = 300
    c.eval_every = c.checkpoint_every = min(c.eval_every, 300)
  return c
