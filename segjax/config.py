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

  c.model = ml_collections.ConfigDict()
  c.model.name = 'deeplabv3plus'
  c.model.backbone = 'mobilenetv2'
  c.model.output_stride = 16
  c.model.width_multiplier = 1.0
  c.model.freeze_encoder = False
  c.model.dtype = 'float32'   # Compute dtype; parameters stay float32.
  c.model.kwargs = ml_collections.ConfigDict()  # Model-specific extra keywords.
  # Directory written by `python -m segjax.tools.convert_weights` ('' = random init). A
  # 'backbone' conversion initialises params['backbone'], a 'model' one the
  # whole model; leaves matching pretrained_exclude (comma-separated globs on
  # 'params/...' or 'batch_stats/...' paths, e.g. 'params/classifier/*') keep
  # their random init (for a different num_classes).
  c.model.pretrained = ''
  c.model.pretrained_exclude = ''

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
  c.data.num_workers = 0      # grain worker processes; 0 = threads in-process.
  c.data.prefetch = 2
  # Synthetic dataset.
  c.data.synthetic_size = (64, 64)
  c.data.synthetic_train_examples = 1000
  c.data.synthetic_val_examples = 100

  c.augment = ml_collections.ConfigDict()
  c.augment.hflip = True
  c.augment.vflip = False
  c.augment.scale_range = (1.0, 1.0)  # Random scale factor range.
  c.augment.rotate_degrees = 0.0      # Uniform in [-d, d]; pads with ignore.
  c.augment.brightness = 0.0          # Photometric jitter strengths, 0 = off.
  c.augment.contrast = 0.0
  c.augment.saturation = 0.0
  c.augment.hue = 0.0

  c.loss = ml_collections.ConfigDict()
  c.loss.name = 'ce'          # ce | dice_ce | dice
  c.loss.class_weights = ()   # Empty = unweighted; else num_classes floats.
  c.loss.dice_weight = 1.0
  c.loss.label_smoothing = 0.0
  # Weight of the auxiliary head's loss for models that have one (model
  # kwargs aux_head=True); 0.4 as in PSPNet / mmsegmentation.
  c.loss.aux_weight = 0.4

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'  # adam | adamw | sgd | rmsprop
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.momentum = 0.9
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.nesterov = False
  c.optimizer.grad_clip_norm = 0.0  # 0 = off.

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

  # Exponential moving average of the weights (and BatchNorm statistics):
  # 0 = off; e.g. 0.999. Evaluated alongside the raw weights (val_ema/*,
  # eval_<split>_<step>_ema.json); checkpoints are ranked by the raw mIoU.
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
  c.checkpoint.keep_best = 1  # Extra checkpoints kept by best val mIoU.
  c.checkpoint.async_save = True
  return c


# --------------------------------------------------------------------------- validation

_CHOICES = {
    'model.dtype': ('float32', 'bfloat16'),
    'data.name': ('synthetic', 'folder', 'tfds'),
    'data.mask_format': ('index', 'palette'),
    'loss.name': ('ce', 'dice_ce', 'dice'),
    'eval.mode': ('whole', 'slide'),
    'optimizer.name': ('adam', 'adamw', 'sgd', 'rmsprop'),
    'schedule.name': ('constant', 'poly', 'cosine', 'step'),
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


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks `config` against the schema; raises ConfigError naming the key."""
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

  for key in ('batch_size', 'total_steps', 'log_every', 'eval_every', 'checkpoint_every',
              'eval.batch_size', 'optimizer.lr', 'checkpoint.keep', 'data.num_classes'):
    positive(key)
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
  except ValueError as e:
    raise ConfigError(f'data label spec: {e}') from None
  cw = given['loss.class_weights']
  if cw and len(cw) != spec.num_classes:
    raise ConfigError(f"config key 'loss.class_weights' has {len(cw)} values but "
                      f'data.num_classes={spec.num_classes}')
  if cw and (min(cw) < 0 or sum(cw) <= 0):
    raise ConfigError(f"config key 'loss.class_weights' must be >= 0 and not all 0, got {cw!r}")
  vc = given['data.void_color']
  if vc and (len(vc) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in vc)):
    raise ConfigError(f"config key 'data.void_color' must be () or an RGB triple, got {vc!r}")
  if given['data.name'] == 'folder' and not given['data.root']:
    raise ConfigError("config key 'data.root' must name the dataset folder when "
                      "data.name='folder'")
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
  return config


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
