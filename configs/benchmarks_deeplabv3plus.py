r"""DeepLabV3+ ResNet-50/101 (output stride 8) on Cityscapes, ADE20K and Pascal
VOC 2012 + SBD with mmsegmentation's published recipes (docs/benchmarks.md).

Arguments (after ':' in --config, comma-separated):
  dataset=NAME     cityscapes (default) | ade20k | voc_aug
  backbone=NAME    resnet50 (default) | resnet101
  iters=N          run length: 40k | 80k (Cityscapes), 80k | 160k (ADE20K),
                   20k | 40k (VOC); default 80k, 80k, 40k; '40000' works too
  tta              evaluate with flips and scales 0.5..1.75 (the ms+flip column)
  runlocal         shrink the run for a 2-core CPU (crop 256, batch 4, 300 steps):
                   a look at the data, not a result

  segjax convert_weights --from=torchvision --arch=resnet50 \
      --weights=resnet50-0676ba61.pth --out=weights/resnet50
  segjax check_data --config=configs/benchmarks_deeplabv3plus.py:dataset=cityscapes \
      --config.data.root=data/cityscapes
  python launch.py --config=configs/benchmarks_deeplabv3plus.py:dataset=cityscapes,iters=80k \
      --config.data.root=data/cityscapes --config.model.pretrained=weights/resnet50 \
      --workdir=runs/dlv3p_r50_cityscapes_80k

The recipe, from mmsegmentation's configs/deeplabv3plus/
deeplabv3plus_r{50,101}-d8_{512x1024_{40,80}k_cityscapes, 512x512_{80,160}k_ade20k,
512x512_{20,40}k_voc12aug}.py and their bases (_base_/models/deeplabv3plus_r50-d8.py,
_base_/datasets/{cityscapes,ade20k,pascal_voc12_aug}.py, _base_/schedules/):
  * ResNet at output stride 8 (dilations 2 and 4 in the last two stages),
    ASPP rates 12/24/36 with 512 channels, separable, image pooling, dropout
    0.1; decoder: the stride-4 feature projected to 48 channels, two 3x3
    separable convolutions of 512 channels; an auxiliary FCN head (256
    channels) on stage 3 whose loss counts 0.4;
  * SGD, lr 0.01, momentum 0.9, weight decay 5e-4 (L2 on the gradient, as
    torch), poly decay power 0.9 to 1e-4 (PolyLR eta_min), no warm-up;
  * batch 8 of 512x1024 crops (Cityscapes; 4 GPUs x 2) or 16 of 512x512
    (ADE20K, VOC; 4 GPUs x 4); random rescale 0.5..2.0, crop, flip,
    photometric jitter; cross-entropy, ignore label 255;
  * evaluation on whole images (mmsegmentation's test_cfg mode='whole' for
    these crops; its 769x769 Cityscapes configs slide 769 windows by 513).

Published (mmsegmentation model zoo, configs/deeplabv3plus/README.md, mIoU
single scale / ms+flip): Cityscapes val R-50 40k 79.61/81.01, 80k 80.09/81.13;
R-101 40k 80.21/81.82, 80k 80.97/82.03. ADE20K val R-50 80k 42.72/43.75, 160k
43.95/44.93; R-101 80k 44.60/46.06, 160k 45.47/46.35. VOC12-aug val R-50 20k
75.93/77.50, 40k 76.81/77.57; R-101 20k 77.22/78.59, 40k 78.62/79.53.

Where this differs from mmsegmentation (stated in docs/benchmarks.md too):
  * torchvision-style ResNet (7x7 stem, ImageNet weights from torchvision)
    where mmsegmentation uses ResNetV1c (three 3x3 stem convolutions, its own
    ImageNet weights) with contract_dilation;
  * BatchNorm statistics per device (mmsegmentation: SyncBN over 4 GPUs);
  * the random rescale is relative to the stored size (mmsegmentation
    rescales relative to 2048x1024 / 2048x512 keeping the ratio) and has no
    cat_max_ratio=0.75 crop retry; the colour jitter approximates
    PhotoMetricDistortion (always on instead of each part with probability
    0.5, brightness multiplicative instead of +-32);
  * ADE20K and VOC are evaluated at their stored size (mmsegmentation resizes
    to fit 2048x512 first).
"""

from configs import common
from segjax import config as config_lib

_ITERS = {'cityscapes': (40000, 80000), 'ade20k': (80000, 160000), 'voc_aug': (20000, 40000)}
_DEFAULT_ITERS = {'cityscapes': 80000, 'ade20k': 80000, 'voc_aug': 40000}
_BATCH = {'cityscapes': 8, 'ade20k': 16, 'voc_aug': 16}
# mmsegmentation's model zoo (configs/deeplabv3plus/README.md): (single scale,
# ms+flip) val mIoU, by (dataset, backbone, iterations).
PUBLISHED = {
    ('cityscapes', 'resnet50', 40000): (79.61, 81.01),
    ('cityscapes', 'resnet50', 80000): (80.09, 81.13),
    ('cityscapes', 'resnet101', 40000): (80.21, 81.82),
    ('cityscapes', 'resnet101', 80000): (80.97, 82.03),
    ('ade20k', 'resnet50', 80000): (42.72, 43.75),
    ('ade20k', 'resnet50', 160000): (43.95, 44.93),
    ('ade20k', 'resnet101', 80000): (44.60, 46.06),
    ('ade20k', 'resnet101', 160000): (45.47, 46.35),
    ('voc_aug', 'resnet50', 20000): (75.93, 77.50),
    ('voc_aug', 'resnet50', 40000): (76.81, 77.57),
    ('voc_aug', 'resnet101', 20000): (77.22, 78.59),
    ('voc_aug', 'resnet101', 40000): (78.62, 79.53),
}


def _iters(text: str) -> int:
  text = text.strip().lower()
  try:
    return int(text[:-1]) * 1000 if text.endswith('k') else int(text)
  except ValueError:
    raise ValueError(f"config argument iters={text!r} is not a number of steps like '80k' "
                     'or 80000') from None


def get_config(arg=None):
  a = common.parse_arg(arg, dataset='cityscapes', backbone='resnet50', iters='', tta=False,
                       runlocal=False)
  if a.dataset not in _ITERS:
    raise ValueError(f'config argument dataset={a.dataset!r} is not one of {tuple(_ITERS)}')
  if a.backbone not in ('resnet50', 'resnet101'):
    raise ValueError(f"config argument backbone={a.backbone!r} is not 'resnet50' or "
                     "'resnet101'")
  iters = _iters(a.iters) if a.iters else _DEFAULT_ITERS[a.dataset]
  if iters not in _ITERS[a.dataset]:
    raise ValueError(f'config argument iters={a.iters!r}: the published {a.dataset} recipes '
                     f'run {[f"{n // 1000}k" for n in _ITERS[a.dataset]]}')
  c = config_lib.base_config()
  common.dataset(c, a.dataset, a.runlocal)
  c.model.name = 'deeplabv3plus'
  c.model.backbone = a.backbone
  c.model.output_stride = 8
  # mmsegmentation's DepthwiseSeparableASPPHead: channels=512 for ASPP and decoder.
  c.model.kwargs.aspp_channels = 512
  c.model.kwargs.decoder_channels = 512
  # The auxiliary FCNHead on stage 3: 256 channels, dropout 0.1, loss weight 0.4.
  c.model.kwargs.aux_head = True
  c.model.kwargs.aux_channels = 256
  c.loss.aux_weight = 0.4
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  # mmsegmentation's SGD (no paramwise_cfg) decays every leaf, norms and biases too.
  c.optimizer.decay_norms_and_biases = True
  c.schedule.name = 'poly'
  c.schedule.power = 0.9
  c.schedule.end_lr_factor = 1e-4 / 0.01  # PolyLR eta_min=1e-4.
  c.schedule.warmup_steps = 0
  c.loss.name = 'ce'
  c.eval.mode = 'whole'
  if a.tta:
    c.eval.scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    c.eval.flip = True
  if a.runlocal:
    c.model.kwargs.aspp_channels = 128
    c.model.kwargs.decoder_channels = 128
  else:
    c.batch_size = _BATCH[a.dataset]
    c.total_steps = iters
    # mmsegmentation evaluates and saves every tenth of the run.
    c.eval_every = c.checkpoint_every = iters // 10
  return c
