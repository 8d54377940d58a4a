"""The DeepLabV3+ benchmark recipes (configs/benchmarks_deeplabv3plus.py):
each loads and validates with mmsegmentation's published hyperparameters
(written out here from its configs), and trains two steps, evaluates and
predicts on a tiny copy of its dataset's official layout
(tests/benchmark_fixtures.py), with a small model in place of ResNet."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs import benchmarks_deeplabv3plus as recipe
from segjax import config as config_lib
from segjax import evaluate as eval_lib
from segjax import optim
from segjax import train
from segjax.tools import evaluate as evaluate_tool
from segjax.tools import predict
from tests import benchmark_fixtures as fx

# From mmsegmentation: (crop (h, w), batch = GPUs x per GPU, iterations allowed).
MMSEG = {
    'cityscapes': ((512, 1024), 4 * 2, (40000, 80000), 19),
    'ade20k': ((512, 512), 4 * 4, (80000, 160000), 150),
    'voc_aug': ((512, 512), 4 * 4, (20000, 40000), 21),
}


@pytest.mark.parametrize('dataset', list(MMSEG))
@pytest.mark.parametrize('backbone', ['resnet50', 'resnet101'])
def test_recipe_holds_the_published_hyperparameters(dataset, backbone):
  crop, batch, iters_allowed, n = MMSEG[dataset]
  for iters in iters_allowed:
    c = recipe.get_config(f'dataset={dataset},backbone={backbone},iters={iters // 1000}k')
    c.data.root = '/data'
    config_lib.validate(c)
    assert (c.model.name, c.model.backbone, c.model.output_stride) == (
        'deeplabv3plus', backbone, 8)
    assert (c.model.kwargs.aspp_channels, c.model.kwargs.decoder_channels) == (512, 512)
    assert tuple(c.data.crop_size) == crop and c.batch_size == batch
    assert c.total_steps == iters and c.eval_every == iters // 10
    assert c.data.num_classes == n and c.augment.scale_range == (0.5, 2.0) and c.augment.hflip
    assert (c.optimizer.name, c.optimizer.lr, c.optimizer.momentum,
            c.optimizer.weight_decay) == ('sgd', 0.01, 0.9, 5e-4)
    assert c.optimizer.decay_norms_and_biases  # mmseg decays norms and biases too.
    assert c.eval.mode == 'whole' and c.schedule.warmup_steps == 0
    # PolyLR(power=0.9, eta_min=1e-4): (0.01 - 1e-4) (1 - t / T)^0.9 + 1e-4.
    schedule = optim.make_schedule(c.schedule, c.optimizer.lr, c.total_steps)
    for t in (0, iters // 3, iters - 1, iters):
      want = (0.01 - 1e-4) * (1 - t / iters)**0.9 + 1e-4
      assert float(schedule(t)) == pytest.approx(want, rel=1e-5)
    assert (dataset, backbone, iters) in recipe.PUBLISHED
  tta = recipe.get_config(f'dataset={dataset},tta')
  assert tta.eval.flip and tta.eval.scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def test_recipe_model_has_mmsegs_heads():
  """Shapes only (nothing compiled): ResNet-50 at output stride 8, ASPP and
  decoder of 512 channels, and the auxiliary FCNHead of mmsegmentation's
  deeplabv3plus_r50-d8 (stage 3's 1024 channels -> 3x3 conv 256 -> 1x1 to the
  classes), both outputs at input size."""
  c = recipe.get_config('dataset=cityscapes')
  c.data.root = '/data'
  model = train.build_model(config_lib.validate(c))
  x = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  aux = variables['params']['aux_head']
  assert aux['conv']['kernel'].shape == (3, 3, 1024, 256)
  assert aux['classifier']['kernel'].shape == (1, 1, 256, 19)
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out['logits'].shape == out['aux'].shape == (1, 64, 64, 19)
  kernels = [(jax.tree_util.keystr(p), leaf.shape) for p, leaf in
             jax.tree_util.tree_leaves_with_path(variables['params'])
             if leaf.ndim == 4 and 'backbone' not in jax.tree_util.keystr(p)]
  assert ("['classifier']['kernel']", (1, 1, 512, 19)) in kernels  # Decoder: 512 channels.
  assert [s for k, s in kernels if 'low_level_proj' in k] == [(1, 1, 256, 48)]


def test_recipe_arguments_are_checked():
  with pytest.raises(ValueError, match='iters'):
    recipe.get_config('dataset=cityscapes,iters=160k')
  with pytest.raises(ValueError, match='dataset'):
    recipe.get_config('dataset=coco_stuff')
  with pytest.raises(ValueError, match='backbone'):
    recipe.get_config('backbone=mobilenetv2')
  assert recipe.PUBLISHED[('cityscapes', 'resnet50', 80000)] == (80.09, 81.13)
  assert recipe.PUBLISHED[('voc_aug', 'resnet50', 40000)][0] == 76.81


def _fixture(dataset, root):
  if dataset == 'cityscapes':
    return fx.cityscapes(root, list(range(34)))
  if dataset == 'ade20k':
    return fx.ade20k(root, [*range(151), 255])
  c = recipe.get_config('dataset=voc_aug')
  return fx.voc(root, [*range(21), 255], aug_values=[255, *range(21)], palette=c.data.palette)


def _tiny(c, root):
  """The recipe with a small model (the auxiliary head kept), tiny crops and
  two steps (a CPU test)."""
  c.data.root = str(root)
  c.data.crop_size = (16, 16)
  c.batch_size = 2
  c.total_steps = c.eval_every = c.checkpoint_every = 2
  c.log_every = 1
  c.eval.batch_size = 2
  c.eval.num_panel_images = 0
  c.model.backbone = 'mobilenetv2'
  c.model.width_multiplier = 0.35
  c.model.output_stride = 16
  c.model.kwargs.aspp_channels = 16
  c.model.kwargs.decoder_channels = 16
  c.model.kwargs.aux_channels = 16
  # XLA's grouped convolution: smaller programs than the CPU default's shifted
  # sums, so the three compiles are quicker (speed at this size does not matter).
  c.model.kwargs.depthwise_impl = 'xla'
  c.checkpoint.keep = 1
  c.checkpoint.async_save = False
  return config_lib.validate(c)


@pytest.mark.parametrize('dataset', list(MMSEG))
def test_recipe_trains_evaluates_and_predicts_on_its_layout(tmp_path, dataset):
  root = tmp_path / 'data'
  written = _fixture(dataset, root)
  c = _tiny(recipe.get_config(f'dataset={dataset}'), root)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(c, workdir)
  val = c.data.val_split
  with open(eval_lib.result_stem(workdir, val, 2) + '.json') as f:
    result = json.load(f)
  assert result['step'] == 2 and np.isfinite(result['loss'])
  # The confusion matrix counts exactly the not-ignored pixels of the val masks.
  expected_valid = {'cityscapes': lambda v: v in (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23,
                                                  24, 25, 26, 27, 28, 31, 32, 33),
                    'ade20k': lambda v: 1 <= v <= 150, 'voc_aug': lambda v: v <= 20}[dataset]
  valid = sum(expected_valid(int(v)) for _, _, raw in written[val] for v in raw.ravel())
  assert int(np.sum(result['confusion_matrix'])) == valid
  if dataset != 'cityscapes':
    return
  # The evaluate tool and predict read the same preset from the run directory.
  again = evaluate_tool.run(workdir)
  assert int(np.sum(again['confusion_matrix'])) == valid
  image = os.path.join(str(root), written['val'][0][0])
  out = tmp_path / 'pred'
  summary = predict.run(workdir, image, str(out), batch_size=1)
  assert summary['predicted'] == [image] and not summary['failed']
  [pred] = [p for p in out.rglob('*_pred.png')]
  colours = {tuple(int(v) for v in px) for px in np.asarray(
      Image.open(pred).convert('RGB')).reshape(-1, 3)}
  assert colours <= set(map(tuple, c.data.palette))  # Cityscapes colours only.
