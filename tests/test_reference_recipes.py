"""The reference experiments' parts, each against a hand computation or formula:
Keras RMSprop, StepLR, the F-beta + CE loss, CIE L*a*b*, the #TP/#FP/#FN
report, best checkpoints by any metric, lowest-loss averaging, rotation from a
set, the DLCV layout and the frozen-encoder refusal."""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from segjax.tools import average_checkpoints as average
from segjax import checkpoint as ckpt_lib
from segjax import config as config_lib
from segjax import cli
from segjax.tools import iou_report
from segjax import losses
from segjax import optim
from segjax import sharding
from segjax import train
from segjax.data import color
from segjax.data import dlcv
from segjax.data import pipeline
from segjax.data import sources
from segjax.data import transforms
from tests.test_config import load


# --------------------------------------------------------------------------- optimizer


def _opt_config(**optimizer):
  c = config_lib.base_config()
  c.total_steps = 100
  c.schedule.name = 'constant'
  c.optimizer.update(name='rmsprop', lr=1e-3, rho=0.9, momentum=0.0, eps=1e-7,
                     weight_decay=0.0)
  c.optimizer.update(**optimizer)
  return c


@pytest.mark.parametrize('eps_in_sqrt', [False, True])
def test_rmsprop_two_steps_match_keras_by_hand(eps_in_sqrt):
  """Keras 2: v = rho v + (1 - rho) g^2, w -= lr g / (sqrt(v) + eps); Keras 3
  puts eps inside the root. Small gradients make the placement visible."""
  tx, _ = optim.make_optimizer(_opt_config(eps_in_sqrt=eps_in_sqrt))
  w = np.array([0.5, -1.0, 2.0])
  grads = [np.array([1e-4, -2e-5, 0.3]), np.array([-3e-4, 1e-5, 0.1])]
  params = {'w': jnp.asarray(w, jnp.float32)}
  state = tx.init(params)
  v = np.zeros(3)
  for g in grads:
    v = 0.9 * v + 0.1 * g**2
    denom = np.sqrt(v + 1e-7) if eps_in_sqrt else np.sqrt(v) + 1e-7
    w = w - 1e-3 * g / denom
    updates, state = tx.update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    params = {'w': params['w'] + updates['w']}
  np.testing.assert_allclose(np.asarray(params['w']), w, rtol=1e-6, atol=1e-9)


def test_step_lr_halves_every_ten_epochs():
  """torch StepLR(step_size=10 epochs, gamma=0.5), 5 steps per epoch."""
  c = load('satellite_fcn32s.py', 'train_images=40,crops_per_image=1')  # 5 steps/epoch.
  assert c.total_steps == 150 and c.schedule.boundaries == (50.0, 100.0)
  schedule = optim.make_schedule(c.schedule, c.optimizer.lr, c.total_steps)
  for step in (0, 49, 50, 99, 100, 149):
    epoch = step // 5
    assert float(schedule(step)) == pytest.approx(1e-4 * 0.5**(epoch // 10), rel=1e-6)


# --------------------------------------------------------------------------- losses


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_fbeta_ce_on_a_hand_worked_case():
  """3 classes, 4 pixels, one ignored; the write-up's formula in NumPy on the
  three valid pixels. Class 2 is absent and still counts in the mean."""
  logits = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
  labels = np.array([0, 1, 1, 255])
  p = _softmax(logits[:3])
  g = np.eye(3)[labels[:3]]
  beta, smooth = 2.0, 1e-5
  tp = (p * g).sum(0)
  fp = p.sum(0) - tp
  fn = g.sum(0) - tp
  score = ((1 + beta**2) * tp + smooth) / ((1 + beta**2) * tp + beta**2 * fn + fp + smooth)
  ce = -np.log(p[np.arange(3), labels[:3]]).mean()
  want = ce + 1 - score.mean()
  loss = losses.make_loss('fbeta_ce', fbeta_beta=beta, fbeta_smooth=smooth)
  got = float(loss(jnp.asarray(logits[None], jnp.float32), jnp.asarray(labels[None])))
  assert got == pytest.approx(want, rel=1e-5)
  # Class weights: a weighted mean of the scores, and a weighted CE.
  w = np.array([1.0, 3.0, 0.5])
  ce_w = (w[labels[:3]] * -np.log(p[np.arange(3), labels[:3]])).sum() / w[labels[:3]].sum()
  want_w = ce_w + 1 - (w * score).sum() / w.sum()
  loss_w = losses.make_loss('fbeta_ce', class_weights=tuple(w), fbeta_beta=beta,
                            fbeta_smooth=smooth)
  got_w = float(loss_w(jnp.asarray(logits[None], jnp.float32), jnp.asarray(labels[None])))
  assert got_w == pytest.approx(want_w, rel=1e-5)


def test_fbeta_with_beta_one_is_dice_over_all_classes():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 5, 4)).astype(np.float32)
  labels = rng.integers(0, 3, (2, 5, 5))  # Class 3 absent.
  p = _softmax(logits.astype(np.float64)).reshape(-1, 4)
  g = np.eye(4)[labels.reshape(-1)]
  dice = (2 * (p * g).sum(0) + 1.0) / (p.sum(0) + g.sum(0) + 1.0)
  got = float(losses.fbeta_loss(jnp.asarray(logits), jnp.asarray(labels), beta=1.0,
                                smooth=1.0))
  assert got == pytest.approx(1 - dice.mean(), rel=1e-5)


# --------------------------------------------------------------------------- colour


@pytest.mark.parametrize('rgb,lab', [
    ((255, 255, 255), (100.0, 0.0, 0.0)),
    ((0, 0, 0), (0.0, 0.0, 0.0)),
    ((255, 0, 0), (53.2408, 80.0925, 67.2032)),
    ((0, 255, 0), (87.7347, -86.1827, 83.1793)),
    ((0, 0, 255), (32.2970, 79.1875, -107.8602)),
    ((128, 128, 128), (53.5850, 0.0, 0.0)),
    # Both linear segments (sRGB c <= 0.04045, Y <= (6/29)^3): L = 903.3 Y.
    ((10, 10, 10), (903.2963 * 10 / 255 / 12.92, 0.0, 0.0)),
])
def test_lab_of_known_colours(rgb, lab):
  """Published CIE L*a*b* (D65) values of sRGB primaries, white, black, grey."""
  for xp in (np, jnp):
    got = np.asarray(color.rgb_to_lab(xp.asarray(np.array(rgb) / 255.0), xp))
    np.testing.assert_allclose(got, lab, atol=2e-3)


def test_bgr_lab_input_channels_and_model_tree():
  """6 channels: the normalised image reversed, then L/50-1, a/128, b/128; the
  wrapped model keeps its parameter paths and sees 6 input channels."""
  image = np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)[None]  # (1, 1, 2, 3)
  mean, std = (127.5,) * 3, (127.5,) * 3
  x = transforms.normalize(image, mean, std)
  feats = color.bgr_lab_features(x, mean, std)
  np.testing.assert_allclose(feats[..., :3], x[..., ::-1])
  np.testing.assert_allclose(feats[0, 0, 0, 3:], [53.2408 / 50 - 1, 80.0925 / 128,
                                                  67.2032 / 128], atol=1e-4)
  c = config_lib.base_config()
  c.model.name = 'dsrfcn'
  c.model.backbone = 'dsrfcn'
  c.model.output_stride = 32
  c.model.width_multiplier = 0.25
  plain = train.build_model(c)
  c.data.input_channels = 'bgr_lab'
  wrapped = train.build_model(c)
  x32 = jnp.zeros((1, 32, 32, 3))
  vp = jax.eval_shape(lambda: plain.init(jax.random.key(0), x32, train=False))
  vw = jax.eval_shape(lambda: wrapped.init(jax.random.key(0), x32, train=False))
  paths = lambda v: [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(v)]
  assert paths(vp) == paths(vw)
  in_channels = lambda v: {leaf.shape[-2] for path, leaf in
                           jax.tree_util.tree_leaves_with_path(v['params'])
                           if leaf.ndim == 4 and 'stem' in jax.tree_util.keystr(path).lower()}
  assert 3 in in_channels(vp) and 6 in in_channels(vw)


# --------------------------------------------------------------------------- report


def test_iou_counts_by_hand():
  cm = np.array([[5, 1, 0],   # rows: ground truth, columns: prediction
                 [2, 3, 1],
                 [0, 0, 0]])
  c = iou_report.class_counts(cm)
  np.testing.assert_array_equal(c['tp'], [5, 3, 0])
  np.testing.assert_array_equal(c['fp'], [2, 1, 1])
  np.testing.assert_array_equal(c['fn'], [1, 3, 0])
  np.testing.assert_allclose(c['iou'], [5 / 8, 3 / 7, 0.0])
  table = iou_report.format_counts(cm, ['a', 'b', 'c'])
  assert '| 01 b | 3 | 1 | 3 | 0.429 |' in table
  assert f'| mean IoU | | | | {(5 / 8 + 3 / 7 + 0) / 3:.3f} |' in table
  # A class absent from truth and prediction has no IoU and is left out.
  c2 = iou_report.class_counts(np.array([[4, 0], [0, 0]]))
  assert c2['iou'][0] == 1.0 and math.isnan(c2['iou'][1])


def test_iou_report_cli(tmp_path, capsys):
  path = tmp_path / 'eval.json'
  path.write_text(json.dumps({'confusion_matrix': [[2, 0], [1, 1]],
                              'IoU': {'road': 0.0, 'car': 0.0}}))
  assert cli.invoke(iou_report.define_flags, iou_report.main, [f'--result={path}']) == 0
  assert '| 00 road | 2 | 1 | 0 | 0.667 |' in capsys.readouterr().out
  (tmp_path / 'bad.json').write_text('{')
  assert cli.invoke(iou_report.define_flags, iou_report.main,
                    [f'--result={tmp_path / "bad.json"}']) == 2
  assert 'bad.json' in capsys.readouterr().err


# --------------------------------------------------------------------------- checkpoints


def _tree(step):
  return {'w': jnp.full((2,), float(step))}


def test_best_checkpoints_by_accuracy_and_by_lowest_loss(tmp_path):
  """keep_best=2 by max aAcc keeps the two most accurate steps besides the
  latest; best:K, lowest_loss:K and best_step follow the stored ranking."""
  evals = {1: (0.70, 0.9), 2: (0.90, 0.5), 3: (0.80, 0.4), 4: (0.60, 0.7), 5: (0.65, 0.8)}
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / 'acc'), keep=1, keep_best=2, async_save=False,
                               best_metric='aAcc', best_mode='max')
  for step, (acc, loss) in evals.items():
    ckpt.save(step, _tree(step), metrics={'aAcc': acc, 'loss': loss, 'mIoU': 1.0 - acc})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3, 5]
  assert ckpt.best_step() == 2 and ckpt.resolve('best') == 2
  assert average.select_steps(ckpt, 'best:2') == [2, 3]
  assert average.select_steps(ckpt, 'lowest_loss:2') == [2, 3]
  assert average.select_steps(ckpt, 'lowest_loss:1') == [3]
  with pytest.raises(ValueError, match='best_metric'):
    average.select_steps(ckpt, 'lowest_loss:4')
  ckpt.close()
  # Another manager without arguments ranks by what the steps were saved with.
  again = ckpt_lib.Checkpointer(str(tmp_path / 'acc'), async_save=False)
  assert again.best_step() == 2
  again.close()

  by_loss = ckpt_lib.Checkpointer(str(tmp_path / 'loss'), keep=1, keep_best=3,
                                  async_save=False, best_metric='loss', best_mode='min')
  for step, (acc, loss) in evals.items():
    by_loss.save(step, _tree(step), metrics={'aAcc': acc, 'loss': loss})
  by_loss.wait()
  # Lowest losses: 3 (0.4), 2 (0.5), 4 (0.7); and the latest, 5.
  assert by_loss.all_steps() == [2, 3, 4, 5]
  assert by_loss.best_step() == 3
  assert average.select_steps(by_loss, 'lowest_loss:3') == [2, 3, 4]
  by_loss.close()


# --------------------------------------------------------------------------- augmentation


def test_rotation_from_a_set():
  """prob 1: every draw is the input rotated by one of the angles (Pillow
  nearest on the label, ignore outside); every angle is drawn; prob 0: no-op."""
  rng_img = np.random.default_rng(1)
  label = rng_img.integers(0, 4, (17, 23)).astype(np.uint8)
  image = rng_img.integers(0, 256, (17, 23, 3)).astype(np.uint8)
  angles = (20.0, 45.0, 75.0)
  expected = {a: np.asarray(Image.fromarray(label).rotate(a, resample=Image.NEAREST,
                                                          fillcolor=255)) for a in angles}
  seen = set()
  rng = np.random.default_rng(0)
  for _ in range(30):
    _, out = transforms.random_rotate_from(image, label, rng, angles, 1.0, 255)
    match = [a for a, e in expected.items() if np.array_equal(out, e)]
    assert len(match) == 1
    seen.add(match[0])
  assert seen == set(angles)
  same_image, same_label = transforms.random_rotate_from(image, label, rng, angles, 0.0, 255)
  assert same_image is image and same_label is label
  hits = sum(transforms.random_rotate_from(image, label, rng, angles, 0.5, 255)[1] is not label
             for _ in range(400))
  assert 150 < hits < 250  # Binomial(400, 0.5): mean 200, sd 10.


# --------------------------------------------------------------------------- configs


def test_freeze_encoder_without_weights_is_refused():
  c = load('pets_unet_tutorial.py', '')
  c.data.root = '/data'
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  text = str(e.value)
  assert 'model.pretrained' in text
  assert 'segjax convert_weights --from=keras --arch=mobilenetv2' in text
  c.model.pretrained = '/weights/mnv2'
  config_lib.validate(c)
  c.model.pretrained = ''
  c.model.allow_random_frozen_encoder = True
  config_lib.validate(c)


def test_recipes_as_written():
  pets = load('pets_unet_tutorial.py', '')
  assert pets.data.mean == (0.0,) * 3 and pets.data.std == (255.0,) * 3
  assert (pets.batch_size, pets.total_steps, pets.optimizer.eps) == (64, 1140, 1e-7)
  sep = load('camvid_sepres_fcn.py', '')
  assert sep.data.num_classes == 12 and sep.data.label_map == ''
  assert (sep.optimizer.rho, sep.optimizer.momentum, sep.optimizer.eps_in_sqrt) == (
      0.9, 0.0, False)
  assert (sep.total_steps, sep.eval_every) == (180 * 12, 12)
  assert (sep.reduce_on_plateau.metric, sep.reduce_on_plateau.factor,
          sep.reduce_on_plateau.patience) == ('aAcc', 0.01, 2)
  assert (sep.early_stopping.metric, sep.early_stopping.patience) == ('loss', 10)
  assert sep.checkpoint.best_metric == 'aAcc'
  held = load('camvid_sepres_fcn.py', 'split=heldout,lab')
  assert held.data.input_channels == 'bgr_lab'
  # The DeepLabV3+ CamVid recipe holds out the same sequence.
  recipe = load('camvid.py', 'recipe=cpu,split=heldout')
  assert (recipe.data.train_split, recipe.data.val_split) == (
      held.data.train_split, held.data.val_split) == ('train[62:]+val', 'train[:62]')
  root = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'camvid')
  if os.path.isdir(root):  # The held-out split is exactly sequence 0001TP.
    held.data.root = root
    val = sources.make_source(held.data, held.data.val_split)
    train_src = sources.make_source(held.data, held.data.train_split)
    assert len(val) == 62 and len(train_src) == 406
    assert all(os.path.basename(p[0]).startswith('0001TP') for p in val.pairs)
    assert not any(os.path.basename(p[0]).startswith('0001TP')
                   for s in train_src.sources for p in s.pairs)


# --------------------------------------------------------------------------- DLCV


# The DLCV / DeepGlobe land-cover colours, written out independently of dlcv.py.
DLCV_COLOURS = {(0, 255, 255): 0, (255, 255, 0): 1, (255, 0, 255): 2, (0, 255, 0): 3,
                (0, 0, 255): 4, (255, 255, 255): 5, (0, 0, 0): 255}


def test_dlcv_layout_decodes_colours_and_ignores_unknown(tmp_path):
  root = str(tmp_path)
  dlcv.write_generated(root, 'train', 3, size=32)
  dlcv.write_generated(root, 'validation', 2, size=32)
  dlcv.write_list_files(root)
  assert open(os.path.join(root, 'train.txt')).read().splitlines()[0] == (
      'train/0000_sat.jpg train/0000_mask.png')
  c = load('satellite_fcn32s.py', '')
  c.data.root = root
  src = sources.make_source(c.data, 'train')
  assert len(src) == 3
  unknown = 0
  for i in range(3):
    rgb = np.asarray(Image.open(os.path.join(root, 'train', f'{i:04d}_mask.png')).convert('RGB'))
    want = np.full(rgb.shape[:2], -1)
    for colour, k in DLCV_COLOURS.items():
      want[(rgb == colour).all(-1)] = k
    assert (want >= 0).all()
    unknown += int((want == 255).sum())
    np.testing.assert_array_equal(src[i]['label'], want)
  assert unknown > 0  # The generated masks hold some 'unknown' pixels.
  os.remove(os.path.join(root, 'validation', '0001_mask.png'))
  with pytest.raises(ValueError, match='0001_sat.jpg: no mask'):
    dlcv.pairs(root, 'validation')


# --------------------------------------------------------------------------- end to end


def test_satellite_recipe_trains_on_dlcv_layout_and_averages_lowest_loss(tmp_path):
  """The satellite recipe (crops, flips, rotation from the set, StepLR, keep
  the three lowest-val-loss checkpoints) on a generated dataset in the DLCV
  layout, with the recipe's own VGG16-FCN32s at 32x32 crops; the ensemble
  averages exactly the three steps whose eval JSONs report the lowest val
  loss."""
  root = str(tmp_path / 'p2_data')
  dlcv.write_generated(root, 'train', 8, size=40)
  dlcv.write_generated(root, 'validation', 2, size=32)
  dlcv.write_list_files(root)
  c = load('satellite_fcn32s.py', 'train_images=8,crops_per_image=1,steps=5')
  assert c.checkpoint.keep_best == 3 and c.augment.rotate_prob == 0.5
  c.data.root = root
  c.data.crop_size = (32, 32)
  assert (c.model.name, c.model.backbone) == ('fcn32s_sat', 'vgg16')
  c.eval.batch_size = 2
  c.eval.num_panel_images = 0
  c.checkpoint.keep = 1
  c.checkpoint.async_save = False
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config_lib.validate(c), workdir)
  losses_by_step = {}
  for name in os.listdir(os.path.join(workdir, 'eval')):
    if name.startswith('validation_') and name.endswith('.json') and '_ema' not in name:
      with open(os.path.join(workdir, 'eval', name)) as f:
        r = json.load(f)
      losses_by_step[r['step']] = r['loss']
  assert sorted(losses_by_step) == [1, 2, 3, 4, 5]
  lowest = sorted(sorted(losses_by_step, key=lambda s: (losses_by_step[s], s))[:3])
  out = str(tmp_path / 'ensemble')
  res = average.average(workdir, 'lowest_loss:3', out)
  assert res['steps'] == lowest
  # The averaged score32 kernel is the mean of the three checkpoints'.
  mesh_abstract = train.abstract_state(c, train.build_model(c), sharding.make_mesh())
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False)
  kernels = [np.asarray(ckpt.restore(s, mesh_abstract)[0].params['classifier']['kernel'])
             for s in lowest]
  ckpt.close()
  avg_ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(out), async_save=False)
  avg_state, _ = avg_ckpt.restore(avg_ckpt.latest_step(), mesh_abstract)
  avg_ckpt.close()
  np.testing.assert_allclose(np.asarray(avg_state.params['classifier']['kernel']),
                             np.mean(kernels, axis=0), rtol=1e-6, atol=1e-7)


def test_camvid_sepres_lab_config_builds_a_six_channel_stem():
  """The CamVid config's own model with lab: the stem convolves 6 channels
  (shapes only, nothing compiled)."""
  c = load('camvid_sepres_fcn.py', 'lab')
  model = train.build_model(c)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))
  stem = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(shapes['params'])
          if 'stem' in jax.tree_util.keystr(path) and leaf.ndim == 4]
  assert stem == [(3, 3, 6, 16)]
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3)), train=False),
                          shapes)
  assert logits.shape == (2, 224, 224, 12)


@pytest.mark.parametrize('key,value,match', [
    ('checkpoint.best_metric', 'accuracy', 'checkpoint.best_metric'),
    ('checkpoint.best_mode', 'lowest', 'checkpoint.best_mode'),
    ('augment.rotate_prob', 1.5, 'augment.rotate_prob'),
    ('augment.rotate_angles', ('20',), 'augment.rotate_angles'),
    ('loss.fbeta_beta', 0.0, 'loss.fbeta_beta'),
    ('loss.name', 'fbeta', 'loss.name'),
    ('data.input_channels', 'lab', 'data.input_channels'),
])
def test_new_keys_are_validated(key, value, match):
  c = config_lib.base_config()
  section, _, leaf = key.rpartition('.')
  with c[section].ignore_type():
    c[section][leaf] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)
