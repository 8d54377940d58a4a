r"""The command line of launch.py and of every tool: one absl dialect.

  segjax --help                  every tool, one line each
  segjax <tool> [flags]          = python -m segjax.tools.<tool> [flags]

`run(main)` is absl's `app.run(main)` with the conventions every segjax
command shares:
  * `--help` (and `--helpshort`, `--helpfull`, `-?`) prints the usage on
    stdout and exits 0;
  * a config key given twice on the command line (`--config.data.resize=...`
    twice) is refused naming it, instead of ml_collections concatenating
    tuple values;
  * a flag or config error (unknown key, bad value, failed validation) is one
    line `ERROR: ...` on stderr naming the key, exit status 2; the traceback
    only with `--verbosity=1` (or higher);
  * other errors that are the user's to fix (a missing file, a refused
    output folder) are one line too, exit status 2.
"""

from __future__ import annotations

import contextlib
import difflib
import logging as py_logging
import os
import re
import runpy
import shutil
import sys
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from segjax import config as config_lib
from segjax import platform

# Every tool: `segjax <name>` runs segjax/tools/<name>.py. Explicit, so that
# `segjax --help` lists exactly what exists (a test checks both ways).
TOOLS = {
    'evaluate': 'evaluate a checkpoint of a run on any split (metrics, confusion matrix, panels)',
    'predict': 'predict image files with a trained run: class PNGs, overlays, uncertainty',
    'export': 'export a checkpoint as a StableHLO file with its signature (jax.export)',
    'average_checkpoints': 'average several checkpoints of a run into a new run directory',
    'class_weights': "class weights (median frequency, ...) from a split's label counts",
    'check_data': 'scan a dataset for unreadable files, bad labels and size problems',
    'prepare_tfds': 'download and prepare a TFDS dataset (oxford_iiit_pet) without TensorFlow',
    'convert_weights': 'convert torchvision/timm/Keras weights for config.model.pretrained',
    'report': "write a run's HTML report (curves, confusion matrix, panels)",
    'sweep': "print one launch command per point of a config file's sweep (local or TPU)",
    'results': "tabulate a sweep's runs (Markdown, CSV or JSON)",
    'tpu': 'create, install, launch, watch and delete Cloud TPU VMs (gcloud commands)',
    'iou_report': 'per-class #TP, #FP, #FN and IoU of an evaluation result',
    'prepare_dlcv': 'list files (and optionally a generated set) for the DLCV satellite layout',
}

_HELP_FLAGS = ('--help', '--helpshort', '--helpfull', '-?', '-help')
# Errors a user fixes by changing the command: one line, no traceback.
USER_ERRORS = (config_lib.ConfigError, FileNotFoundError, FileExistsError, ValueError,
               ImportError)


class UsageError(app.UsageError):
  """A bad command line; printed as one line, exit status 2."""


def _own_args(argv: Sequence[str]) -> list[str]:
  """The arguments before a lone `--` (what follows belongs to another program)."""
  argv = list(argv[1:])
  return argv[:argv.index('--')] if '--' in argv else argv


def repeated_config_keys(argv: Sequence[str]) -> list[str]:
  """The `--config.<key>` flags that appear more than once (`--noconfig.<key>`
  counts as the same key)."""
  seen, repeated = set(), []
  for arg in _own_args(argv):
    m = re.match(r'--(?:no)?(config\.[^=\s]+)', arg)
    if not m:
      continue
    key = m.group(1)
    if key in seen and key not in repeated:
      repeated.append(key)
    seen.add(key)
  return repeated


def _schema_keys() -> list[str]:
  out = []

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, ml_collections.ConfigDict) and f'{prefix}{k}' != 'model.kwargs':
        walk(v, f'{prefix}{k}.')
      else:
        out.append(f'{prefix}{k}')
  walk(config_lib.base_config(), '')
  return out


def _unknown_key_message(arg_key: str) -> str:
  keys = _schema_keys()
  close = difflib.get_close_matches(arg_key, keys, n=1)
  hint = f"; did you mean '--config.{close[0]}'?" if close else ''
  return f"unknown config key '{arg_key}' (from --config.{arg_key}){hint}"


def define_run_overrides(fv: flags.FlagValues, name: str = 'config') -> None:
  """--config.<key>=<value> overrides of a trained run's config (segjax.run_dir
  rule: eval.* and data.root), typed and checked against the schema."""
  config_flags.DEFINE_config_dict(
      name, config_lib.base_config(),
      "Overrides of the run's own config, --config.eval.<key>=<value> or "
      '--config.data.root=DIR; other keys are refused.', flag_values=fv)
  fv[name].default_as_str = None  # Not the whole schema in --help.
  fv.register_key_flag_for_module(sys.argv[0], fv[name])  # Listed in the tool's --help.


def run_overrides(fv: flags.FlagValues, name: str = 'config') -> dict:
  """The flat {key: value} given as --config.<key>=<value>."""
  return dict(config_flags.get_override_values(fv[name]))


def default_workdir(config_arg: str, root: str = 'runs') -> str:
  """runs/<config file name>[_<its argument>]: `configs/deeplabv3plus.py` ->
  runs/deeplabv3plus, `configs/camvid.py:recipe=cpu` -> runs/camvid_recipe=cpu.
  The same command gives the same directory, so running it again resumes."""
  path, sep, arg = str(config_arg).partition('.py:')
  path = path + '.py' if sep else path
  name = os.path.splitext(os.path.basename(path))[0] or 'run'
  if arg:
    name += '_' + re.sub(r'[^A-Za-z0-9._=,+-]', '_', arg)
  return os.path.join(root, name)


def resolve_workdir(workdir: str | None, config_arg: str) -> str:
  """--workdir, or the default for the config; URLs refused (UsageError)."""
  workdir = workdir or default_workdir(config_arg)
  if '://' in workdir:
    raise UsageError(f'--workdir={workdir}: URLs are not supported; on a pod slice use a '
                     'filesystem that every worker mounts at the same path (NFS, Filestore, '
                     'or a bucket mounted with gcsfuse)')
  return workdir


@contextlib.contextmanager
def removed_on_failure(workdir: str):
  """Removes `workdir` again if the block fails before it holds a checkpoint
  and the block created it: a refused config or a missing data root leaves
  nothing behind. A directory that existed before, or that holds a
  checkpoint, is never touched."""
  workdir = os.path.abspath(workdir)
  existed = os.path.exists(workdir)
  top = workdir  # The highest folder the block may create (runs/ of runs/x, say).
  while not os.path.exists(os.path.dirname(top)) and os.path.dirname(top) != top:
    top = os.path.dirname(top)
  try:
    yield
  except Exception:
    ckpts = os.path.join(workdir, 'checkpoints')
    if (not existed and os.path.isdir(workdir) and not (os.path.isdir(ckpts) and os.listdir(ckpts))
        and jax.process_index() == 0):
      shutil.rmtree(workdir, ignore_errors=True)
      parent = os.path.dirname(workdir)
      while parent.startswith(top) and os.path.isdir(parent) and not os.listdir(parent):
        os.rmdir(parent)  # Empty folders it created above the workdir.
        parent = os.path.dirname(parent)
    raise


def parse_flags(argv: Sequence[str], fv: flags.FlagValues | None = None) -> list[str]:
  """absl's flag parsing with segjax's help, repeated-key and error rules."""
  fv = flags.FLAGS if fv is None else fv
  own = _own_args(argv)
  for arg in own:
    if arg in _HELP_FLAGS:
      if fv is flags.FLAGS:
        app.usage(shorthelp=arg != '--helpfull', writeto_stdout=True)
      else:
        print(fv.get_help())
      sys.exit(0)
  repeated = repeated_config_keys(argv)
  if repeated:
    _fail(f'--{repeated[0]} is given more than once; give each config key once '
          '(a later value would not replace an earlier one)')
  try:
    return fv(list(argv))
  except flags.Error as e:
    _fail(str(e).replace('flag --', '--', 1))
  except (AttributeError, KeyError) as e:
    _unknown_key(e, own)
  return []  # Not reached.


def _unknown_key(e: Exception, args: Sequence[str]) -> None:
  """ml_collections' error for an override of a key the config lacks, as one line."""
  words = re.findall(r'[A-Za-z_][A-Za-z0-9_]*', str(e))
  key = words[0] if words else str(e)
  for arg in args:
    m = re.match(r'--(?:no)?config\.([^=\s]+)', arg)
    if m and key in m.group(1).split('.'):
      _fail(_unknown_key_message(m.group(1)))
  _fail(f'unknown config key {key!r}')


def _fail(message: str, status: int = 2) -> None:
  print(f'ERROR: {message}', file=sys.stderr, flush=True)
  sys.exit(status)


def _verbose() -> bool:
  try:
    return int(flags.FLAGS['verbosity'].value) >= 1
  except (KeyError, flags.UnparsedFlagAccessError):
    return False


def _call(main, args, *extra, positional: bool = False):
  """main(args, *extra) with the error conventions of the module doc."""
  if len(args) > 1 and not positional:
    _fail(f'unexpected arguments: {args[1:]} (flags are --name=value)')
  try:
    return main(args, *extra)
  except app.UsageError as e:
    _fail(str(e))
  except USER_ERRORS as e:
    if _verbose():
      raise
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, config_lib.ConfigError) and re.search(r"key '[^']+' (must|should|is not)",
                                                           msg):
      msg += ' (fix it in the config file or with --config.<key>=<value>)'
    _fail(msg)


def run(main: Callable[..., int | None], define_flags: Callable[[flags.FlagValues], None] |
        None = None, argv: Sequence[str] | None = None, *, positional: bool = False) -> None:
  """app.run(main) with the conventions of the module doc. A tool passes its
  define_flags(flag_values), called here, and main(argv, flag_values);
  launch.py, whose flags are defined at import, passes main(argv) only.
  positional: main takes positional arguments (a subcommand)."""
  argv = list(sys.argv if argv is None else argv)
  if define_flags is not None:
    try:  # ml_collections reads --config.<key> overrides of a config dict here.
      define_flags(flags.FLAGS)
    except (AttributeError, KeyError) as e:
      _unknown_key(e, _own_args(argv))

  def wrapped(args):
    platform.configure_xla_cpu()  # Before jax creates a backend.
    if not flags.FLAGS['verbosity'].present:
      # orbax and grain log every save/restore at INFO; --verbosity=0 brings that back.
      logging.set_verbosity(logging.WARNING)
      py_logging.getLogger('absl').setLevel(py_logging.WARNING)
    extra = () if define_flags is None else (flags.FLAGS,)
    return _call(main, args, *extra, positional=positional)

  app.run(wrapped, argv=argv, flags_parser=parse_flags)


def invoke(define_flags: Callable[[flags.FlagValues], None], main: Callable[..., int | None],
           argv: Sequence[str], *, prog: str = 'segjax', positional: bool = False) -> int:
  """A tool's command line in this process, on flags of its own (what tests
  call): the exit status `run` would give, without exiting."""
  fv = flags.FlagValues()
  define_flags(fv)
  try:
    args = parse_flags([prog, *argv], fv)
    rc = _call(main, args, fv, positional=positional)
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  return int(rc or 0)


def main(argv: Sequence[str] | None = None) -> None:
  """`segjax <tool> [flags]`: runs segjax.tools.<tool> as its own `python -m` would."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in _HELP_FLAGS or argv[1] == 'help':
    width = max(map(len, TOOLS))
    print('usage: segjax <tool> [flags]   (segjax <tool> --help for its flags)\n\ntools:')
    for name, text in TOOLS.items():
      print(f'  {name:<{width}}  {text}')
    print('\ntraining, evaluation and sweeps: python launch.py --help')
    sys.exit(0 if len(argv) >= 2 else 2)
  name = argv[1]
  if name not in TOOLS:
    close = difflib.get_close_matches(name, list(TOOLS), n=1)
    _fail(f"no tool {name!r}" + (f"; did you mean '{close[0]}'?" if close else '') +
          f"; tools: {', '.join(TOOLS)}")
  sys.argv = [f'segjax {name}', *argv[2:]]
  # As `python -m segjax.tools.<name>`: the tool is __main__, so its usage
  # text is its own module docstring.
  runpy.run_module(f'segjax.tools.{name}', run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
