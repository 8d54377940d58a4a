r"""DeepLabV3+ (MobileNetV2 or Xception-65 backbone) on synthetic, CamVid or ISBI data.

Arguments (after ':' in --config, comma-separated):
  runlocal          shrink the run for a 2-core CPU (minutes, not hours)
  dataset=NAME      synthetic (default, offline) | camvid | isbi | pets
  backbone=NAME     mobilenetv2 (default) | xception65
  output_stride=N   16 (default) or 8

  python launch.py --config=configs/deeplabv3plus.py:runlocal --workdir=runs/dlv3p
  python launch.py --config=configs/deeplabv3plus.py:dataset=camvid,runlocal \
      --config.data.root=../shared/data/camvid --workdir=runs/camvid
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
  c.optimizer.name = 'adamw'
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'poly'
  c.augment.hflip = True

  if a.dataset == 'synthetic':
    c.data.synthetic_size = (64, 64) if a.runlocal else (128, 128)
    c.data.crop_size = c.data.synthetic_size
    c.data.synthetic_train_examples = 2000 if a.runlocal else 10000
    c.data.synthetic_val_examples = 200 if a.runlocal else 500
    c.batch_size = 16
    c.total_steps = 600 if a.runlocal else 5000
    c.optimizer.lr = 2e-3
    c.schedule.warmup_steps = 30 if a.runlocal else 200
    if a.runlocal:
      c.model.width_multiplier = 0.35
  elif a.dataset == 'camvid':
    c.augment.scale_range = (0.5, 2.0)
    c.augment.brightness = c.augment.contrast = c.augment.saturation = 0.2
    if a.runlocal:
      # Half resolution (180x240), small model, 144x192 crops so that ~1400
      # steps fit in 20 minutes on a 2-core CPU. Square roots of the published
      # median-frequency class weights: the full weights (up to 9.6) made this
      # short run over-predict SignSymbol and Pedestrian (val mIoU 0.32).
      c.data.resize = (180, 240)
      c.data.crop_size = (144, 192)
      c.model.width_multiplier = 0.5
      c.loss.class_weights = tuple(round(w**0.5, 4) for w in common.CAMVID_CLASS_WEIGHTS)
      c.batch_size = 8
      c.total_steps = 1400
      c.optimizer.lr = 2e-3
      c.schedule.warmup_steps = 50
      c.eval_every = 700
    else:
      c.data.crop_size = (352, 480)
      c.batch_size = 16
      c.total_steps = 20000
      c.optimizer.lr = 1e-3
      c.schedule.warmup_steps = 500
      c.eval_every = 2000
  elif a.dataset == 'isbi':
    c.augment.vflip = True
    c.augment.rotate_degrees = 15.0
    c.augment.scale_range = (0.8, 1.25)
    c.augment.brightness = c.augment.contrast = 0.1
    if a.runlocal:
      c.data.crop_size = (128, 128)
      c.model.width_multiplier = 0.5
      c.batch_size = 8
      c.total_steps = 600
      c.eval_every = 200
    else:
      c.data.crop_size = (256, 256)
      c.batch_size = 8
      c.total_steps = 4000
      c.eval_every = 500
    c.optimizer.lr = 2e-3
    c.schedule.warmup_steps = 50
    c.eval.batch_size = 5
  elif a.dataset == 'pets':
    c.data.resize = (128, 128)
    c.data.crop_size = (128, 128)
    c.batch_size = 64
    c.total_steps = 1140
    c.eval_every = 570

  if a.runlocal:
    c.log_every = 25
    c.eval_every = min(c.eval_every, c.total_steps)
  c.checkpoint_every = c.eval_every
  c.eval.batch_size = c.eval.batch_size if a.dataset == 'isbi' else 8
  return c
