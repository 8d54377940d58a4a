r"""Satellite land cover with the satellite write-up's FCN-16s or FCN-8s
(`fcn16s_sat` / `fcn8s_sat`): configs/satellite_fcn32s.py's recipe (data,
augmentation, Adam + StepLR, lowest-loss checkpoints for the ensemble) with
the pool4 (16s) or pool4 + pool3 (8s) skips of the write-up's decoder. The
write-up reports a number only for FCN-32s.

Arguments: variant=16s | 8s (default 8s), and those of
configs/satellite_fcn32s.py (steps, train_images, crops_per_image).

  python launch.py --config=configs/satellite_fcn16s_8s.py:variant=16s \
      --workdir=runs/sat_fcn16s --config.data.root=hw1_data/p2_data \
      --config.model.pretrained=weights/vgg16
"""

from configs import satellite_fcn32s

VARIANTS = ('16s', '8s')


def get_config(arg=None):
  variant, rest = '8s', []
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    if key.strip() == 'variant':
      variant = value.strip()
    else:
      rest.append(item)
  if variant not in VARIANTS:
    raise ValueError(f'config argument variant={variant!r} is not one of {VARIANTS}')
  c = satellite_fcn32s.get_config(','.join(rest))
  c.model.name = f'fcn{variant}_sat'
  return c
