"""segjax.tools.predict: class-index PNGs, overlays and uncertainty maps for image files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from segjax import checkpoint as ckpt_lib
from segjax import config as config_lib
from segjax import writers
from segjax import optim
from segjax import cli
from segjax.tools import predict
from segjax import sharding
from segjax import train
from segjax.data import labels as labels_lib
from segjax.data import synthetic
from tests.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[1]
MEAN = np.asarray((123.675, 116.28, 103.53), np.float32)
STD = np.asarray((58.395, 57.12, 57.375), np.float32)
# name -> (height, width, format); e.PNG is grayscale with an upper-case suffix.
IMAGES = {'a.png': (32, 32, 'PNG'), 'b.png': (32, 32, 'PNG'), 'c.jpg': (40, 48, 'JPEG'),
          'sub/d.jpg': (40, 48, 'JPEG'), 'sub/e.PNG': (24, 40, 'PNG')}


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('predict') / 'run'
  train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir


@pytest.fixture(scope='module')
def model_and_variables(run_dir):
  config = tiny_config()
  model = train.build_model(config)
  mesh = sharding.make_mesh()
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(run_dir)), async_save=False)
  try:
    state, _ = ckpt.restore(ckpt.latest_step(), train.abstract_state(config, model, mesh))
  finally:
    ckpt.close()
  return model, train.variables_of(state)


@pytest.fixture(scope='module')
def input_dir(tmp_path_factory):
  """Synthetic-shape images of three sizes in a tree with a nested folder, a
  corrupt PNG and a text file."""
  root = tmp_path_factory.mktemp('inputs') / 'in'
  (root / 'sub').mkdir(parents=True)
  shapes = synthetic.SyntheticShapes(len(IMAGES), size=(48, 48), num_classes=4, split='test')
  for k, (name, (h, w, fmt)) in enumerate(IMAGES.items()):
    img = Image.fromarray(shapes[k]['image'][:h, :w])
    if name.endswith('.PNG'):
      img = img.convert('L')
    img.save(root / name, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
  (root / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'not really a png' * 4)
  (root / 'notes.txt').write_text('not an image')
  return root


def _rgb(path) -> np.ndarray:
  """The image as the test reads it: PIL's own RGB conversion."""
  return np.asarray(Image.open(path).convert('RGB'))


def _logits(model, variables, image_u8: np.ndarray) -> np.ndarray:
  """The model applied directly to one image, normalised here."""
  x = (image_u8[None].astype(np.float32) - MEAN) / STD
  apply = jax.jit(model.apply, static_argnames='train')
  return np.asarray(apply(variables, jnp.asarray(x), train=False))[0]


def _assert_argmax(pred: np.ndarray, logits: np.ndarray) -> None:
  """pred equals argmax(logits) wherever the top two logits are not a near tie
  (batched and single-image XLA programs may round differently), and near ties
  are rare."""
  assert pred.shape == logits.shape[:2]
  top2 = np.sort(logits, axis=-1)[..., -2:]
  clear = (top2[..., 1] - top2[..., 0]) > 1e-4
  assert clear.mean() > 0.99
  np.testing.assert_array_equal(pred[clear], np.argmax(logits, -1)[clear])


def _stem(name: str) -> str:
  return os.path.splitext(name)[0]


def test_folder_tree_predictions_overlays_and_failures(run_dir, model_and_variables,
                                                        input_dir, tmp_path, capsys):
  model, variables = model_and_variables
  out = tmp_path / 'out'
  summary = predict.run(str(run_dir), str(input_dir), str(out), alpha=0.3, batch_size=2)
  captured = capsys.readouterr()

  assert sorted(summary['predicted']) == sorted(str(input_dir / n) for n in IMAGES)
  assert [p for p, _ in summary['failed']] == [str(input_dir / 'broken.png')]
  assert 'broken.png' in summary['failed'][0][1]
  assert summary['output'] == str(out) and summary['step'] == 4
  skipped = [l for l in captured.err.splitlines() if l.startswith('skipped')]
  assert len(skipped) == 1 and 'broken.png' in skipped[0]
  assert 'predict: 6/6 files' in captured.err
  assert '5 images predicted, 1 failed' in captured.out

  # The output tree mirrors the input tree; no uncertainty maps without MC dropout.
  written = sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file())
  assert written == sorted(f'{_stem(n)}_{kind}.png' for n in IMAGES
                           for kind in ('pred', 'overlay'))

  palette = labels_lib.default_palette(4)
  for name, (h, w, _) in IMAGES.items():
    pred_img = Image.open(out / f'{_stem(name)}_pred.png')
    assert pred_img.mode == 'P' and pred_img.size == (w, h)
    assert np.array_equal(np.asarray(pred_img.getpalette()[:12], np.uint8).reshape(4, 3),
                          palette)
    pred = np.asarray(pred_img)
    image = _rgb(input_dir / name)
    # batch_size=2: same-size images share unpadded batches, so each
    # prediction is the model's on the image alone.
    _assert_argmax(pred, _logits(model, variables, image))
    want = np.round(0.7 * image.astype(np.float64) + 0.3 * palette[pred]).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(out / f'{_stem(name)}_overlay.png')),
                                  want)
  assert len(np.unique(np.asarray(Image.open(out / 'a_pred.png')))) > 1


def test_mixed_sizes_are_padded_to_the_batch_and_cropped_back(run_dir, model_and_variables,
                                                              input_dir, tmp_path):
  model, variables = model_and_variables
  out = tmp_path / 'out'
  # batch_size=8: no size fills a batch, so all five images share one batch
  # zero-padded (before normalisation, as evaluation pads) to 40x48.
  predict.run(str(run_dir), str(input_dir), str(out), batch_size=8)
  changed = 0
  for name, (h, w, _) in IMAGES.items():
    image = _rgb(input_dir / name)
    padded = np.zeros((40, 48, 3), np.uint8)
    padded[:h, :w] = image
    pred = np.asarray(Image.open(out / f'{_stem(name)}_pred.png'))
    _assert_argmax(pred, _logits(model, variables, padded)[:h, :w])
    changed += np.sum(pred != np.argmax(_logits(model, variables, image), -1))
  assert changed > 0  # Padding matters here, so the check above tells it apart.


def test_glob_and_single_file_inputs(run_dir, model_and_variables, input_dir, tmp_path):
  model, variables = model_and_variables
  summary = predict.run(str(run_dir), str(input_dir / '**' / '*.jpg'), str(tmp_path / 'g'))
  assert sorted(summary['predicted']) == [str(input_dir / 'c.jpg'),
                                          str(input_dir / 'sub' / 'd.jpg')]
  assert sorted(str(p.relative_to(tmp_path / 'g')) for p in (tmp_path / 'g').rglob('*.png')) == [
      'c_overlay.png', 'c_pred.png', 'sub/d_overlay.png', 'sub/d_pred.png']

  one = predict.run(str(run_dir), str(input_dir / 'sub' / 'd.jpg'), str(tmp_path / 's'))
  assert one['predicted'] == [str(input_dir / 'sub' / 'd.jpg')] and one['failed'] == []
  assert sorted(os.listdir(tmp_path / 's')) == ['d_overlay.png', 'd_pred.png']
  _assert_argmax(np.asarray(Image.open(tmp_path / 's' / 'd_pred.png')),
                 _logits(model, variables, _rgb(input_dir / 'sub' / 'd.jpg')))


def test_resize_config_predicts_at_that_size_and_resizes_back(run_dir, model_and_variables,
                                                              input_dir, tmp_path):
  model, variables = model_and_variables
  work = tmp_path / 'run'
  shutil.copytree(run_dir, work)
  config = json.loads((work / 'config.json').read_text())
  config['data']['resize'] = [24, 24]
  config['data']['crop_size'] = [24, 24]  # validate: a crop must fit in the resized image.
  (work / 'config.json').write_text(json.dumps(config))
  predict.run(str(work), str(input_dir / 'c.jpg'), str(tmp_path / 'out'))
  image = _rgb(input_dir / 'c.jpg')
  small = np.asarray(Image.fromarray(image).resize((24, 24), Image.BILINEAR))
  small_pred = np.argmax(_logits(model, variables, small), -1).astype(np.uint8)
  want = np.asarray(Image.fromarray(small_pred).resize((48, 40), Image.NEAREST))
  got = np.asarray(Image.open(tmp_path / 'out' / 'c_pred.png'))
  assert got.shape == (40, 48)
  np.testing.assert_array_equal(got, want)


def test_plan_batches_groups_sizes_and_pads_the_rest():
  sizes = [(32, 32), (40, 48), (32, 32), (24, 40), (32, 32), (40, 48), (32, 32), (64, 64)]
  plan = predict.plan_batches(sizes, 2)
  assert sorted(i for b in plan for i in b) == list(range(len(sizes)))
  # Four 32x32 images fill two batches, two 40x48 one; the rest is sorted.
  assert plan == [[0, 2], [4, 6], [1, 5], [3, 7]]
  assert predict.plan_batches(sizes, 8) == [[3, 0, 2, 4, 6, 1, 5, 7]]
  batch = predict.pad_batch([np.ones((2, 3, 3), np.uint8), np.full((3, 1, 3), 7, np.uint8)], 4)
  assert batch.shape == (4, 3, 3, 3)
  assert batch[0, :2, :3].min() == 1 and batch[0, 2:].max() == 0
  assert batch[1, :, :1].min() == 7 and batch[1, :, 1:].max() == 0 and batch[2:].max() == 0


def test_collect_inputs_names_and_exclusions(tmp_path):
  root = tmp_path / 'in'
  (root / 'x' / 'preds').mkdir(parents=True)
  for name in ('a.png', 'a.JPG', 'b.tif', 'x/c.bmp', 'x/preds/old_pred.png', 'x/readme.md'):
    (root / name).write_bytes(b'')
  got = predict.collect_inputs(str(root), exclude=str(root / 'x' / 'preds'))
  assert got == [(str(root / 'a.JPG'), 'a.JPG'), (str(root / 'a.png'), 'a.png'),
                 (str(root / 'b.tif'), 'b'), (str(root / 'x' / 'c.bmp'), os.path.join('x', 'c'))]
  with pytest.raises(FileNotFoundError, match='nope'):
    predict.collect_inputs(str(root / 'nope'))
  with pytest.raises(FileNotFoundError, match=r'\*\.gif'):
    predict.collect_inputs(str(root / '*.gif'))
  # The same name from two inputs cannot be written twice.
  (root / 'y').mkdir()
  shutil.copy(root / 'b.tif', root / 'y' / 'b.tif')
  with pytest.raises(ValueError, match=r'b\.tif and .*y/b\.tif would both be written as '
                     r'b\.tif_pred\.png'):
    predict.collect_inputs([str(root / 'b.tif'), str(root / 'y' / 'b.tif')])


def _bayesian_run(workdir: Path):
  """A Bayesian SegNet workdir (config.json + an untrained checkpoint)."""
  c = tiny_config()
  c.model.name = 'bayesian_segnet'
  c.model.backbone = 'vgg16_bn'
  c.model.output_stride = 32
  c.model.width_multiplier = 0.125
  c.model.kwargs = {}
  config_lib.validate(c)
  workdir.mkdir(parents=True)
  (workdir / 'config.json').write_text(c.to_json_best_effort(indent=1))
  model = train.build_model(c)
  mesh = sharding.make_mesh()
  tx, _ = optim.make_optimizer(c)
  state = train.init_state(c, model, tx, mesh)
  # A sharper classifier than the random init's, so that the entropy varies
  # over the image instead of being log(4) everywhere.
  params = dict(state.params)
  params['conv1_1_D'] = jax.tree.map(lambda x: 300.0 * x, params['conv1_1_D'])
  state = state.replace(params=params)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(workdir)), async_save=False)
  ckpt.save(0, state)
  ckpt.close()
  return c, model, train.variables_of(state)


def test_mc_dropout_writes_predictive_entropy(input_dir, tmp_path):
  config, model, variables = _bayesian_run(tmp_path / 'run')
  out = tmp_path / 'out'
  summary = predict.run(str(tmp_path / 'run'), str(input_dir / 'a.png'), str(out),
                        mc_samples=3, batch_size=1)
  assert summary['failed'] == []
  assert sorted(os.listdir(out)) == ['a_overlay.png', 'a_pred.png', 'a_uncertainty.png']
  # Independently: the mean softmax of three dropout passes with the keys the
  # module documents (batch 0 of the run: fold_in(fold_in(key(seed), 3), 0)).
  x = jnp.asarray((_rgb(input_dir / 'a.png')[None].astype(np.float32) - MEAN) / STD)
  mc = model.clone(mc_dropout=True)
  rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(int(config.seed)), 3), 0)
  probs = np.mean([np.asarray(jax.nn.softmax(
      mc.apply(variables, x, train=False, rngs={'dropout': jax.random.fold_in(rng, i)}), -1))
                   for i in range(3)], axis=0)[0]
  entropy = -np.sum(probs * np.log(probs), -1)
  want = writers.uncertainty_image(entropy, 4)
  got = np.asarray(Image.open(out / 'a_uncertainty.png'))
  assert got.shape == (32, 32, 3) and got.min() < 128 < got.max()  # Varies over the image.
  assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # Rounding of float sums.
  pred = np.asarray(Image.open(out / 'a_pred.png'))
  _assert_argmax(pred, np.log(probs))


def test_mc_samples_on_a_model_without_dropout_is_an_error(run_dir, input_dir, tmp_path):
  with pytest.raises(ValueError, match=r'mc_samples=3.*DeepLabV3Plus'):
    predict.run(str(run_dir), str(input_dir / 'a.png'), str(tmp_path / 'o'), mc_samples=3)


def test_cli(run_dir, input_dir, tmp_path, capsys):
  out = tmp_path / 'out'
  proc = subprocess.run(
      [sys.executable, '-m', 'segjax.tools.predict', f'--workdir={run_dir}', f'--input={input_dir}',
       f'--out={out}', '--batch_size=4', '--alpha=0.25'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr
  assert '5 images predicted, 1 failed' in proc.stdout
  assert 'broken.png' in proc.stderr
  assert (out / 'sub' / 'e_pred.png').is_file() and (out / 'sub' / 'e_overlay.png').is_file()
  # Errors are one line naming the problem, exit status 2.
  assert _cli(f'--workdir={run_dir}', f'--input={input_dir}', f'--out={out}', '--overwrite',
              '--checkpoint=999') == 2
  assert "checkpoint '999' not in" in capsys.readouterr().err
  assert _cli(f'--workdir={tmp_path}', f'--input={input_dir}', f'--out={tmp_path / "o2"}') == 2
  assert 'checkpoints: no such directory' in capsys.readouterr().err


def _cli(*argv) -> int:
  return cli.invoke(predict.define_flags, predict.main, list(argv), prog='segjax predict')


def test_refuses_a_folder_with_earlier_predictions_unless_overwrite(run_dir, input_dir, tmp_path,
                                                                    capsys):
  """Issue 15.9: a second predict into the same folder is refused, naming the
  folder and --overwrite; nothing there changes; --overwrite replaces."""
  out = tmp_path / 'out'
  predict.run(str(run_dir), str(input_dir / 'a.png'), str(out))
  first = (out / 'a_pred.png').read_bytes()
  (out / 'a_pred.png').write_bytes(b'earlier')  # Stands for an earlier, different prediction.
  with pytest.raises(FileExistsError, match=f'{out} already holds 1 predictions'):
    predict.run(str(run_dir), str(input_dir / 'a.png'), str(out))
  assert (out / 'a_pred.png').read_bytes() == b'earlier'
  capsys.readouterr()
  assert _cli(f'--workdir={run_dir}', f'--input={input_dir / "a.png"}', f'--out={out}') == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and '--overwrite' in err and str(out) in err
  predict.run(str(run_dir), str(input_dir / 'a.png'), str(out), overwrite=True)
  assert (out / 'a_pred.png').read_bytes() == first
