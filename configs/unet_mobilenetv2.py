r"""U-Net with a MobileNetV2 encoder: the TensorFlow image-segmentation tutorial.

Oxford-IIIT Pet through TFDS (trimap minus 1 -> 3 classes), 128x128, batch 64,
Adam (Keras defaults), 20 epochs of 3680 images (57 steps each, as the
tutorial's STEPS_PER_EPOCH = 3680 // 64), random horizontal flip; U-Net decoder
of pix2pix upsample blocks 512-256-128-64 on the tutorial's five MobileNetV2
taps, and a final transposed conv to 3 classes.

Arguments:
  runlocal          a few hundred steps at batch 16 (and synthetic data unless
                    dataset= is given)
  dataset=NAME      pets (default) | synthetic | camvid | isbi | folder
  freeze_encoder    keep the encoder fixed (the tutorial's down_stack.trainable = False)

  python -m segjax.tools.prepare_tfds --name=oxford_iiit_pet --data_dir=~/tensorflow_datasets
  python launch.py --config=configs/unet_mobilenetv2.py \
      --config.data.root=~/tensorflow_datasets --workdir=runs/unet_pets
"""

from configs import common
from segjax import config as config_lib


def get_config(arg=None):
  a = common.parse_arg(arg, runlocal=False, dataset='', freeze_encoder=False)
  dataset = a.dataset or ('synthetic' if a.runlocal else 'pets')
  c = config_lib.base_config()
  if dataset not in common.DATASETS:
    raise ValueError(f'unknown dataset {dataset!r}; accepted: {tuple(common.DATASETS)}')
  common.apply(c, common.DATASETS[dataset])
  c.model.name = 'unet'
  c.model.backbone = 'mobilenetv2'
  c.model.output_stride = 32
  c.model.freeze_encoder = a.freeze_encoder
  # Keras Adam defaults; constant learning rate, no weight decay.
  c.optimizer.name = 'adam'
  c.optimizer.lr = 1e-3
  c.optimizer.eps = 1e-7
  c.optimizer.weight_decay = 0.0
  c.schedule.name = 'constant'
  c.loss.name = 'ce'
  c.augment.hflip = True
  c.data.resize = (128, 128)
  c.data.crop_size = (128, 128)
  c.batch_size = 64
  steps_per_epoch = 3680 // 64
  c.total_steps = 20 * steps_per_epoch
  c.eval_every = 5 * steps_per_epoch
  c.log_every = 19

  if dataset == 'synthetic':
    c.data.resize = ()
    c.data.synthetic_size = (64, 64)
    c.data.crop_size = (64, 64)
  elif dataset == 'camvid':
    c.data.resize = (192, 256)
    c.data.crop_size = (192, 256)
  elif dataset in ('isbi', 'folder'):
    c.data.resize = ()
    c.data.crop_size = (256, 256)
  if a.runlocal:
    c.batch_size = 16
    c.total_steps = 400
    c.eval_every = 200
    c.log_every = 25
    c.model.width_multiplier = 0.35
    c.model.kwargs.decoder_filters = (128, 64, 32, 16)
  c.checkpoint_every = c.eval_every
  return c
