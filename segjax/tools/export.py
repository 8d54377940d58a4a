r"""Serialized inference export: a trained checkpoint as one StableHLO file.

  segjax export --workdir=runs/x --out=export/x
  segjax export --workdir=runs/x --out=export/x_b4 --batch=4 --height=512 --width=512
  segjax export --workdir=runs/unet --out=export/unet_any --symbolic_hw \
      --platforms=cpu,cuda,tpu

The exported function is

  logits = f(images)    images: uint8 (B, H, W, 3) RGB in [0, 255]
                        logits: float32 (B, H, W, num_classes)

with the run's normalisation ((x - data.mean) / data.std) inside and the
checkpoint's variables closed over as constants. It returns logits, not
probabilities: `softmax(logits, -1)` gives the class probabilities and
`argmax(logits, -1)` the class map, and nothing is lost to a saturated softmax.
It is the deterministic (dropout off, BatchNorm running statistics) single
pass of `--mode=eval` with eval.mode 'whole', without Monte Carlo dropout or
test-time augmentation.

`--out` receives `model.stablehlo` (`jax.export` serialization: the StableHLO
module plus its calling convention) and `signature.json` (input and output
shapes and dtypes, class names, palette, mean/std, source run and step,
platforms, the file's SHA-256). `segjax.exported.load(directory)` (also `load` here) turns the
directory back into a callable using only jax and json: no segjax model code,
no flax, no orbax.

Shapes. The batch is fixed (`--batch=N`) or symbolic (`--batch=symbolic`, the
default: any B >= 1). H and W are fixed (default: the run's data.resize, else
data.crop_size) or, with `--symbolic_hw`, symbolic multiples of
`--hw_multiple` (default 32): (B, 32*h, 32*w, 3). Symbolic H and W work for the
models whose layers only need shapes up to a multiple of the stride:
'unet' and 'segnet' / 'bayesian_segnet'. DeepLabV3+, DeepLabV3, FCN-8s/16s/32s
and DSRFCN resize to a static size (segjax.models.layers.resize_bilinear
takes int sizes), so they are exported at a fixed H and W; asking for symbolic
H/W raises ExportError naming the model.

Platforms. `--platforms=cpu,cuda,tpu` lowers one module for each (no
accelerator is needed to export); the loaded function runs on whichever of
those jax's default backend is. The variables are constants inside the module,
shared by all its platforms: about 4.5 bytes per parameter (1.2 MB for the
266k-parameter test model, with cpu or with cpu,cuda,tpu). Serialization needs
the `flatbuffers` package (jax's own optional dependency).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Sequence

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from segjax import cli
from segjax.exported import FORMAT, MODEL_FILE, SIGNATURE_FILE, LoadedModel, load  # pylint: disable=unused-import
from segjax import run_dir
from segjax import sharding as sharding_lib
from segjax import state as state_lib
from segjax.data import labels as labels_lib
from segjax.data import transforms

PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
# Models that can be exported with symbolic H and W (measured: see module doc).
SYMBOLIC_HW_MODELS = ('unet', 'segnet', 'bayesian_segnet')


class ExportError(ValueError):
  """An export that cannot be made (shape, model, platform or output problem)."""


# --------------------------------------------------------------------------- building


def inference_fn(model, variables: dict, mean: Sequence[float],
                 std: Sequence[float]) -> Callable[[jax.Array], jax.Array]:
  """f(uint8 images (B, H, W, 3)) -> float32 logits (B, H, W, C), the
  variables (NumPy arrays) closed over, dropout off, BatchNorm in inference
  mode, the auxiliary head (if any) dropped."""
  mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

  def f(images):
    x = transforms.normalize(images, mean, std)
    logits, _ = state_lib.split_outputs(model.apply(variables, x, train=False))
    return logits.astype(jnp.float32)

  return f


def input_spec(batch: int | None, height: int | None, width: int | None, *,
               symbolic_hw: bool = False, hw_multiple: int = 32) -> jax.ShapeDtypeStruct:
  """The uint8 input's shape: batch None = symbolic 'b'; with symbolic_hw,
  H and W are `hw_multiple*h`, `hw_multiple*w` (height and width must be None)."""
  if batch is not None and (not isinstance(batch, int) or batch < 1):
    raise ExportError(f'batch must be a positive int or None (symbolic), got {batch!r}')
  if symbolic_hw:
    if height is not None or width is not None:
      raise ExportError(f'symbolic H/W takes no height/width, got {height}x{width}')
    if not isinstance(hw_multiple, int) or hw_multiple < 1:
      raise ExportError(f'hw_multiple must be a positive int, got {hw_multiple!r}')
    m = '' if hw_multiple == 1 else f'{hw_multiple}*'
    names = ([] if batch is not None else ['b']) + [f'{m}h', f'{m}w']
    dims = list(jax.export.symbolic_shape(', '.join(names)))
    shape = ([batch] if batch is not None else []) + dims
  else:
    for name, v in (('height', height), ('width', width)):
      if not isinstance(v, int) or v < 1:
        raise ExportError(f'{name} must be a positive int, got {v!r}')
    b = batch if batch is not None else jax.export.symbolic_shape('b')[0]
    shape = [b, height, width]
  return jax.ShapeDtypeStruct((*shape, 3), jnp.uint8)


def parse_platforms(text: str | Sequence[str]) -> tuple[str, ...]:
  """'cpu,cuda' -> ('cpu', 'cuda'), checked against PLATFORMS."""
  items = text.split(',') if isinstance(text, str) else list(text)
  out = tuple(dict.fromkeys(p.strip().lower() for p in items if p.strip()))
  bad = [p for p in out if p not in PLATFORMS]
  if bad or not out:
    raise ExportError(f'platforms {bad or list(items)!r} not among {list(PLATFORMS)}')
  return out


def export_model(model, variables: dict, mean: Sequence[float], std: Sequence[float],
                 spec: jax.ShapeDtypeStruct, *, platforms: Sequence[str] = ('cpu',),
                 model_name: str = '') -> Any:
  """`jax.export.Exported` of `inference_fn` for input `spec` on `platforms`."""
  platforms = parse_platforms(platforms)
  variables = jax.device_get(variables)
  fn = jax.jit(inference_fn(model, variables, mean, std))
  symbolic_hw = not all(isinstance(d, int) for d in spec.shape[1:3])
  try:
    return jax.export.export(fn, platforms=platforms)(spec)
  except (jax.errors.InconclusiveDimensionOperation, TypeError, ValueError) as e:
    if not symbolic_hw:
      raise
    name = model_name or type(model).__name__
    raise ExportError(
        f'model {name!r} cannot be exported with symbolic H/W {spec.shape[1:3]} '
        f'({type(e).__name__}: {str(e).splitlines()[0]}); export at a fixed --height/--width, '
        f'or use a model that supports it ({", ".join(SYMBOLIC_HW_MODELS)}) with --hw_multiple '
        'a multiple of its total stride (32)') from None


def restore_for_export(workdir: str, checkpoint: str = 'latest',
                       weights: str = 'raw') -> tuple[Any, dict, int, dict]:
  """(config, variables as NumPy, step, checkpoint meta) of a run's checkpoint,
  loaded by segjax.run_dir's rule. `weights` 'raw' are the trained variables,
  'ema' their moving average (config.ema.decay > 0 runs only)."""
  if weights not in run_dir.WEIGHTS:
    raise ExportError(f"weights must be 'raw' or 'ema', got {weights!r}")
  try:
    run = run_dir.load_run(workdir, str(checkpoint), weights,
                           mesh=sharding_lib.make_mesh(jax.devices()[:1]))
  except ValueError as e:  # No EMA weights, or a config error.
    raise ExportError(str(e)) from None
  return run.config, jax.device_get(run.variables), run.step, run.meta


def _dims(shape) -> list:
  return [int(d) if isinstance(d, (int, np.integer)) else str(d) for d in shape]


def export_workdir(workdir: str, out: str, *, checkpoint: str = 'latest',
                   batch: int | None = None, height: int | None = None,
                   width: int | None = None, symbolic_hw: bool = False, hw_multiple: int = 32,
                   platforms: Sequence[str] | str = ('cpu',), weights: str = 'raw',
                   overwrite: bool = False) -> dict:
  """Exports checkpoint `checkpoint` of run `workdir` into directory `out`.

  Args:
    workdir: training run directory (config.json, checkpoints/).
    out: output directory; gets model.stablehlo and signature.json.
    checkpoint: 'latest', 'best' or a step.
    batch: fixed batch size, or None for a symbolic batch.
    height, width: fixed input size; default the run's data.resize, else
      data.crop_size. Not allowed with symbolic_hw.
    symbolic_hw: H and W symbolic multiples of `hw_multiple`.
    hw_multiple: see symbolic_hw.
    platforms: 'cpu', 'cuda', 'rocm', 'tpu' (a sequence or 'cpu,cuda').
    weights: 'raw' or 'ema'.
    overwrite: replace an existing export in `out`.

  Returns:
    The signature written to signature.json.
  """
  platforms = parse_platforms(platforms)
  model_path = os.path.join(out, MODEL_FILE)
  sig_path = os.path.join(out, SIGNATURE_FILE)
  if not overwrite and (os.path.exists(model_path) or os.path.exists(sig_path)):
    raise FileExistsError(f'{out} already holds an export; pass --overwrite to replace it')
  config, variables, step, meta = restore_for_export(workdir, checkpoint, weights)
  if not symbolic_hw and (height is None or width is None):
    default = tuple(config.data.get('resize', ()) or ()) or tuple(config.data.crop_size)
    height = int(default[0]) if height is None else height
    width = int(default[1]) if width is None else width
  spec = input_spec(batch, height, width, symbolic_hw=symbolic_hw, hw_multiple=hw_multiple)
  model = state_lib.build_model(config)
  exported = export_model(model, variables, config.data.mean, config.data.std, spec,
                          platforms=platforms, model_name=str(config.model.name))
  data = bytes(exported.serialize())
  labels = labels_lib.spec_from_config(config.data)
  n_params = int(sum(np.size(x) for x in jax.tree.leaves(variables.get('params', {}))))
  signature = {
      'format': FORMAT,
      'model_file': MODEL_FILE,
      'sha256': hashlib.sha256(data).hexdigest(),
      'bytes': len(data),
      'input': {'name': 'images', 'shape': _dims(exported.in_avals[0].shape),
                'dtype': 'uint8', 'layout': 'NHWC', 'description': 'RGB in [0, 255]'},
      'output': {'name': 'logits', 'shape': _dims(exported.out_avals[0].shape),
                 'dtype': str(exported.out_avals[0].dtype), 'layout': 'NHWC',
                 'description': 'class logits at input resolution; softmax over the last '
                                'axis gives probabilities, argmax the class map'},
      'symbolic_hw_multiple': hw_multiple if symbolic_hw else None,
      'num_classes': labels.num_classes,
      'class_names': list(labels.names),
      'palette': labels.colors[:-1].tolist(),
      'ignore_label': labels.ignore_label,
      'mean': [float(v) for v in config.data.mean],
      'std': [float(v) for v in config.data.std],
      'platforms': list(exported.platforms),
      'source': {'workdir': os.path.abspath(workdir), 'checkpoint': str(checkpoint),
                 'step': int(step), 'weights': weights, 'metrics': meta.get('metrics'),
                 'model': str(config.model.name), 'backbone': str(config.model.backbone),
                 'num_parameters': n_params},
      'jax_version': jax.__version__,
      'calling_convention_version': int(exported.calling_convention_version),
  }
  os.makedirs(out, exist_ok=True)
  for path, payload, mode in ((model_path, data, 'wb'),
                              (sig_path, json.dumps(signature, indent=1) + '\n', 'w')):
    tmp = path + '.tmp'
    with open(tmp, mode) as f:
      f.write(payload)
    os.replace(tmp, path)
  return signature


# --------------------------------------------------------------------------- command line


def _batch_arg(text: str) -> int | None:
  if text == 'symbolic':
    return None
  if text.isdigit() and int(text) > 0:
    return int(text)
  raise cli.UsageError(f"--batch must be a positive int or 'symbolic', got {text!r}")


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side."""
  flags.DEFINE_string('workdir', None, 'The training run directory.', required=True,
                      flag_values=fv)
  flags.DEFINE_string('out', None, 'Output directory.', required=True, flag_values=fv)
  flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best' or a step.", flag_values=fv)
  flags.DEFINE_string('batch', 'symbolic', "Fixed batch size, or 'symbolic'.", flag_values=fv)
  flags.DEFINE_integer('height', None, 'Input height (default: data.resize, else '
                       'data.crop_size).', flag_values=fv)
  flags.DEFINE_integer('width', None, 'Input width (see --height).', flag_values=fv)
  flags.DEFINE_bool('symbolic_hw', False, 'Symbolic H and W, multiples of --hw_multiple '
                    '(unet, segnet).', flag_values=fv)
  flags.DEFINE_integer('hw_multiple', 32, 'With --symbolic_hw: H and W are multiples of this.',
                       flag_values=fv)
  flags.DEFINE_string('platforms', 'cpu', 'Comma-separated: cpu, cuda, rocm, tpu.',
                      flag_values=fv)
  flags.DEFINE_enum('weights', 'raw', list(run_dir.WEIGHTS), "Trained weights ('raw') or "
                    "their moving average ('ema').", flag_values=fv)
  flags.DEFINE_bool('overwrite', False, 'Replace an existing export.', flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  del argv
  if fv.symbolic_hw and (fv.height is not None or fv.width is not None):
    raise cli.UsageError('--symbolic_hw takes no --height/--width')
  sig = export_workdir(fv.workdir, fv.out, checkpoint=fv.checkpoint, batch=_batch_arg(fv.batch),
                       height=fv.height, width=fv.width, symbolic_hw=fv.symbolic_hw,
                       hw_multiple=fv.hw_multiple, platforms=fv.platforms,
                       weights=fv.weights, overwrite=fv.overwrite)
  print(f"Wrote {os.path.join(fv.out, MODEL_FILE)} ({sig['bytes']:,} bytes) and "
        f"{SIGNATURE_FILE}: {sig['source']['model']} step {sig['source']['step']}, "
        f"images uint8 {sig['input']['shape']} -> logits float32 {sig['output']['shape']}, "
        f"platforms {','.join(sig['platforms'])}.")
  return 0


if __name__ == '__main__':
  cli.run(main, define_flags)
