r"""Satellite land cover (DLCV layout, 6 classes + ignored 'unknown'): the
satellite write-up's VGG16-FCN32s (reported: val mIoU 0.6955 for the
ensemble of its three lowest-loss checkpoints).

Network: `fcn32s_sat`, the write-up's FCN-32s variant (ImageNet VGG16, 1x1
conv6/conv7 of 512, five 3x3 stride-2 transposed convolutions with BatchNorm
from 512 down to 32, a 1x1 classifier). Recipe (`recipe` below):
random 256x256 crops of the 512x512 tiles, horizontal and vertical flips,
rotation with probability 0.5 by one of 20/30/35/40/45/55/65/75 degrees,
batch 8, Adam at lr 1e-4 halved every 10 epochs for 30 epochs, cross entropy;
the three checkpoints with the lowest val loss are kept and averaged.

Arguments (after ':' in --config; configs/satellite_deeplabv3_r101.py takes the same):
  steps=N            total_steps (default 30 epochs)
  variant=V          32s (default, the write-up's) | 16s | 8s: fcn16s_sat /
                     fcn8s_sat add the pool4 (and pool3) skips (this file only)
  train_images=N     training tiles (default 2000, the DLCV train split)
  crops_per_image=N  random crops per tile per epoch (default 6: the write-up
                     crops each tile 6 times); one epoch is
                     train_images * crops_per_image / 8 steps

Commands (data: the DLCV hw1 p2 folders train/ and validation/):

  segjax prepare_dlcv --root=hw1_data/p2_data
  segjax convert_weights --from=torchvision --arch=vgg16 --weights=vgg16-397923af.pth \
      --out=weights/vgg16
  python launch.py --config=configs/satellite_fcn32s.py --workdir=runs/sat_fcn32s \
      --config.data.root=hw1_data/p2_data --config.model.pretrained=weights/vgg16
  segjax average_checkpoints --workdir=runs/sat_fcn32s --steps=lowest_loss:3 \
      --out=runs/sat_fcn32s_ensemble --evaluate
"""

from configs import common
from segjax import config as config_lib
from segjax.data import dlcv

ROTATION_ANGLES = (20.0, 30.0, 35.0, 40.0, 45.0, 55.0, 65.0, 75.0)


def recipe(arg=None, **more_args):
  """(config, parsed arguments): the data, augmentation, optimizer, schedule
  and checkpoint policy of both satellite configs; the model is the caller's,
  and so are `more_args` (its own arguments with their defaults)."""
  a = common.parse_arg(arg, steps=0, train_images=2000, crops_per_image=6, **more_args)
  if a.train_images < 1 or a.crops_per_image < 1:
    raise ValueError(f'train_images={a.train_images}, crops_per_image={a.crops_per_image}: '
                     'both must be >= 1')
  c = config_lib.base_config()
  dlcv.preset(c.data)
  c.data.crop_size = (256, 256)
  c.augment.hflip = True
  c.augment.vflip = True
  c.augment.scale_range = (1.0, 1.0)
  c.augment.rotate_angles = ROTATION_ANGLES
  c.augment.rotate_prob = 0.5
  c.loss.name = 'ce'
  # torch.optim.Adam defaults at lr 1e-4 (the write-up names only the rate).
  c.optimizer.name = 'adam'
  c.optimizer.lr = 1e-4
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0
  c.batch_size = 8
  steps_per_epoch = max(1, a.train_images * a.crops_per_image // c.batch_size)
  c.total_steps = a.steps or 30 * steps_per_epoch
  # StepLR(step_size=10 epochs, gamma=0.5).
  c.schedule.name = 'step'
  c.schedule.decay_factor = 0.5
  c.schedule.boundaries = tuple(float(e * steps_per_epoch) for e in (10, 20)
                                if e * steps_per_epoch < c.total_steps)
  if not c.schedule.boundaries:
    c.schedule.name = 'constant'
  c.eval_every = min(steps_per_epoch, c.total_steps)
  c.checkpoint_every = c.eval_every
  c.log_every = min(50, c.total_steps)
  c.eval.batch_size = 8
  # The ensemble: keep the three lowest-val-loss checkpoints for
  # `segjax average_checkpoints --steps=lowest_loss:3`.
  c.checkpoint.best_metric = 'loss'
  c.checkpoint.best_mode = 'min'
  c.checkpoint.keep_best = 3
  return c, a


def get_config(arg=None):
  c, a = recipe(arg, variant='32s')
  if a.variant not in ('32s', '16s', '8s'):
    raise ValueError(f'variant={a.variant!r} is not one of 32s, 16s, 8s')
  c.model.name = f'fcn{a.variant}_sat'
  c.model.backbone = 'vgg16'
  c.model.output_stride = 32
  return c
