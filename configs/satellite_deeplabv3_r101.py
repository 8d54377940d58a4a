r"""Satellite land cover (DLCV layout, 6 classes + ignored 'unknown'): the
satellite write-up's DeepLabV3-ResNet101 (reported: val mIoU 0.7534).

Network: torchvision's deeplabv3_resnet101 layout (output stride 8, no
multi-grid; the write-up trains torchvision's model), so torchvision's
COCO-trained weights load as the whole model with the classifier's last
layer left at random init for the 6 classes. Recipe and arguments as
configs/satellite_fcn32s.py (its `recipe`).

  segjax prepare_dlcv --root=hw1_data/p2_data
  segjax convert_weights --from=torchvision --arch=deeplabv3_resnet101 \
      --weights=deeplabv3_resnet101_coco-586e9e4e.pth --out=weights/deeplabv3_r101
  python launch.py --config=configs/satellite_deeplabv3_r101.py --workdir=runs/sat_dlv3 \
      --config.data.root=hw1_data/p2_data --config.model.pretrained=weights/deeplabv3_r101 \
      --config.model.pretrained_exclude='params/classifier/*,params/aux*'
  segjax average_checkpoints --workdir=runs/sat_dlv3 --steps=lowest_loss:3 \
      --out=runs/sat_dlv3_ensemble --evaluate
"""

from configs import satellite_fcn32s


def get_config(arg=None):
  c, _ = satellite_fcn32s.recipe(arg)
  c.model.name = 'deeplabv3'
  c.model.backbone = 'resnet101'
  c.model.output_stride = 8
  c.model.kwargs.multi_grid = None
  c.model.kwargs.aux_head = False
  c.model.kwargs.padding = 'SYMMETRIC'  # torchvision's, as its converted weights expect.
  return c
