"""Checkpoint averaging: exact means, step selection, BatchNorm re-estimation, eval of the output."""

from __future__ import annotations

import glob
import json
import os
import shutil

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.tools import average_checkpoints as average
from segjax.tools import evaluate as evaluate_tool
from segjax import checkpoint as ckpt_lib
from segjax import cli
from segjax import evaluate
from segjax import sharding as sharding_lib
from segjax import train
from segjax.data import pipeline
from segjax.data import transforms
from tests.test_train import tiny_config


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A 6-step tiny run evaluated (and checkpointed) at steps 2, 4 and 6, all kept."""
  workdir = str(tmp_path_factory.mktemp('avg') / 'run')
  train.train_and_evaluate(tiny_config(total_steps=6, **{'checkpoint.keep': 3}), workdir)
  return workdir


def _restore(workdir, config):
  """(state, meta) of the only/latest checkpoint of workdir."""
  model = train.build_model(config)
  abstract = train.abstract_state(config, model, sharding_lib.make_mesh())
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False)
  try:
    steps = ckpt.all_steps()
    state, meta = ckpt.restore(steps[-1], abstract)
  finally:
    ckpt.close()
  return steps, state, meta


def _cli(*argv) -> int:
  return cli.invoke(average.define_flags, average.main, list(argv),
                    prog='segjax average_checkpoints')


def _flat(tree):
  return {'/'.join(k): np.asarray(v) for k, v in
          flax.traverse_util.flatten_dict(flax.core.unfreeze(jax.device_get(tree))).items()}


def test_two_handmade_checkpoints_average_to_their_exact_mean(run, tmp_path):
  config = average.load_config(run)
  model = train.build_model(config)
  abstract = train.abstract_state(config, model, sharding_lib.make_mesh())
  rng = np.random.default_rng(0)

  def random_state(step):
    state = jax.tree.map(lambda a: jnp.asarray(
        rng.normal(size=a.shape).astype(a.dtype) if jnp.issubdtype(a.dtype, jnp.floating)
        else np.zeros(a.shape, a.dtype)), abstract)
    return state.replace(step=jnp.asarray(step, jnp.int32))

  a, b = random_state(10), random_state(20)
  hand = tmp_path / 'hand'
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(hand)), async_save=False)
  ckpt.save(10, a, metrics={'mIoU': 0.3})
  ckpt.save(20, b, metrics={'mIoU': 0.5})
  ckpt.close()
  shutil.copyfile(os.path.join(run, 'config.json'), hand / 'config.json')

  res = average.average(str(hand), '10,20', str(tmp_path / 'out'))
  assert res['steps'] == [10, 20] and res['step'] == 20
  assert res['source_metrics'] == {10: 0.3, 20: 0.5}
  steps, out, meta = _restore(str(tmp_path / 'out'), config)
  assert steps == [20]
  for name in ('params', 'batch_stats'):
    fa, fb, fo = _flat(getattr(a, name)), _flat(getattr(b, name)), _flat(getattr(out, name))
    assert fo.keys() == fa.keys() and fo
    for k in fo:
      assert fo[k].dtype == np.float32
      np.testing.assert_array_equal(fo[k], (fa[k] + fb[k]) / np.float32(2), err_msg=k)
  # Everything else is the last averaged checkpoint's.
  assert int(out.step) == 20
  for x, y in zip(jax.tree.leaves(out.opt_state), jax.tree.leaves(b.opt_state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert meta['averaged_from']['steps'] == [10, 20]
  assert meta['averaged_from']['workdir'] == str(hand)
  assert meta['batch_stats'] == 'averaged'
  assert meta['config'] == json.loads(config.to_json_best_effort())
  assert (tmp_path / 'out' / 'config.json').read_bytes() == (hand / 'config.json').read_bytes()
  # The output is not overwritten by a second average.
  with pytest.raises(FileExistsError, match='already holds checkpoints'):
    average.average(str(hand), '10,20', str(tmp_path / 'out'))


def test_best_and_latest_select_the_right_steps(run):
  # mIoU per step from the eval JSONs training wrote, independent of checkpoint metas.
  miou = {json.load(open(f))['step']: json.load(open(f))['mIoU']
          for f in glob.glob(os.path.join(run, 'eval', 'val_*.json'))}
  assert sorted(miou) == [2, 4, 6]
  ranked = sorted(miou, key=lambda s: (-miou[s], s))
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(run), async_save=False)
  try:
    assert average.select_steps(ckpt, 'best:2') == sorted(ranked[:2])
    assert average.select_steps(ckpt, 'best:1') == [ckpt.resolve('best')] == [ranked[0]]
    assert average.select_steps(ckpt, 'best:3') == [2, 4, 6]
    assert average.select_steps(ckpt, 'latest:2') == [4, 6]
    assert average.select_steps(ckpt, ' 6, 2 ') == [2, 6]
    with pytest.raises(ValueError, match=r"only 3 of the kept checkpoints .* have a val rank "
                       r'\(checkpoint.best_metric\): 2 \([0-9.]+\), 4 \([0-9.]+\), 6 \('):
      average.select_steps(ckpt, 'best:4')
    with pytest.raises(ValueError, match=r'only 3 checkpoints are kept .* steps \[2, 4, 6\]'):
      average.select_steps(ckpt, 'latest:5')
    with pytest.raises(FileNotFoundError, match=r'steps \[3, 99\] are not in .*kept steps: '
                       r'\[2, 4, 6\]'):
      average.select_steps(ckpt, '2,3,99')
    for bad in ('worst:2', 'best:0', 'best:x', 'a,b'):
      with pytest.raises(ValueError, match=r"expected 'best:K'"):
        average.select_steps(ckpt, bad)
  finally:
    ckpt.close()


def test_cli_error_names_missing_steps(run, tmp_path, capsys):
  assert _cli(f'--workdir={run}', '--steps=4,8', f'--out={tmp_path / "x"}') == 2
  err = capsys.readouterr().err
  assert 'steps [8] are not in' in err and '[2, 4, 6]' in err
  assert not (tmp_path / 'x').exists()


def test_output_dir_evaluates_as_the_mean_of_its_sources(run, tmp_path):
  out = str(tmp_path / 'avg')
  assert average.average(run, 'latest:2', out)['steps'] == [4, 6]
  config = average.load_config(out)  # The config comes from the output dir.
  result = evaluate_tool.run(out)
  assert result['step'] == 6
  assert os.path.isfile(os.path.join(out, 'eval', 'val_00000006.json'))

  # Independently: evaluate the numpy mean of the two source checkpoints.
  model = train.build_model(config)
  mesh = sharding_lib.make_mesh()
  abstract = train.abstract_state(config, model, mesh)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(run), async_save=False)
  try:
    s4, _ = ckpt.restore(4, abstract)
    s6, _ = ckpt.restore(6, abstract)
  finally:
    ckpt.close()
  mean = jax.tree.map(lambda x, y: (np.asarray(x) + np.asarray(y)) / np.float32(2),
                      train.variables_of(s4), train.variables_of(s6))
  expected, _ = evaluate.evaluate_split(evaluate.make_eval_step(model, config, mesh), mean,
                                        config, config.data.val_split, mesh)
  assert result['confusion_matrix'] == expected['confusion_matrix']
  assert result['loss'] == pytest.approx(expected['loss'], rel=1e-6)


def _bn_inputs(model, variables, images, key):
  """{BatchNorm path: its input} of one training-mode forward pass (eager)."""
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == '__call__':
      seen['/'.join(context.module.path)] = np.asarray(args[0], np.float64)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    model.apply(variables, images, train=True, mutable=['batch_stats'], rngs={'dropout': key})
  return seen


def test_recompute_bn_is_the_average_of_batch_statistics(run, tmp_path):
  out = str(tmp_path / 'swa')
  assert _cli(f'--workdir={run}', '--steps=best:2', f'--out={out}', '--recompute_bn=2') == 0
  config = average.load_config(run)
  _, state, meta = _restore(out, config)
  assert meta['batch_stats'] == 'recomputed over 2 training batches'
  got = _flat(state.batch_stats)

  # Expected: per-channel mean and biased variance of each BatchNorm's input on
  # training batches 0 and 1 (dropout keys as documented), averaged over batches.
  model = train.build_model(config)
  variables = train.variables_of(state)
  rng = jax.random.fold_in(jax.random.key(int(config.seed)), 3)
  dataset = pipeline.train_dataset(config)
  sums = {}
  for i in range(2):
    images = transforms.normalize(jnp.asarray(dataset[i]['image']), tuple(config.data.mean),
                                  tuple(config.data.std))
    for path, x in _bn_inputs(model, variables, images, jax.random.fold_in(rng, i)).items():
      axes = tuple(range(x.ndim - 1))
      m, v = x.mean(axes), x.var(axes)
      prev = sums.get(path, (0.0, 0.0))
      sums[path] = (prev[0] + m / 2, prev[1] + v / 2)
  assert {f'{p}/{s}' for p in sums for s in ('mean', 'var')} == set(got)
  # Jitted float32 (flax's fast variance) against eager float64 statistics:
  # measured worst 2e-4 * (|expected| + 1e-3) for means, 2e-5 for variances
  # over the 65 layers. A wrong dropout key is 0.39 off in some variance.
  for path, (m, v) in sums.items():
    np.testing.assert_allclose(got[f'{path}/mean'], m, rtol=1e-4, atol=1e-5, err_msg=path)
    np.testing.assert_allclose(got[f'{path}/var'], v, rtol=1e-4, atol=1e-5, err_msg=path)

  # Not the averaged statistics (which a no-op recompute would leave).
  averaged = {}
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(run), async_save=False)
  abstract = train.abstract_state(config, model, sharding_lib.make_mesh())
  try:
    for step in meta['averaged_from']['steps']:
      for k, x in _flat(ckpt.restore(step, abstract)[0].batch_stats).items():
        averaged[k] = averaged.get(k, 0) + x / 2
  finally:
    ckpt.close()
  assert max(np.max(np.abs(got[k] - averaged[k])) for k in got) > 1e-2
