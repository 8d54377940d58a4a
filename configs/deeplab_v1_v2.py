r"""DeepLab v1 (VGG-16, LargeFOV) and v2 (ResNet-101, ASPP-L) with the fully
connected CRF at evaluation (the DeepLab write-up; docs/models_reference.md).

Networks: `deeplabv1` (VGG-16 with pool4/pool5 at stride 1, conv5 dilation 2,
fc6 3x3 rate 12 x 1024, fc7 1x1 x 1024, dropout 0.5) and `deeplabv2`
(ResNet-101 at output stride 8, the sum of four 3x3 classifiers at rates 6,
12, 18, 24). Training follows the papers: SGD with momentum 0.9, weight
decay 5e-4, poly decay (power 0.9), base lr 1e-3 (v1) / 2.5e-4 (v2), batch
10 (v2; v1 used 20); runs on the synthetic set, CamVid or ISBI otherwise use
the shared per-dataset crops and lengths (configs/common.py). The CRF
(config eval.crf, DeepLab's VGG-16 settings) refines the probabilities at
evaluation and prediction with `crf`.

Arguments:
  version=N        1 (default, deeplabv1) or 2 (deeplabv2)
  dataset=NAME     synthetic (default) | camvid | isbi | pets | folder
  backbone=NAME    deeplabv2 only: resnet101 (default) | resnet50 | resnet152
  crf              the dense CRF at evaluation/prediction (exact sum; set
                   --config.eval.crf.source_stride=8 for full-size images)
  runlocal         shrink the run for a 2-core CPU: AdamW (weight decay 1e-4) at
                   the TRAINING table's rate, batch 8, 300 steps

  segjax convert_weights --from=torchvision --arch=vgg16 --weights=vgg16-397923af.pth \
      --out=weights/vgg16
  python launch.py --config=configs/deeplab_v1_v2.py:dataset=camvid,crf \
      --config.data.root=/path/to/camvid --config.model.pretrained=weights/vgg16 \
      --config.eval.crf.source_stride=8 --workdir=runs/deeplabv1_camvid
  python launch.py --config=configs/deeplab_v1_v2.py:version=2,runlocal --workdir=runs/dlv2
"""

from configs import common
from segjax import config as config_lib

# Papers: DeepLab v1 (Chen et al., 2015) and v2 (Chen et al., 2017).
_BASE_LR = {1: 1e-3, 2: 2.5e-4}
_WEIGHT_DECAY = 5e-4


def get_config(arg=None):
  a = common.parse_arg(arg, version=1, dataset='synthetic', backbone='resnet101', crf=False,
                       runlocal=False)
  if a.version not in (1, 2):
    raise ValueError(f'config argument version={a.version} is not 1 or 2')
  c = config_lib.base_config()
  common.dataset(c, a.dataset, a.runlocal)
  c.model.name = f'deeplabv{a.version}'
  c.model.backbone = 'vgg16' if a.version == 1 else a.backbone
  c.model.output_stride = 8
  c.schedule.name = 'poly'
  c.schedule.power = 0.9
  if a.runlocal:
    c.optimizer.name = 'adamw'
    c.optimizer.weight_decay = 1e-4
    c.batch_size = 8
    c.total_steps = 300
    c.eval_every = c.checkpoint_every = min(c.eval_every, 300)
  else:
    c.optimizer.name = 'sgd'
    c.optimizer.lr = _BASE_LR[a.version]
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = _WEIGHT_DECAY
    if a.version == 2:
      c.batch_size = 10
  c.eval.crf.enabled = a.crf
  return c
