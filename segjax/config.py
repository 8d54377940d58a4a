"""The config schema, its defaults, and validation with errors that name the key.

Every config file starts from `base_config()` and changes values; it never adds
keys. `validate(config)` checks the result against the schema (unknown keys,
types, label spec consistency, value ranges) before anything is built.
"""

from __future__ import annotations

import difflib
import json
import os

import ml_collections

from segjax import control
from segjax import crf as crf_lib
from segjax import losses as losses_lib
from segjax.data import labels as labels_lib

# Keys whose value is model-specific: any keyword the model class accepts.
_FREE_FORM = ('model.kwargs',)


def base_config() -> ml_collections.ConfigDict:
  """Every key segjax understands, with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 8            # Global batch, split over all devices and processes.
  c.total_steps = 1000
  c.log_every = 50
  c.eval_every = 500          # Also evaluates at the last step.
  c.checkpoint_every = 500    # Also saves at the last step and after each eval.
  # A step whose loss or gradient is not finite is never applied. By default
  # training then stops with an error naming the step and its examples; with
  # skip_nonfinite=True it goes on, and counts such steps (train/num_nonfinite).
  c.skip_nonfinite = False
  # Gradient accumulation: each step splits its batch_size examples into this
  # many equal micro-batches run one after another (lax.scan) and applies one
  # update with the mean gradient: the memory of batch_size / k examples.
  # BatchNorm normalises each micro-batch with its own statistics and updates
  # its running statistics once per micro-batch (k momentum updates per step).
  c.grad_accum_steps = 1

  c.model = ml_collections.ConfigDict()
  c.model.name = 'deeplabv3plus'
  c.model.backbone = 'mobilenetv2'
  c.model.output_stride = 16
  c.model.width_multiplier = 1.0
  c.model.freeze_encoder = False
  # freeze_encoder keeps the encoder at its initial weights, so it needs
  # model.pretrained; True allows a frozen random encoder (tests, timing).
  c.model.allow_random_frozen_encoder = False
  c.model.dtype = 'float32'   # Compute dtype; parameters stay float32.
  c.model.kwargs = ml_collections.ConfigDict()  # Model-specific extra keywords.
  # Directory written by `python -m segjax.tools.convert_weights` ('' = random init). A
  # 'backbone' conversion initialises params['backbone'], a 'model' one the
  # whole model; leaves matching pretrained_exclude (comma-separated globs on
  # 'params/...' or 'batch_stats/...' paths, e.g. 'params/classifier/*') keep
  # their random init (for a different num_classes).
  c.model.pretrained = ''
  c.model.pretrained_exclude = ''
  # Rematerialisation (jax.checkpoint) of the backbone's blocks: 'none' |
  # 'blocks' (ResNet bottlenecks); the policy names what a block keeps for the
  # backward pass (jax.checkpoint_policies: nothing_saveable recomputes all,
  # dots_saveable keeps conv/matmul outputs, ...). Less memory, more compute.
  c.model.remat = 'none'
  c.model.remat_policy = 'nothing_saveable'

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'   # synthetic | folder | tfds
  c.data.root = ''            # Folder root, or TFDS data_dir.
  c.data.tfds_name = 'oxford_iiit_pet'
  c.data.train_split = 'train'  # Any split accepts a slice: 'train[:25]', 'train[25:]'.
  c.data.val_split = 'val'
  # Folder layout: either image/mask folder templates or a list file template.
  c.data.image_dir = '{split}'
  c.data.mask_dir = '{split}annot'
  c.data.list_file = ''       # e.g. '{split}.txt' with '<image> <mask>' per line.
  c.data.image_suffixes = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
  c.data.mask_suffix = ''     # '' = same stem, any of .png/.bmp/.tif; else e.g. '_mask.png'.
  c.data.mask_format = 'index'  # index (pixel = raw label) | palette (RGB colours)
  c.data.void_color = ()      # palette masks: this RGB colour -> ignore_label.
  c.data.label_map = ''       # 'raw:label,...', e.g. '11:255' or '0:0,255:1'.
  # Folder layouts of the benchmarks (segjax/data/benchmarks.py): images in
  # sub-folders of image_dir (Cityscapes' cities), and a second mask encoding
  # preferred when its file exists, read with its own label map (Cityscapes'
  # '_gtFine_labelTrainIds.png' beside '_gtFine_labelIds.png').
  c.data.recursive = False
  c.data.alt_mask_suffix = ''
  c.data.alt_label_map = ''
  # Label spec.
  c.data.num_classes = 4
  c.data.ignore_label = 255
  c.data.class_names = ()
  c.data.palette = ()
  # Geometry and normalisation.
  c.data.resize = ()          # (h, w): resize every image first (train and eval).
  c.data.crop_size = (64, 64)  # Training crop (h, w); padded with ignore if needed.
  c.data.mean = (123.675, 116.28, 103.53)  # In [0, 255] pixel units.
  c.data.std = (58.395, 57.12, 57.375)
  # Model input channels: 'rgb' (the normalised image), or 'bgr_lab': the
  # normalised image in B, G, R order followed by its CIE L*a*b* channels
  # (L/50 - 1, a/128, b/128), 6 channels (the separable residual FCN write-up).
  c.data.input_channels = 'rgb'
  c.data.num_workers = 0      # grain worker processes; 0 = threads in-process.
  c.data.prefetch = 2
  # Where the training augmentation runs: 'host' (grain, NumPy/Pillow per
  # example) or 'device' (segjax/data/device_augment.py: the host only decodes
  # and pads to a fixed size; scale, crop, flips and colour jitter run jitted
  # on the accelerator, per batch).
  c.data.augment_on = 'host'
  # Synthetic dataset.
  c.data.synthetic_size = (64, 64)
  c.data.synthetic_train_examples = 1000
  c.data.synthetic_val_examples = 100

  c.augment = ml_collections.ConfigDict()
  c.augment.hflip = True
  c.augment.vflip = False
  c.augment.scale_range = (1.0, 1.0)  # Random scale factor range.
  c.augment.rotate_degrees = 0.0      # Uniform in [-d, d]; pads with ignore.
  # Rotation by an angle drawn from a set (degrees, counter-clockwise) with
  # probability rotate_prob; () = off. Pads with ignore, as rotate_degrees.
  c.augment.rotate_angles = ()
  c.augment.rotate_prob = 0.5
  c.augment.brightness = 0.0          # Photometric jitter strengths, 0 = off.
  c.augment.contrast = 0.0
  c.augment.saturation = 0.0
  c.augment.hue = 0.0

  c.loss = ml_collections.ConfigDict()
  c.loss.name = 'ce'          # ce | dice_ce | dice | fbeta_ce | focal | lovasz | ohem
  # fbeta_ce: CE + (1 - soft F-beta score, the mean over all classes), the
  # DeepLab write-up's Dice+CE (beta 1 = Dice); smooth is added to both sides.
  c.loss.fbeta_beta = 1.0
  c.loss.fbeta_smooth = 1e-5
  c.loss.class_weights = ()   # Empty = unweighted; else num_classes floats.
  c.loss.dice_weight = 1.0     # Weight of the Dice (dice_ce) or F-beta (fbeta_ce) term.
  c.loss.label_smoothing = 0.0
  # Weight of the auxiliary head's loss for models that have one (model
  # kwargs aux_head=True); 0.4 as in PSPNet / mmsegmentation.
  c.loss.aux_weight = 0.4
  # focal: -alpha (1 - p_t)^gamma log p_t, the (class-weighted) mean over valid
  # pixels; lovasz: Lovasz-softmax over the batch (or each image), classes
  # 'present' in the ground truth or 'all'; ohem: the CE of the top_k fraction
  # of each image's pixels with the largest loss (DeepLab2's
  # top_k_percent_pixels). docs/losses.md has the formulas.
  c.loss.focal_gamma = 2.0
  c.loss.focal_alpha = 1.0
  c.loss.lovasz_per_image = False
  c.loss.lovasz_classes = 'present'
  c.loss.ohem_top_k = 0.2
  # ohem_thresh > 0: mmsegmentation's OHEMPixelSampler instead (the pixels whose
  # true-class probability is under max(thresh, the batch's min_kept-per-image-th
  # smallest)), e.g. 0.7 and 100000.
  c.loss.ohem_thresh = 0.0
  c.loss.ohem_min_kept = 100000
  # A weighted sum of named losses in place of loss.name, e.g.
  # 'ce:1.0,lovasz:0.5'; names: ce dice fbeta focal lovasz ohem ('' = off).
  c.loss.terms = ''

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'  # adam | adamw | sgd | rmsprop
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.momentum = 0.9
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.nesterov = False
  # rmsprop: v <- rho v + (1 - rho) g^2; update lr g / (sqrt(v) + eps) (Keras 2,
  # the default here), or lr g / sqrt(v + eps) with eps_in_sqrt (Keras 3, optax).
  c.optimizer.rho = 0.9
  c.optimizer.eps_in_sqrt = False
  c.optimizer.grad_clip_norm = 0.0  # 0 = off.
  # Weight decay on every parameter (mmsegmentation's SGD default) instead of
  # kernels only (no decay on biases and normalisation scales/offsets).
  c.optimizer.decay_norms_and_biases = False
  # Learning-rate multipliers of params['backbone'] and of every other
  # parameter (the head), on top of the schedule; e.g. 0.1 and 1.0 to
  # fine-tune a pretrained encoder slowly.
  c.optimizer.backbone_lr_mult = 1.0
  c.optimizer.head_lr_mult = 1.0

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = 'poly'    # constant | poly | cosine | step
  c.schedule.warmup_steps = 0
  c.schedule.power = 0.9
  c.schedule.end_lr_factor = 0.0
  c.schedule.boundaries = ()  # step: fractions of total_steps or absolute steps.
  c.schedule.decay_factor = 0.1

  c.eval = ml_collections.ConfigDict()
  c.eval.split = ''           # '' = data.val_split.
  c.eval.batch_size = 8
  c.eval.checkpoint = 'latest'  # latest | best | <step>
  c.eval.num_panel_images = 4
  # Monte Carlo dropout passes (Bayesian SegNet): > 1 averages the softmax of
  # that many stochastic passes and adds a predictive-entropy map to the panels.
  c.eval.mc_samples = 1
  # Inference mode: 'whole' image, or 'slide' windows of eval.crop_size (default
  # data.crop_size) every eval.stride pixels (default 2/3 of the window), the
  # overlapping logits averaged. Test-time augmentation on top of either: the
  # softmax averaged over eval.scales (resize factors) and, with eval.flip,
  # horizontal flips.
  c.eval.mode = 'whole'
  c.eval.crop_size = ()
  c.eval.stride = ()
  c.eval.scales = (1.0,)
  c.eval.flip = False
  # Fully connected CRF on the predicted probabilities (segjax/crf.py, DeepLab
  # v1/v2): mean-field `iterations` with an appearance kernel (weight, xy and
  # RGB widths) and a smoothness kernel (weight, xy width), Potts labels.
  # source_stride 1 is exact (O(pixels^2): small images); s > 1 sums the
  # appearance kernel over every s-th row/column (full-size images).
  c.eval.crf = ml_collections.ConfigDict()
  c.eval.crf.enabled = False
  c.eval.crf.iterations = 10
  c.eval.crf.appearance_weight = 4.0
  c.eval.crf.appearance_xy_std = 121.0
  c.eval.crf.appearance_rgb_std = 5.0
  c.eval.crf.smoothness_weight = 3.0
  c.eval.crf.smoothness_xy_std = 3.0
  c.eval.crf.source_stride = 1

  # Exponential moving average of the weights (and BatchNorm statistics):
  # 0 = off; e.g. 0.999. Evaluated alongside the raw weights (val_ema/*,
  # eval/<split>_<step>_ema.json); checkpoints are ranked by the raw mIoU.
  c.ema = ml_collections.ConfigDict()
  c.ema.decay = 0.0

  # Training control from the validation metrics of each evaluation (every
  # eval_every steps), as Keras' callbacks do per epoch (segjax/control.py).
  # metric '' = off; else one of mIoU, mAcc, aAcc, fwIoU, mDice, loss; mode
  # 'auto' = 'min' for loss, 'max' for the rest.
  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.metric = ''
  c.early_stopping.mode = 'auto'
  c.early_stopping.patience = 5     # Evaluations without improvement before stopping.
  c.early_stopping.min_delta = 0.0  # Smaller changes do not count as improvement.
  c.reduce_on_plateau = ml_collections.ConfigDict()
  c.reduce_on_plateau.metric = ''
  c.reduce_on_plateau.mode = 'auto'
  c.reduce_on_plateau.factor = 0.1  # Learning rate *= factor on a plateau ...
  c.reduce_on_plateau.patience = 3  # ... of this many evaluations without improvement.
  c.reduce_on_plateau.min_delta = 0.0
  c.reduce_on_plateau.cooldown = 0  # Evaluations to wait after a reduction.
  c.reduce_on_plateau.min_scale = 0.0  # Floor of the accumulated factor.

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 3
  c.checkpoint.keep_best = 1  # Extra checkpoints kept by the best best_metric.
  # The validation metric that ranks checkpoints ('best', average best:K), as
  # early_stopping.metric; mode 'auto' = 'min' for loss, 'max' for the rest.
  c.checkpoint.best_metric = 'mIoU'
  c.checkpoint.best_mode = 'auto'
  c.checkpoint.async_save = True

  # Compilation (segjax/compile_cache.py; entry points call its setup()):
  # persistent compilation cache ('auto' = $JAX_COMPILATION_CACHE_DIR or
  # ~/.cache/segjax/jax_cache, '' = off) and XLA's GPU autotuning level
  # (-1 = XLA's default).
  c.compile = ml_collections.ConfigDict()
  c.compile.cache_dir = 'auto'
  c.compile.cache_min_compile_seconds = -1.0  # -1: jax's (1 s); 0 caches every program.
  c.compile.gpu_autotune_level = -1
  return c


# --------------------------------------------------------------------------- validation

_CHOICES = {
    'model.dtype': ('float32', 'bfloat16'),
    'data.name': ('synthetic', 'folder', 'tfds'),
    'data.mask_format': ('index', 'palette'),
    'loss.name': ('ce', 'dice_ce', 'dice', 'fbeta_ce', 'focal', 'lovasz', 'ohem'),
    'loss.lovasz_classes': ('present', 'all'),
    'data.input_channels': ('rgb', 'bgr_lab'),
    'eval.mode': ('whole', 'slide'),
    'optimizer.name': ('adam', 'adamw', 'sgd', 'rmsprop'),
    'schedule.name': ('constant', 'poly', 'cosine', 'step'),
    'model.remat': ('none', 'blocks'),
    'model.remat_policy': ('nothing_saveable', 'everything_saveable', 'dots_saveable',
                           'dots_with_no_batch_dims_saveable'),
    'data.augment_on': ('host', 'device'),
}


class ConfigError(ValueError):
  pass


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, (ml_collections.ConfigDict, dict)) and key not in _FREE_FORM:
      out.update(_flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def _type_ok(value, default) -> bool:
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, str):
    return isinstance(value, str)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return True


def validate(config: ml_collections.ConfigDict, *, devices: int | None = None,
             processes: int | None = None) -> ml_collections.ConfigDict:
  """Checks `config` against the schema; raises ConfigError naming the key.

  Every check that relates two keys lives here too (see _check_cross_keys),
  each failure one line naming the keys and their values. `devices` and
  `processes` (jax.device_count(), jax.process_count()), when given, are
  checked against the batch sizes.
  """
  schema = _flatten(base_config())
  given = _flatten(config)
  for key, value in given.items():
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema), n=1)
      hint = f"; did you mean '{close[0]}'?" if close else ''
      raise ConfigError(f"unknown config key '{key}'{hint}")
    if not _type_ok(value, schema[key]):
      raise ConfigError(f"config key '{key}' = {value!r} should be of type "
                        f'{type(schema[key]).__name__}')
  for key in schema:
    if key not in given:
      raise ConfigError(f"config key '{key}' is missing (start configs from "
                        'segjax.config.base_config())')
  for key, choices in _CHOICES.items():
    if given[key] not in choices:
      raise ConfigError(f"config key '{key}' = {given[key]!r} is not one of {choices}")

  def positive(key):
    if not given[key] > 0:
      raise ConfigError(f"config key '{key}' must be > 0, got {given[key]!r}")

  if given['data.num_classes'] < 1:
    raise ConfigError(f"config key 'data.num_classes' must be > 0, got "
                      f"{given['data.num_classes']!r}; set it with --config.data.num_classes=N")
  for key in ('batch_size', 'total_steps', 'log_every', 'eval_every', 'checkpoint_every',
              'eval.batch_size', 'optimizer.lr', 'checkpoint.keep'):
    positive(key)
  if given['grad_accum_steps'] < 1 or given['batch_size'] % given['grad_accum_steps']:
    raise ConfigError(f"config key 'grad_accum_steps' = {given['grad_accum_steps']!r} must be "
                      f"a positive divisor of batch_size={given['batch_size']!r}")
  if not -1 <= given['compile.gpu_autotune_level'] <= 4:
    raise ConfigError("config key 'compile.gpu_autotune_level' must be -1 (XLA's default) or "
                      f"in [0, 4], got {given['compile.gpu_autotune_level']!r}")
  if given['eval.mc_samples'] < 1:
    raise ConfigError("config key 'eval.mc_samples' must be >= 1, got "
                      f"{given['eval.mc_samples']!r}")
  for key in ('eval.crop_size', 'eval.stride'):
    v = given[key]
    if v and (len(v) != 2 or not all(isinstance(x, int) and x > 0 for x in v)):
      raise ConfigError(f"config key '{key}' must be () or (height, width) positive ints, "
                        f'got {v!r}')
  if not given['eval.scales'] or any(not s > 0 for s in given['eval.scales']):
    raise ConfigError("config key 'eval.scales' must be positive resize factors, got "
                      f"{given['eval.scales']!r}")
  if not 0.0 <= given['ema.decay'] < 1.0:
    raise ConfigError(f"config key 'ema.decay' must be in [0, 1), got {given['ema.decay']!r}")
  if given['loss.aux_weight'] < 0:
    raise ConfigError("config key 'loss.aux_weight' must be >= 0, got "
                      f"{given['loss.aux_weight']!r}")
  if given['model.output_stride'] not in (8, 16, 32):
    raise ConfigError("config key 'model.output_stride' must be 8, 16 or 32, got "
                      f"{given['model.output_stride']!r}")
  for key in ('data.crop_size', 'data.synthetic_size'):
    v = given[key]
    if len(v) != 2 or not all(isinstance(x, int) and x > 0 for x in v):
      raise ConfigError(f"config key '{key}' must be (height, width) positive ints, got {v!r}")
  if given['data.resize'] and (len(given['data.resize']) != 2 or
                               not all(isinstance(x, int) and x > 0 for x in given['data.resize'])):
    raise ConfigError(f"config key 'data.resize' must be () or (height, width), got "
                      f"{given['data.resize']!r}")
  for key in ('data.mean', 'data.std'):
    if len(given[key]) != 3:
      raise ConfigError(f"config key '{key}' must have 3 values (R, G, B), got {given[key]!r}")
  if any(s <= 0 for s in given['data.std']):
    raise ConfigError(f"config key 'data.std' must be positive, got {given['data.std']!r}")
  lo, hi = given['augment.scale_range']
  if not 0 < lo <= hi:
    raise ConfigError(f"config key 'augment.scale_range' must be 0 < min <= max, got "
                      f'{given["augment.scale_range"]!r}')
  # Label spec: one place, one error per inconsistency.
  try:
    spec = labels_lib.spec_from_config(config.data)
    labels_lib.LabelMapper(spec, config.data.label_map)
    if config.data.alt_mask_suffix:
      try:
        labels_lib.LabelMapper(spec, config.data.alt_label_map)
      except ValueError as e:
        raise ValueError(str(e).replace('data.label_map', 'data.alt_label_map')) from None
  except ValueError as e:
    hint = ''
    if 'has' in str(e) and 'num_classes' in str(e):  # A names/palette length mismatch.
      n = given['data.num_classes']
      hint = (f'; give {n} with --config.data.class_names / --config.data.palette, or () '
              f'for class_0..class_{n - 1} and a generated palette')
    raise ConfigError(f'data label spec: {e}{hint}') from None
  cw = given['loss.class_weights']
  if cw and len(cw) != spec.num_classes:
    raise ConfigError(f"config key 'loss.class_weights' has {len(cw)} values but "
                      f'data.num_classes={spec.num_classes}')
  if cw and (min(cw) < 0 or sum(cw) <= 0):
    raise ConfigError(f"config key 'loss.class_weights' must be >= 0 and not all 0, got {cw!r}")
  vc = given['data.void_color']
  if vc and (len(vc) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in vc)):
    raise ConfigError(f"config key 'data.void_color' must be () or an RGB triple, got {vc!r}")
  if (given['model.freeze_encoder'] and not given['model.pretrained']
      and not given['model.allow_random_frozen_encoder']):
    raise ConfigError(
        "config key 'model.freeze_encoder' is True but 'model.pretrained' is empty: the "
        'encoder would stay frozen at its random initialisation. Convert ImageNet weights '
        'first, e.g. for the TF tutorial U-Net the Keras MobileNetV2 file '
        '(keras.applications, mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5):'
        ' segjax convert_weights --from=keras --arch=mobilenetv2 --weights=<that .h5> '
        '--out=weights/mobilenetv2_keras, then pass '
        '--config.model.pretrained=weights/mobilenetv2_keras (segjax convert_weights --list '
        'names the other architectures); or set model.allow_random_frozen_encoder=True to '
        'freeze a random encoder on purpose')
  if given['data.name'] == 'folder' and not given['data.root']:
    raise ConfigError("config key 'data.root' is empty but data.name='folder' reads a "
                      'folder: set it with --config.data.root=/path/to/dataset')
  if given['checkpoint.best_metric'] not in control.METRIC_MODES:
    raise ConfigError(f"config key 'checkpoint.best_metric' = "
                      f"{given['checkpoint.best_metric']!r} is not one of "
                      f'{sorted(control.METRIC_MODES)}')
  if given['checkpoint.best_mode'] not in ('auto', 'max', 'min'):
    raise ConfigError(f"config key 'checkpoint.best_mode' = {given['checkpoint.best_mode']!r} "
                      "is not 'auto', 'max' or 'min'")
  angles = given['augment.rotate_angles']
  if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in angles):
    raise ConfigError("config key 'augment.rotate_angles' must be numbers (degrees), got "
                      f'{angles!r}')
  if not 0.0 <= given['augment.rotate_prob'] <= 1.0:
    raise ConfigError("config key 'augment.rotate_prob' must be in [0, 1], got "
                      f"{given['augment.rotate_prob']!r}")
  if not given['loss.fbeta_beta'] > 0 or given['loss.fbeta_smooth'] < 0:
    raise ConfigError("config keys 'loss.fbeta_beta' must be > 0 and 'loss.fbeta_smooth' "
                      f">= 0, got {given['loss.fbeta_beta']!r}, {given['loss.fbeta_smooth']!r}")
  if given['loss.terms']:
    try:
      losses_lib.parse_terms(given['loss.terms'])
    except ValueError as e:
      raise ConfigError(f'config key {e}') from None
    if given['loss.name'] != 'ce':
      raise ConfigError(f"config keys 'loss.name' = {given['loss.name']!r}, 'loss.terms' = "
                        f"{given['loss.terms']!r}: set one of them (terms replaces name)")
  if given['loss.focal_gamma'] < 0 or not given['loss.focal_alpha'] > 0:
    raise ConfigError("config keys 'loss.focal_gamma' must be >= 0 and 'loss.focal_alpha' > 0, "
                      f"got {given['loss.focal_gamma']!r}, {given['loss.focal_alpha']!r}")
  if not 0.0 < given['loss.ohem_top_k'] <= 1.0:
    raise ConfigError("config key 'loss.ohem_top_k' must be in (0, 1] (a fraction of each "
                      f"image's pixels), got {given['loss.ohem_top_k']!r}")
  if not 0.0 <= given['loss.ohem_thresh'] < 1.0 or given['loss.ohem_min_kept'] < 1:
    raise ConfigError("config keys 'loss.ohem_thresh' must be in [0, 1) (0 = top-k OHEM) and "
                      f"'loss.ohem_min_kept' >= 1, got {given['loss.ohem_thresh']!r}, "
                      f"{given['loss.ohem_min_kept']!r}")
  for key in ('optimizer.backbone_lr_mult', 'optimizer.head_lr_mult'):
    if given[key] < 0:
      raise ConfigError(f"config key '{key}' must be >= 0, got {given[key]!r}")
  for block in ('early_stopping', 'reduce_on_plateau'):
    metric = given[f'{block}.metric']
    if metric:
      try:
        control.resolve_mode(metric, given[f'{block}.mode'], block)
      except ValueError as e:
        raise ConfigError(f'config key {e}') from None
    if given[f'{block}.patience'] < 0:
      raise ConfigError(f"config key '{block}.patience' must be >= 0, got "
                        f"{given[f'{block}.patience']!r}")
  if not 0.0 < given['reduce_on_plateau.factor'] < 1.0:
    raise ConfigError("config key 'reduce_on_plateau.factor' must be in (0, 1), got "
                      f"{given['reduce_on_plateau.factor']!r}")
  if given['eval.checkpoint'] not in ('latest', 'best') and not str(
      given['eval.checkpoint']).isdigit():
    raise ConfigError("config key 'eval.checkpoint' must be 'latest', 'best' or a step "
                      f"number, got {given['eval.checkpoint']!r}")
  if given['eval.crf.enabled']:
    try:
      crf_lib.DenseCRF.from_config(config)
    except ValueError as e:
      raise ConfigError(f"config block 'eval.crf': {e}") from None
  if not 0.0 <= given['augment.hue'] <= 0.5:
    raise ConfigError(f"config key 'augment.hue' must be in [0, 0.5], got {given['augment.hue']!r}")
  _check_cross_keys(given, devices, processes)
  return config


def _check_cross_keys(given: dict, devices: int | None, processes: int | None) -> None:
  """The checks that relate keys to each other (given: the flattened config)."""

  def fail(keys, why):
    named = ', '.join(f"'{k}' = {given[k]!r}" for k in keys)
    raise ConfigError(f'config keys {named}: {why}')

  total, warmup = given['total_steps'], given['schedule.warmup_steps']
  if warmup < 0 or warmup >= total:
    fail(('schedule.warmup_steps', 'total_steps'),
         'the warm-up must end before the last step (0 <= warmup_steps < total_steps)')
  if given['schedule.name'] == 'step':
    bounds = given['schedule.boundaries']
    if not bounds:
      fail(('schedule.name', 'schedule.boundaries'),
           "a step schedule needs boundaries, e.g. (0.5, 0.75) (fractions of total_steps)")
    steps = [int(round(b * total)) if b < 1 else int(b) for b in bounds]
    if sorted(steps) != steps or any(b <= warmup or b >= total for b in steps):
      fail(('schedule.boundaries', 'schedule.warmup_steps', 'total_steps'),
           f'the boundaries are steps {steps}; they must increase and lie inside '
           f'({warmup}, {total})')
  for key in ('batch_size', 'eval.batch_size'):
    for count, what in ((devices, 'devices'), (processes, 'processes')):
      if count and given[key] % count:
        raise ConfigError(f"config key '{key}' = {given[key]!r} is not divisible by the "
                          f'{count} {what} it is split over')
  # A training crop larger than every (scaled) resized image is mostly ignore
  # padding. (Images of unknown size, e.g. a synthetic set smaller than the
  # crop on purpose in tests, are padded as documented and not checked.)
  if given['data.resize']:
    top = given['augment.scale_range'][1]
    (ch, cw), (bh, bw) = given['data.crop_size'], given['data.resize']
    if ch > bh * top or cw > bw * top:
      fail(('data.crop_size', 'data.resize', 'augment.scale_range'),
           'the crop is larger than the largest scaled image; every crop would be padded '
           'with ignored pixels')


def _tuples(value):
  """JSON lists back to the tuples the schema uses (recursively)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def _merge(base: ml_collections.ConfigDict, values: dict, prefix: str = '') -> None:
  for key, value in values.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict) and isinstance(base.get(key), ml_collections.ConfigDict):
      if name in _FREE_FORM:
        base[key] = ml_collections.ConfigDict(_tuples(value))
      else:
        _merge(base[key], value, name + '.')
    else:
      base[key] = _tuples(value)  # Unknown keys are added so that validate() names them.


def from_dict(values: dict, where: str = 'config') -> ml_collections.ConfigDict:
  """A validated config from its JSON form (a run's config.json or checkpoint
  meta): laid over base_config(), so keys added to the schema since the run
  get their defaults, lists become tuples, and unknown keys are rejected.
  Errors are ConfigError naming `where` and the key."""
  if not isinstance(values, dict):
    raise ConfigError(f'{where}: the config is a {type(values).__name__}, not a JSON object')
  config = base_config()
  _merge(config, values)
  try:
    return validate(config)
  except ConfigError as e:
    raise ConfigError(f'{where}: {e}') from None


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The validated config of a training run, from <workdir>/config.json."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file; --workdir must be a training run '
                            'directory (it holds config.json and checkpoints/)')
  try:
    with open(path) as f:
      values = json.load(f)
  except json.JSONDecodeError as e:
    raise ConfigError(f'{path}: not valid JSON ({e})') from None
  return from_dict(values, path)
