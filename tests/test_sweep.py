"""Sweeps: building points, validating every point's config, naming, command emission,
running (skip finished, resume the interrupted point, record failures), and the
results table of a real 3-point sweep."""

import hashlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from segjax.tools import results
from segjax.tools import sweep as sweep_tool
from segjax import sweep
from segjax import train
from tests.test_config import CONFIG_ARGS

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / 'tests' / 'tiny_run.py')


def _module(path):
  spec = importlib.util.spec_from_file_location(Path(path).stem + '_sweep_test', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tiny(arg='steps=4'):
  return _module(TINY).get_config(arg)


def test_sweep_product_zipit_chain():
  lr = sweep.sweep('config.optimizer.lr', [1e-3, 3e-4])
  assert lr == [{'config.optimizer.lr': 1e-3}, {'config.optimizer.lr': 3e-4}]
  grid = sweep.product(lr, {'config.model.output_stride': [8, 16]})
  assert grid == [
      {'config.optimizer.lr': 1e-3, 'config.model.output_stride': 8},
      {'config.optimizer.lr': 1e-3, 'config.model.output_stride': 16},
      {'config.optimizer.lr': 3e-4, 'config.model.output_stride': 8},
      {'config.optimizer.lr': 3e-4, 'config.model.output_stride': 16}]
  # A dict of several keys is their product.
  assert sweep.product({'a': [1, 2], 'b': [3, 4]}) == [
      {'a': 1, 'b': 3}, {'a': 1, 'b': 4}, {'a': 2, 'b': 3}, {'a': 2, 'b': 4}]
  assert sweep.zipit({'a': [1, 2]}, sweep.sweep('b', [3, 4])) == [{'a': 1, 'b': 3},
                                                                  {'a': 2, 'b': 4}]
  assert sweep.product(sweep.zipit({'a': [1, 2]}, {'b': [3, 4]}), {'c': [0, 1]}) == [
      {'a': 1, 'b': 3, 'c': 0}, {'a': 1, 'b': 3, 'c': 1},
      {'a': 2, 'b': 4, 'c': 0}, {'a': 2, 'b': 4, 'c': 1}]
  assert sweep.chain({'a': [1]}, [{'b': 2}, {}]) == [{'a': 1}, {'b': 2}, {}]
  with pytest.raises(sweep.SweepError, match='one length'):
    sweep.zipit({'a': [1, 2]}, {'b': [3]})
  with pytest.raises(sweep.SweepError, match="'a' set twice"):
    sweep.product({'a': [1]}, {'a': [2]})
  with pytest.raises(sweep.SweepError, match='must be a list'):
    sweep.product({'a': 0.1})


def test_point_names():
  assert sweep.point_names([{'config.optimizer.lr': 1e-3, 'config.model.output_stride': 8},
                            {'config.optimizer.lr': 3e-05, 'config.model.output_stride': 16}]) == [
                                'lr=0.001,output_stride=8', 'lr=3e-05,output_stride=16']
  # Leaves shared by two keys keep enough of the path to tell them apart.
  assert sweep.point_names([{'optimizer.weight_decay': 0.0, 'a.x.decay': 0.9, 'b.decay': 1},
                            {'optimizer.weight_decay': 1e-4, 'a.x.decay': 0.99, 'b.decay': 2}]) == [
                                'weight_decay=0,x.decay=0.9,b.decay=1',
                                'weight_decay=0.0001,x.decay=0.99,b.decay=2']
  assert sweep.point_names([{'data.crop_size': (64, 96), 'model.name': 'unet/x y',
                             'checkpoint.async_save': False}, {}]) == [
                                 'crop_size=64x96,name=unet_x_y,async_save=false', 'base']
  with pytest.raises(sweep.SweepError, match='same overrides'):
    sweep.point_names([{'optimizer.lr': 0.001}, {'config.optimizer.lr': 1e-3}])


def test_expand_validates_every_point_and_names_the_bad_one():
  base = _tiny()
  points = sweep.expand(base, [{'config.optimizer.lr': 0.01, 'config.data.crop_size': [16, 16]},
                               {'optimizer.lr': 0.02, 'model.kwargs.dropout_rate': 0.0}])
  assert [p['name'] for p in points] == ['lr=0.01,crop_size=16x16', 'lr=0.02,dropout_rate=0']
  first, second = points[0]['config'], points[1]['config']
  assert first.optimizer.lr == 0.01 and first.data.crop_size == (16, 16)
  assert second.optimizer.lr == 0.02 and second.model.kwargs.dropout_rate == 0.0
  assert base.optimizer.lr == 0.05 and base.data.crop_size == (32, 32)  # Untouched.
  assert points[0]['overrides'] == {'optimizer.lr': 0.01, 'data.crop_size': [16, 16]}

  with pytest.raises(sweep.SweepError, match=r'point 1 .*config\.optimizer\.lrr.*optimizer\.lr'):
    sweep.expand(base, [{'optimizer.lr': 0.1}, {'config.optimizer.lrr': 0.1}])
  with pytest.raises(sweep.SweepError, match=r'point 0 .*batch_size'):
    sweep.expand(base, [{'batch_size': 'eight'}])
  with pytest.raises(sweep.SweepError, match=r'point 1 .*output_stride'):
    sweep.expand(base, [{'model.output_stride': 16}, {'model.output_stride': 7}])
  with pytest.raises(sweep.SweepError, match='non-empty list'):
    sweep.expand(base, [])


def test_every_config_sweep_loads_and_validates():
  """Every point of every config file's get_sweep, under every documented argument."""
  with_sweeps = [n for n in sorted(CONFIG_ARGS)
                 if hasattr(_module(ROOT / 'configs' / n), 'get_sweep')]
  assert 'deeplabv3plus.py' in with_sweeps
  for name, arg in [(n, a) for n in with_sweeps for a in CONFIG_ARGS[n]]:
    module = _module(ROOT / 'configs' / name)
    config = module.get_config(arg)
    if config.data.name == 'folder':
      config.data.root = '/some/dataset'
    if not config.data.num_classes:  # dataset=folder: the user gives the class count.
      config.data.num_classes = 5
    points = sweep.expand(config, module.get_sweep(arg))
    assert len(points) >= 2, (name, arg)


def test_deeplabv3plus_sweep_is_lr_times_output_stride():
  module = _module(ROOT / 'configs' / 'deeplabv3plus.py')
  points = sweep.expand(module.get_config('runlocal'), module.get_sweep('runlocal'))
  lr = module.get_config('runlocal').optimizer.lr
  assert [(p['config'].optimizer.lr, p['config'].model.output_stride) for p in points] == [
      (lr, 16), (lr, 8), (lr / 3, 16), (lr / 3, 8)]


def test_emitted_flags_parse_back_to_the_same_config(tmp_path, monkeypatch):
  """Every emitted --config.key=value, parsed by ml_collections' config_flags, gives
  the config that `apply` builds in process (tuples, bools, floats, strings)."""
  base = _tiny()
  overrides = {'config.optimizer.lr': 3e-4, 'config.data.crop_size': (16, 24),
               'config.checkpoint.async_save': True, 'config.optimizer.name': 'adamw',
               'config.seed': 3}
  [point] = sweep.expand(base, [overrides])
  commands = sweep_tool.emit_commands(f'{TINY}:steps=4', str(tmp_path / 'runs'), [point],
                                 emit='local', base_overrides={'total_steps': 6})
  argv = shlex.split(commands[0])
  assert argv[:2] == ['python', 'launch.py']
  assert f'--workdir={tmp_path / "runs" / point["name"]}' in argv
  config_argv = ['launch.py'] + [a for a in argv[2:] if a.startswith('--config')]
  monkeypatch.setattr(sys, 'argv', config_argv)  # config_flags reads overrides from sys.argv.
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, 'x', flag_values=fv)
  fv(config_argv)
  parsed = holder.value
  expected = sweep.apply(base, dict(overrides, total_steps=6))
  assert parsed.to_dict() == expected.to_dict()
  assert parsed.data.crop_size == (16, 24) and parsed.total_steps == 6

  tpu_commands = sweep_tool.emit_commands(f'{TINY}:steps=4', '/mnt/runs', [point], emit='tpu',
                                     tpu_name='seg-v4', tpu_zone='us-central2-b')
  tpu_argv = shlex.split(tpu_commands[0])
  assert tpu_argv[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'seg-v4']
  assert '--worker=all' in tpu_argv
  remote = shlex.split(next(a for a in tpu_argv if a.startswith('--command='))[10:])
  launch = remote[remote.index('launch.py') + 1:]
  assert launch == sweep.launch_args(f'{TINY}:steps=4', f'/mnt/runs/{point["name"]}',
                                     point['overrides'])
  with pytest.raises(sweep.SweepError, match='tpu_name'):
    sweep_tool.emit_commands(TINY, '/mnt/runs', [point], emit='tpu')


def test_run_skips_finished_points_records_failures_and_retries_them(tmp_path):
  base = _tiny()
  points = [{'optimizer.lr': 0.1}, {'optimizer.lr': 0.2}, {'optimizer.lr': 0.3}]
  calls = []

  def flaky(config, workdir):
    calls.append((config.optimizer.lr, workdir))
    if config.optimizer.lr == 0.2:
      raise FloatingPointError('loss is nan at step 3')
    return {'mIoU': config.optimizer.lr, 'aAcc': 0.5}

  with pytest.raises(sweep.SweepError, match=r'(?s)1 of 3 sweep points failed.*lr=0.2: FloatingPointError: loss is nan'):
    sweep.run(base, str(tmp_path), points, train_fn=flaky, is_main=True, log=lambda s: None)
  assert [c[0] for c in calls] == [0.1, 0.2, 0.3]
  status = {n: sweep.point_status(str(tmp_path / n)) for n in ('lr=0.1', 'lr=0.2', 'lr=0.3')}
  assert status['lr=0.1']['status'] == 'done' and status['lr=0.1']['final_mIoU'] == 0.1
  assert status['lr=0.2']['status'] == 'failed'
  assert 'FloatingPointError: loss is nan' in status['lr=0.2']['error']
  with open(tmp_path / 'sweep.json') as f:
    listed = json.load(f)
  assert [p['name'] for p in listed['points']] == ['lr=0.1', 'lr=0.2', 'lr=0.3']

  calls.clear()
  log = []
  done = sweep.run(base, str(tmp_path), points, train_fn=lambda c, w: {'mIoU': 1.0},
                   is_main=True, log=log.append)
  assert [p['status'] for p in done] == ['done'] * 3
  assert sum('done already, skipped' in line for line in log) == 2
  assert sweep.point_status(str(tmp_path / 'lr=0.2'))['status'] == 'done'


def test_three_point_sweep_end_to_end_with_interruption(tmp_path):
  """Point 1 trains, point 2 is interrupted after its step-2 checkpoint; the sweep
  run again through launch.py skips point 1, resumes point 2 and trains point 3,
  and the results table holds every run's numbers."""
  workdir = tmp_path / 'sweep'
  base = _tiny('steps=4')
  points = _module(TINY).get_sweep('')

  def interrupted(config, point_dir):
    if os.path.basename(point_dir) == 'lr=0.01':
      short = sweep.apply(config, {'total_steps': 2})
      train.train_and_evaluate(short, point_dir)
      raise KeyboardInterrupt  # Killed after the step-2 checkpoint.
    return train.train_and_evaluate(config, point_dir)

  with pytest.raises(KeyboardInterrupt):
    sweep.run(base, str(workdir), points, config_arg=f'{TINY}:steps=4', train_fn=interrupted)
  assert sweep.point_status(str(workdir / 'lr=0.05'))['status'] == 'done'
  assert sweep.point_status(str(workdir / 'lr=0.01'))['status'] == 'running'
  assert not (workdir / 'lr=0.01,seed=7').exists()
  first_metrics = (workdir / 'lr=0.05' / 'metrics.jsonl').read_text()

  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  out = subprocess.run([sys.executable, str(ROOT / 'launch.py'), f'--config={TINY}:steps=4',
                        f'--workdir={workdir}', '--sweep'],
                       capture_output=True, text=True, env=env, timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  text = out.stdout
  assert '[sweep 1/3] lr=0.05: done already, skipped' in text
  assert '[sweep 2/3] lr=0.01: resuming' in text
  assert 'Resuming from step 2' in text
  assert '[sweep 3/3] lr=0.01,seed=7: training' in text
  assert (workdir / 'lr=0.05' / 'metrics.jsonl').read_text() == first_metrics  # Not retrained.

  rows = {r['run']: r for r in results.collect(str(workdir))}
  assert sorted(rows) == ['lr=0.01', 'lr=0.01,seed=7', 'lr=0.05']
  for name, row in rows.items():
    with open(workdir / name / 'eval' / 'val_00000004.json') as f:
      final = json.load(f)
    assert row['status'] == 'done' and row['steps'] == 4 and row['total_steps'] == 4
    assert row['final_mIoU'] == pytest.approx(final['mIoU'], abs=1e-12)
    assert row['optimizer.lr'] == float(name.split(',')[0][3:])
    assert row['images_per_sec'] > 0
  assert rows['lr=0.01,seed=7']['seed'] == 7 and rows['lr=0.05']['seed'] is None
  # Point 2 evaluated at step 2 (the interrupted session) and at step 4.
  with open(workdir / 'lr=0.01' / 'eval' / 'val_00000002.json') as f:
    at2 = json.load(f)['mIoU']
  assert rows['lr=0.01']['best_mIoU'] == pytest.approx(max(at2, rows['lr=0.01']['final_mIoU']))
  # launch.py printed the same table.
  assert results.format_markdown(results.collect(str(workdir))) in text


def test_launch_refuses_url_workdirs_and_eval_with_sweep(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  for extra, message in ((['--workdir=gs://bucket/runs/x'], 'URLs are not supported'),
                         ([f'--workdir={tmp_path}', '--sweep', '--mode=eval'],
                          '--sweep trains; it cannot be combined with --mode=eval')):
    out = subprocess.run([sys.executable, str(ROOT / 'launch.py'), f'--config={TINY}', *extra],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / 'checkpoints').exists()


def test_segjax_sweep_prints_the_launch_commands(tmp_path):
  """`segjax sweep`: one launch.py command per point, with its workdir and overrides."""
  out = subprocess.run([sys.executable, '-m', 'segjax.tools', 'sweep', f'--config={TINY}',
                        f'--workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  points = sweep.expand(_tiny(), sweep.load_sweep(TINY, None))
  assert out.stdout.splitlines() == [
      shlex.join(['python', 'launch.py', *sweep.launch_args(TINY, str(tmp_path / p['name']),
                                                            p['overrides'])]) for p in points]


def test_named_points_and_long_values():
  assert sweep.point_names([{'_name': 'recipe'}, {'loss.class_weights': (1.0,) * 11},
                            {'loss.class_weights': ()}]) == [
                                'recipe', 'class_weights=11values-' +
                                hashlib.sha1(repr((1.0,) * 11).encode()).hexdigest()[:6],
                                'class_weights=none']
  [point] = sweep.expand(_tiny(), [{'_name': 'my point', 'optimizer.lr': 0.5}])
  assert point['name'] == 'my_point' and point['overrides'] == {'optimizer.lr': 0.5}
  assert point['config'].optimizer.lr == 0.5
