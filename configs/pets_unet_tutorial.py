r"""The TensorFlow image-segmentation tutorial, exactly: U-Net with a frozen
ImageNet MobileNetV2 encoder on Oxford-IIIT Pet (reported: val accuracy 0.8986
after 20 epochs).

The recipe: 128x128 images scaled to [0, 1] (x / 255), trimap minus 1 -> 3
classes, random horizontal flip, batch 64, 20 epochs of 57 steps (the
tutorial's STEPS_PER_EPOCH = 3680 // 64), Adam with Keras' defaults (lr 1e-3,
b1 0.9, b2 0.999, eps 1e-7; constant, no weight decay), sparse softmax cross
entropy from logits; the encoder (MobileNetV2 1.0, five taps) frozen with
Keras' ImageNet weights, the pix2pix decoder 512-256-128-64 trained. Validation
on the first 704 test images (the tutorial's VALIDATION_STEPS = 3669 // 64 // 5
= 11 batches of 64), accuracy = pixel accuracy (aAcc).

Differences that remain: images are resized with Pillow's antialiased bilinear
filter (tf.image.resize: bilinear without antialiasing); Keras' Adam adds eps
to sqrt(v) before bias correction, optax after (a 1e-7-sized difference).

Arguments:
  dataset=NAME   pets (default) | synthetic: the generated shapes set at
                 128x128 (4 classes), with the encoder frozen at its random
                 init on purpose (no weights are needed to exercise the recipe)
  steps=N        total_steps (default 20 epochs = 1140)

The weights (tf.keras.applications.MobileNetV2(input_shape=[128, 128, 3],
include_top=False) downloads mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5):

  segjax prepare_tfds --name=oxford_iiit_pet --data_dir=~/tensorflow_datasets
  segjax convert_weights --from=keras --arch=mobilenetv2 \
      --weights=mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5 \
      --out=weights/mobilenetv2_keras_128
  python launch.py --config=configs/pets_unet_tutorial.py --workdir=runs/pets_tutorial \
      --config.data.root=~/tensorflow_datasets \
      --config.model.pretrained=weights/mobilenetv2_keras_128
  python launch.py --config=configs/pets_unet_tutorial.py:dataset=synthetic,steps=20 \
      --workdir=runs/pets_tutorial_synthetic
"""

from configs import common
from segjax import config as config_lib

TRAIN_EXAMPLES = 3680  # Oxford-IIIT Pet 'train' (trainval of the original).
VAL_EXAMPLES = 704     # 11 validation steps of 64 on 'test'.


def get_config(arg=None):
  a = common.parse_arg(arg, dataset='pets', steps=0)
  if a.dataset not in ('pets', 'synthetic'):
    raise ValueError(f"dataset={a.dataset!r}: expected 'pets' or 'synthetic'")
  c = config_lib.base_config()
  common.apply(c, common.DATASETS[a.dataset])
  c.model.name = 'unet'
  c.model.backbone = 'mobilenetv2'
  c.model.output_stride = 32
  c.model.width_multiplier = 1.0
  c.model.freeze_encoder = True  # down_stack.trainable = False
  c.model.kwargs.decoder_filters = (512, 256, 128, 64)

  c.data.mean = (0.0, 0.0, 0.0)  # x / 255: images in [0, 1].
  c.data.std = (255.0, 255.0, 255.0)
  c.data.resize = (128, 128)
  c.data.crop_size = (128, 128)
  c.augment.hflip = True
  c.augment.vflip = False
  c.augment.scale_range = (1.0, 1.0)

  c.optimizer.name = 'adam'
  c.optimizer.lr = 1e-3
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-7
  c.optimizer.weight_decay = 0.0
  c.schedule.name = 'constant'
  c.loss.name = 'ce'

  c.batch_size = 64
  steps_per_epoch = TRAIN_EXAMPLES // 64  # 57
  c.total_steps = a.steps or 20 * steps_per_epoch
  c.eval_every = min(steps_per_epoch, c.total_steps)  # Keras validates every epoch.
  c.log_every = min(19, c.total_steps)
  c.checkpoint_every = c.eval_every
  c.eval.batch_size = 64
  if a.dataset == 'pets':
    c.data.val_split = f'test[:{VAL_EXAMPLES}]'
  else:
    c.data.resize = ()
    c.data.synthetic_size = (128, 128)
    c.data.synthetic_train_examples = TRAIN_EXAMPLES
    c.data.synthetic_val_examples = 128
    c.model.allow_random_frozen_encoder = True  # No ImageNet weights here.
  return c
