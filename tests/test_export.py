"""Serialized inference export: outputs equal the model's, shapes, loader, CLI.

Tolerance. The exported module is the model's forward pass lowered by the same
jax on the same XLA:CPU backend; the difference from a jitted `model.apply`
is that the weights are constants, which XLA may fold (e.g. BatchNorm scales
into convolutions) and so round in a different order. That moves a logit by a
few float32 ulps per layer: measured 0 against jit and 9.7e-8 (4.5e-7 of the
largest |logit|) against op-by-op `model.apply`. The tests allow 1e-5 of the
largest |logit| (~80 ulps). Real export bugs are O(1): a missing or doubled
normalisation, the wrong checkpoint (step 2 vs 4 differ by far more, checked
below), training-mode BatchNorm, or the wrong output head.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import checkpoint as ckpt_lib
from segjax import cli
from segjax.tools import export
from segjax import models
from segjax import sharding
from segjax import train
from segjax.data import labels as labels_lib
from tests.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[1]
REL_TOL = 1e-5


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A tiny trained DeepLabV3+ run with checkpoints at steps 2 and 4."""
  workdir = tmp_path_factory.mktemp('export') / 'run'
  train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir


def _restored(workdir, step):
  """(config, variables) of checkpoint `step`, restored without segjax.tools.export."""
  config = tiny_config()
  model = train.build_model(config)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(workdir)), async_save=False)
  try:
    state, _ = ckpt.restore(step, train.abstract_state(config, model, sharding.make_mesh()))
  finally:
    ckpt.close()
  return config, train.variables_of(state)


def _reference_logits(workdir, step, images):
  """The model's own logits: (x - mean) / std in NumPy, then jitted apply."""
  config, variables = _restored(workdir, step)
  model = train.build_model(config)
  x = (images.astype(np.float64) - np.array(config.data.mean)) / np.array(config.data.std)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x.astype(np.float32))
  return np.asarray(out, np.float32)


def _images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _assert_close(got, ref):
  got = np.asarray(got)
  assert got.shape == ref.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, ref, rtol=0, atol=REL_TOL * np.abs(ref).max())


def test_fixed_batch_export_matches_model_and_signature(run_dir, tmp_path):
  out = tmp_path / 'fixed'
  sig = export.export_workdir(str(run_dir), str(out), batch=2)
  on_disk = json.loads((out / 'signature.json').read_text())
  assert on_disk == sig
  spec = labels_lib.spec_from_config(tiny_config().data)
  assert sig['input']['shape'] == [2, 32, 32, 3] and sig['input']['dtype'] == 'uint8'
  assert sig['output']['shape'] == [2, 32, 32, spec.num_classes]
  assert sig['output']['dtype'] == 'float32' and sig['output']['name'] == 'logits'
  assert sig['class_names'] == list(spec.names)
  assert sig['palette'] == spec.colors[:spec.num_classes].tolist()
  assert sig['mean'] == list(tiny_config().data.mean)
  assert sig['std'] == list(tiny_config().data.std)
  assert sig['platforms'] == ['cpu']
  assert sig['source']['step'] == 4 and sig['source']['workdir'] == str(run_dir)
  assert sig['bytes'] == os.path.getsize(out / 'model.stablehlo')

  model = export.load(str(out))
  images = _images((2, 32, 32, 3))
  _assert_close(model(images), _reference_logits(run_dir, 4, images))
  with pytest.raises(ValueError, match=r'\(3, 32, 32, 3\).*\[2, 32, 32, 3\]'):
    model(_images((3, 32, 32, 3)))
  with pytest.raises(TypeError, match='uint8'):
    model(images.astype(np.float32))
  with pytest.raises(FileExistsError, match='--overwrite'):
    export.export_workdir(str(run_dir), str(out), batch=2)


def test_symbolic_batch_runs_at_batch_1_and_3(run_dir, tmp_path):
  out = tmp_path / 'symbolic'
  sig = export.export_workdir(str(run_dir), str(out))  # --batch=symbolic is the default.
  assert sig['input']['shape'] == ['b', 32, 32, 3]
  assert sig['output']['shape'][0] == 'b'
  model = export.load(str(out))
  images = _images((3, 32, 32, 3), seed=1)
  ref = _reference_logits(run_dir, 4, images)
  _assert_close(model(images), ref)
  _assert_close(model(images[1:2]), ref[1:2])
  with pytest.raises(ValueError, match=r'\(1, 32, 48, 3\)'):
    model(_images((1, 32, 48, 3)))


def test_loader_runs_without_model_code(run_dir, tmp_path):
  """load() in a fresh process: jax + json only, no flax / orbax / segjax models."""
  out = tmp_path / 'standalone'
  export.export_workdir(str(run_dir), str(out))
  images = _images((2, 32, 32, 3), seed=2)
  np.save(tmp_path / 'images.npy', images)
  script = textwrap.dedent(f"""
    import sys; sys.path.insert(0, {str(ROOT)!r})
    import numpy as np
    from segjax.exported import load
    model = load({str(out)!r})
    np.save({str(tmp_path / 'logits.npy')!r}, np.asarray(model(np.load({str(tmp_path / 'images.npy')!r}))))
    bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'orbax', 'optax', 'grain')
                 or m.startswith(('segjax.models', 'segjax.train', 'segjax.data')))
    print('MODULES', bad)
  """)
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        timeout=300, cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'MODULES []' in proc.stdout, proc.stdout
  _assert_close(np.load(tmp_path / 'logits.npy'), _reference_logits(run_dir, 4, images))


def test_cli_exports_a_step_for_several_platforms(run_dir, tmp_path):
  out = tmp_path / 'cli'
  proc = subprocess.run(
      [sys.executable, '-m', 'segjax.tools.export', f'--workdir={run_dir}', f'--out={out}',
       '--checkpoint=2', '--batch=1', '--platforms=cpu,cuda,tpu'],
      capture_output=True, text=True, timeout=300, cwd=str(ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'step 2' in proc.stdout and 'cpu,cuda,tpu' in proc.stdout
  model = export.load(str(out))
  assert model.signature['platforms'] == ['cpu', 'cuda', 'tpu']
  assert model.signature['source']['step'] == 2
  assert model.signature['input']['shape'] == [1, 32, 32, 3]
  images = _images((1, 32, 32, 3), seed=3)
  got = np.asarray(model(images))
  ref2 = _reference_logits(run_dir, 2, images)
  _assert_close(got, ref2)
  # The test can tell the steps apart: step 4's logits are far outside the tolerance.
  ref4 = _reference_logits(run_dir, 4, images)
  assert np.abs(ref4 - ref2).max() > 100 * REL_TOL * np.abs(ref2).max()


def _cli(*argv) -> int:
  return cli.invoke(export.define_flags, export.main, list(argv), prog='segjax export')


def test_bad_checkpoint_names_the_kept_steps(run_dir, tmp_path, capsys):
  assert _cli(f'--workdir={run_dir}', f'--out={tmp_path / "x"}', '--checkpoint=3') == 2
  err = capsys.readouterr().err
  assert "checkpoint '3'" in err and '[2, 4]' in err
  assert not (tmp_path / 'x').exists()


def test_symbolic_hw_is_refused_for_deeplab(run_dir, tmp_path, capsys):
  with pytest.raises(export.ExportError, match="'deeplabv3plus' cannot be exported with "
                     'symbolic H/W'):
    export.export_workdir(str(run_dir), str(tmp_path / 'hw'), symbolic_hw=True)
  capsys.readouterr()
  assert _cli(f'--workdir={run_dir}', f'--out={tmp_path / "hw"}', '--symbolic_hw',
              '--height=32') == 2
  assert capsys.readouterr().err == 'ERROR: --symbolic_hw takes no --height/--width\n'


def test_wrong_platform_and_corrupt_file(run_dir, tmp_path):
  out = tmp_path / 'tpu'
  export.export_workdir(str(run_dir), str(out), batch=1, platforms='tpu')
  with pytest.raises(ValueError, match=r"exported for platforms \['tpu'\].*--platforms=tpu,cpu"):
    export.load(str(out))(_images((1, 32, 32, 3)))
  data = bytearray((out / 'model.stablehlo').read_bytes())
  data[len(data) // 2] ^= 1
  (out / 'model.stablehlo').write_bytes(bytes(data))
  with pytest.raises(ValueError, match='SHA-256'):
    export.load(str(out))
  with pytest.raises(export.ExportError, match="'gpu'"):
    export.parse_platforms('cpu,gpu')


def test_symbolic_hw_unet_runs_at_several_sizes():
  """U-Net has no static resize: one export serves any multiple of 32."""
  model = models.get_model('unet', num_classes=3, backbone='mobilenetv2', width_multiplier=0.35,
                           decoder_filters=(16, 16, 16, 16))
  variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)},
                         jnp.zeros((1, 32, 32, 3)), train=False)
  mean, std = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)
  spec = export.input_spec(None, None, None, symbolic_hw=True, hw_multiple=32)
  exported = export.export_model(model, variables, mean, std, spec, model_name='unet')
  assert [str(d) for d in exported.in_avals[0].shape] == ['b', '32*h', '32*w', '3']
  restored = jax.export.deserialize(exported.serialize())
  apply = jax.jit(lambda x: model.apply(variables, x, train=False))
  for shape in ((1, 32, 32, 3), (2, 64, 96, 3)):
    images = _images(shape, seed=shape[2])
    x = ((images.astype(np.float64) - np.array(mean)) / np.array(std)).astype(np.float32)
    _assert_close(restored.call(images), np.asarray(apply(x)))
  with pytest.raises(Exception, match='32'):  # 48 is not a multiple of 32.
    restored.call(_images((1, 48, 32, 3)))
