"""The command line: `segjax <tool>`, one absl dialect, launch.py's defaults and
errors, the run_dir rule for evaluation, and the package's import graph."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segjax import cli
from segjax import config as config_lib
from segjax import train
from segjax.tools import evaluate as evaluate_tool
from tests.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / 'tests' / 'tiny_run.py'
TOOL_FILES = sorted(p.stem for p in (ROOT / 'segjax' / 'tools').glob('*.py')
                    if not p.stem.startswith('_'))


def _run(args, cwd, timeout=600):
  return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True,
                        text=True, timeout=timeout)


# ---------------------------------------------------------------------------- tools


def test_segjax_help_lists_exactly_the_tool_files(tmp_path):
  assert sorted(cli.TOOLS) == TOOL_FILES
  proc = _run(['-m', 'segjax.tools', '--help'], cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith('  ')]
  assert listed == list(cli.TOOLS)
  proc = _run(['-m', 'segjax.tools', 'evalute'], cwd=ROOT)
  assert proc.returncode == 2 and "did you mean 'evaluate'" in proc.stderr


@pytest.mark.parametrize('tool', TOOL_FILES + ['launch.py'])
def test_help_exits_zero_with_the_tools_own_doc_and_flags(tool):
  """--help: stdout, exit 0, the module's own first doc line and its flags, in
  every tool (argparse exited 0, absl 1, before)."""
  if tool == 'launch.py':
    args, doc = ['launch.py', '--help'], 'segjax entry point'
  else:
    args = ['-m', 'segjax.tools', tool, '--help']
    source = (ROOT / 'segjax' / 'tools' / f'{tool}.py').read_text()
    doc = ast.get_docstring(ast.parse(source)).splitlines()[0]
  proc = _run(args, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert doc in proc.stdout and 'flags:' in proc.stdout
  assert proc.stdout.count('  --') >= 1


def test_no_argparse_in_segjax():
  users = [str(p.relative_to(ROOT)) for p in (ROOT / 'segjax').rglob('*.py')
           if 'argparse' in p.read_text()]
  assert users == []


def test_default_workdir():
  assert cli.default_workdir('configs/deeplabv3plus.py') == os.path.join('runs', 'deeplabv3plus')
  assert cli.default_workdir('configs/camvid.py:recipe=cpu') == os.path.join(
      'runs', 'camvid_recipe=cpu')
  assert cli.default_workdir('/x/configs/d.py:a=1,b/c') == os.path.join('runs', 'd_a=1,b_c')


# ---------------------------------------------------------------------------- launch.py errors


def test_a_config_key_given_twice_is_refused_by_name(tmp_path):
  """Issue 15.6: ml_collections concatenated the tuples; now one line naming the key."""
  assert cli.repeated_config_keys(
      ['p', '--config.data.resize=90,120', '--config.eval.flip', '--config.data.resize=()',
       '--noconfig.eval.flip', '--', '--config.seed=1', '--config.seed=2']) == [
           'config.data.resize', 'config.eval.flip']
  proc = _run([ROOT / 'launch.py', f'--config={TINY}', '--config.data.resize=90,120',
               '--config.data.resize=()'], cwd=tmp_path)
  assert proc.returncode == 2
  assert proc.stderr == ('ERROR: --config.data.resize is given more than once; give each config '
                         'key once (a later value would not replace an earlier one)\n')
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('args, message', [
    (['--config.optimizer.lrr=0.1'],
     "ERROR: unknown config key 'optimizer.lrr' (from --config.optimizer.lrr); did you mean "
     "'--config.optimizer.lr'?"),
    (['--config.optimizer.lr=fast'],
     "ERROR: --config.optimizer.lr=fast: could not convert string to float: 'fast'"),
    (['--config.ema.decay=1.5'],
     "ERROR: config key 'ema.decay' must be in [0, 1), got 1.5 (fix it in the config file or "
     'with --config.<key>=<value>)'),
    (['--config.data.name=folder', '--config.data.root=no_such_dir'],
     "ERROR: data.root '{tmp}/no_such_dir' does not exist or is not a folder"),
])
def test_config_errors_are_one_line_and_leave_no_workdir(tmp_path, args, message):
  """Issue 15.11: one line naming the key (and the fix), exit 2, no runs/ left;
  the missing data root is found after the workdir was made, and removed."""
  proc = _run([ROOT / 'launch.py', f'--config={TINY}', *args], cwd=tmp_path)
  assert proc.returncode == 2
  message = message.replace('{tmp}', str(tmp_path))
  assert proc.stderr.splitlines()[-1] == message and proc.stderr.count('\n') == 1, proc.stderr
  assert not (tmp_path / 'runs').exists()


def test_verbosity_1_shows_the_traceback(tmp_path):
  proc = _run([ROOT / 'launch.py', f'--config={TINY}', '--config.ema.decay=1.5',
               '--verbosity=1'], cwd=tmp_path)
  assert proc.returncode != 0
  assert 'Traceback (most recent call last)' in proc.stderr and 'ConfigError' in proc.stderr


def test_a_workdir_that_existed_is_never_removed(tmp_path):
  keep = tmp_path / 'mine'
  keep.mkdir()
  (keep / 'notes.txt').write_text('x')
  with pytest.raises(RuntimeError):
    with cli.removed_on_failure(str(keep)):
      raise RuntimeError('failed')
  assert (keep / 'notes.txt').read_text() == 'x'
  new = tmp_path / 'new'
  with pytest.raises(RuntimeError):
    with cli.removed_on_failure(str(new)):
      (new / 'checkpoints' / '2').mkdir(parents=True)  # A checkpoint: kept.
      raise RuntimeError('failed')
  assert (new / 'checkpoints' / '2').is_dir()
  gone = tmp_path / 'runs' / 'gone'
  with pytest.raises(RuntimeError):
    with cli.removed_on_failure(str(gone)):
      (gone / 'checkpoints').mkdir(parents=True)
      (gone / 'config.json').write_text('{}')
      raise RuntimeError('failed')
  assert not (tmp_path / 'runs').exists()  # Nor the folder created above it.
  assert sorted(os.listdir(tmp_path)) == ['mine', 'new']


# ---------------------------------------------------------------------------- evaluation


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('cli') / 'run'
  train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir


def test_eval_of_a_read_only_run_prints_first_and_writes_elsewhere(trained, tmp_path, capsys):
  """Issue 15.10: the metrics are on stdout before the write fails; the error
  is one line pointing at --out; --out writes the same numbers elsewhere."""
  before = sorted(os.listdir(trained))
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  unwritable = blocker / 'eval'  # Under a regular file: every write fails, as read-only.
  with pytest.raises(evaluate_tool.ResultsNotWritten, match='pass --out=DIR'):
    evaluate_tool.run(str(trained), out=str(unwritable))
  printed = capsys.readouterr().out
  assert 'val @ step 4 (latest), 8 images' in printed and 'mIoU' in printed
  rc = cli.invoke(evaluate_tool.define_flags, evaluate_tool.main,
                  [f'--workdir={trained}', f'--out={unwritable}'])
  out, err = capsys.readouterr()
  assert rc == 1 and 'mIoU' in out
  assert err.startswith('ERROR: the metrics above were computed, but their files could not be '
                        f'written to {unwritable}') and err.count('\n') == 1
  elsewhere = tmp_path / 'elsewhere'
  result = evaluate_tool.run(str(trained), out=str(elsewhere))
  written = json.loads((elsewhere / 'eval' / 'val_00000004.json').read_text())
  # The independent check: the same checkpoint's mIoU as training wrote it.
  by_training = json.loads((trained / 'eval' / 'val_00000004.json').read_text())
  assert written['mIoU'] == pytest.approx(by_training['mIoU']) == pytest.approx(result['mIoU'])
  assert np.array_equal(written['confusion_matrix'], by_training['confusion_matrix'])
  assert sorted(os.listdir(trained)) == before  # Nothing written into the run.


def test_run_dir_takes_eval_overrides_and_refuses_the_rest(trained):
  from segjax import run_dir  # pylint: disable=g-import-not-at-top
  config, step = run_dir.load_config(str(trained), 'best', {'eval.split': 'train[:2]',
                                                            'data.root': '/elsewhere'})
  assert (config.eval.split, config.data.root, config.eval.checkpoint) == ('train[:2]',
                                                                           '/elsewhere', 'best')
  assert step in (2, 4) and config.model.name == tiny_config().model.name
  for key in ('model.name', 'data.num_classes', 'data.mean', 'seed'):
    with pytest.raises(config_lib.ConfigError, match=f"'{key}' cannot be overridden"):
      run_dir.load_config(str(trained), 'latest', {key: 1})


# ---------------------------------------------------------------------------- imports


def _imports(path: Path, module: str) -> set[str]:
  """segjax modules imported anywhere in the file (functions included)."""
  out = set()
  package = module if path.name == '__init__.py' else module.rpartition('.')[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      out.add(base)
      out |= {f'{base}.{a.name}' for a in node.names}
  return {m for m in out if m == 'segjax' or m.startswith('segjax.')}


def test_import_graph_has_no_cycles_and_every_module_imports():
  """Edges from every import statement, those inside functions included (so an
  import moved into a function to dodge a cycle still counts)."""
  modules = {}
  for path in sorted((ROOT / 'segjax').rglob('*.py')):
    rel = path.relative_to(ROOT).with_suffix('')
    name = '.'.join(rel.parts[:-1] if rel.name == '__init__' else rel.parts)
    modules[name] = path
  graph = {m: {i for i in _imports(p, m) if i in modules and i != m}
           for m, p in modules.items()}
  # A package's own __init__ is imported by its submodules: not a real edge back.
  graph = {m: {i for i in deps if not m.startswith(i + '.')} for m, deps in graph.items()}
  state, cycles = {}, []

  def visit(m, stack):
    state[m] = 'open'
    for d in sorted(graph[m]):
      if state.get(d) == 'open':
        cycles.append(stack[stack.index(d):] + [d])
      elif d not in state:
        visit(d, stack + [d])
    state[m] = 'done'

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert cycles == []
  # The library sits below the tools: nothing outside segjax.tools imports them.
  upward = {m: sorted(d for d in deps if d.startswith('segjax.tools'))
            for m, deps in graph.items() if not m.startswith('segjax.tools')}
  assert {m: d for m, d in upward.items() if d} == {}
  # Every module imports (optional TFDS only where it is needed).
  code = ('import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]')
  proc = _run(['-c', code, *sorted(modules)], cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
