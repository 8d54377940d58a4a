r"""gcloud commands for running segjax on a Cloud TPU VM or pod slice.

  segjax tpu create --name=seg --zone=us-central2-b --accelerator_type=v4-8
  segjax tpu install --name=seg --zone=us-central2-b
  segjax tpu launch --name=seg --zone=us-central2-b -- \
      --config=configs/deeplabv3plus.py --workdir=/mnt/shared/runs/x --config.optimizer.lr=0.01
  segjax tpu logs --name=seg --zone=us-central2-b --follow
  segjax tpu status --name=seg --zone=us-central2-b
  segjax tpu delete --name=seg --zone=us-central2-b

Every command only prints the gcloud commands it would run, one per line and
shell-quoted, so that they can be read, edited or pasted (dry run, the
default; `--dry_run` says so explicitly). `--execute` runs them in order and
stops at the first one that fails, naming it.

  create   gcloud compute tpus tpu-vm create with the TPU software version that
           Google recommends for JAX on the accelerator's generation (--version
           overrides it); --spot or --preemptible.
  install  puts the code on every worker (scp of launch.py, requirements.txt,
           configs/ and segjax/ from this checkout into ~/segjax, or a git
           clone of --repo_url), then on every worker: Python 3.11 (apt) if
           missing, a venv in ~/segjax/venv, `pip install -r requirements.txt`
           and jax[tpu] at the jax version pinned in requirements.txt.
  launch   `python launch.py ARGS` (the arguments after `--`) in that venv on
           every worker at once, in the background with nohup and a log per
           worker (~/segjax_<last part of the workdir>.log; --foreground streams
           the output instead). On a pod slice every worker runs the same
           command and jax.distributed finds the others itself (segjax.sharding),
           so no coordinator flags are needed. A multi-host run needs a workdir
           every worker sees at the same path (NFS, Filestore, gcsfuse): with
           --accelerator_type of a multi-host slice, launch reminds you; a URL
           workdir (gs://) is refused, as launch.py refuses it.
  logs     tail of the newest (or --log) log on one worker (default 0).
  status   the TPU's description, and the launch.py processes of every worker.
  delete   gcloud compute tpus tpu-vm delete.

The Python functions (create_argv, install_argvs, launch_argv, logs_argv,
status_argvs, delete_argv) return the same commands as argv lists for other
code to run or print; run_commands prints or runs a list of them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence, TextIO

from absl import flags

from segjax import cli

GCLOUD = 'gcloud'
ROOT = Path(__file__).resolve().parents[2]
REPO_DIR = 'segjax'
PYTHON = 'python3.11'  # requirements.txt is pinned for Python 3.11.
LIBTPU_RELEASES = 'https://storage.googleapis.com/jax-releases/libtpu_releases.html'
# What a worker needs of a checkout to run launch.py.
INSTALL_FILES = ('launch.py', 'requirements.txt', 'configs', 'segjax')

# TPU software (runtime) versions for JAX, per accelerator generation, from the
# "TPU software versions" page, https://cloud.google.com/tpu/docs/runtimes
# ("PyTorch and JAX": Trillium (v6e) v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e
# v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base; also used by
# https://cloud.google.com/tpu/docs/jax-pods for v4-32, v5p-32, v5litepod-32).
# Read from a stored copy, not checked against a live TPU.
RUNTIME_VERSIONS = {
    'v2': 'tpu-ubuntu2204-base',
    'v3': 'tpu-ubuntu2204-base',
    'v4': 'tpu-ubuntu2204-base',
    'v5litepod': 'v2-alpha-tpuv5-lite',
    'v5p': 'v2-alpha-tpuv5',
    'v6e': 'v2-alpha-tpuv6e',
}
# Accelerator types are <generation>-<size>: TensorCores for v2, v3, v4 and v5p
# (8 per host: v4-8 is one host, v4-32 four), chips for v5litepod and v6e (up
# to 8 on one host: https://cloud.google.com/tpu/docs/v5e lists 2x4 = 8 chips
# on 1 host, 4x4 = 16 chips on 2). Either way, a size above 8 is multi-host.
_ACCELERATOR_RE = re.compile(r'^(v\d+[a-z]*)-(\d+)$')
_SINGLE_HOST_MAX = 8
_NAME_RE = re.compile(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')
_ZONE_RE = re.compile(r'^[a-z][-a-z0-9]*[a-z0-9]$')
_JAX_PIN_RE = re.compile(r'^\s*jax\s*==\s*([^\s;#]+)')


class CommandError(RuntimeError):
  """A gcloud command failed (or could not be started)."""


# ----------------------------------------------------------------------------
# Validation helpers


def parse_accelerator_type(accelerator_type: str) -> tuple[str, int]:
  """'v4-32' -> ('v4', 32); a ValueError naming the expected form otherwise."""
  m = _ACCELERATOR_RE.match(accelerator_type or '')
  if not m or int(m.group(2)) < 1:
    raise ValueError(f'unknown accelerator type {accelerator_type!r}: expected '
                     '<generation>-<size>, e.g. v4-8, v4-32, v5litepod-16, v5p-8, v6e-8')
  return m.group(1), int(m.group(2))


def is_multi_host(accelerator_type: str) -> bool:
  """Whether the slice has several workers (hosts): every size above 8."""
  return parse_accelerator_type(accelerator_type)[1] > _SINGLE_HOST_MAX


def default_runtime_version(accelerator_type: str) -> str:
  """The TPU software version recommended for JAX on this accelerator's generation."""
  generation, _ = parse_accelerator_type(accelerator_type)
  if generation not in RUNTIME_VERSIONS:
    hint = ' (TPU v5e is v5litepod-<chips>)' if generation == 'v5e' else ''
    raise ValueError(f'no default TPU software version for {accelerator_type!r}{hint}; '
                     f'known generations: {", ".join(RUNTIME_VERSIONS)}; pass --version')
  return RUNTIME_VERSIONS[generation]


def _check_name_zone(name: str, zone: str) -> None:
  if not name:
    raise ValueError('a TPU name is needed (--name)')
  if not _NAME_RE.match(name) or len(name) > 63:
    raise ValueError(f'bad TPU name {name!r}: lowercase letters, digits and hyphens, '
                     'starting with a letter, at most 63 characters')
  if not zone:
    raise ValueError('a zone is needed (--zone), e.g. us-central2-b')
  if not _ZONE_RE.match(zone):
    raise ValueError(f'bad zone {zone!r}: expected a zone like us-central2-b')


def pinned_jax_version(requirements: str | os.PathLike | None = None) -> str:
  """The version of the `jax==X` line of requirements.txt (this checkout's by default)."""
  path = Path(requirements) if requirements is not None else ROOT / 'requirements.txt'
  for line in path.read_text().splitlines():
    m = _JAX_PIN_RE.match(line)
    if m:
      return m.group(1)
  raise ValueError(f'{path} pins no jax version (no "jax==X" line)')


def _remote_path(path: str) -> str:
  """A remote path for the remote shell: quoted, with a leading ~/ kept as $HOME."""
  if path == '~':
    return '"$HOME"'
  if path.startswith('~/'):
    return '"$HOME"/' + shlex.quote(path[2:])
  return shlex.quote(path)


def _home_relative(path: str) -> str:
  """scp destinations: relative paths are relative to the remote home already."""
  return path[2:] if path.startswith('~/') else path


def _workdir(launch_args: Sequence[str]) -> str | None:
  """The value of --workdir=X or --workdir X in launch.py's arguments."""
  for i, arg in enumerate(launch_args):
    if arg.startswith('--workdir='):
      return arg[len('--workdir='):]
    if arg == '--workdir' and i + 1 < len(launch_args):
      return launch_args[i + 1]
  return None


def workdir_warning(accelerator_type: str, launch_args: Sequence[str]) -> str | None:
  """A reminder that a multi-host slice needs a workdir every worker shares."""
  workdir = _workdir(launch_args)
  if workdir is None or not is_multi_host(accelerator_type):
    return None
  return (f'warning: {accelerator_type} is a multi-host slice: --workdir={workdir} must be on '
          'a filesystem that every worker mounts at that path (NFS, Filestore, a bucket '
          'mounted with gcsfuse); every process takes part in writing checkpoints')


def run_name(launch_args: Sequence[str]) -> str:
  """A file-name-safe name for a run: the last part of its workdir ('run' without one)."""
  workdir = (_workdir(launch_args) or '').rstrip('/')
  name = re.sub(r'[^A-Za-z0-9._-]+', '_', workdir.rsplit('/', 1)[-1]).strip('_.')
  return name or 'run'


# ----------------------------------------------------------------------------
# argv builders


def _tpu_vm(verb: str, name: str, zone: str, project: str | None,
            positional: Sequence[str] | None = None) -> list[str]:
  """gcloud compute tpus tpu-vm VERB <positional or NAME> --zone=Z [--project=P]."""
  _check_name_zone(name, zone)
  argv = [GCLOUD, 'compute', 'tpus', 'tpu-vm', verb]
  argv += list(positional) if positional is not None else [name]
  argv.append(f'--zone={zone}')
  if project:
    argv.append(f'--project={project}')
  return argv


def ssh_argv(*, name: str, zone: str, command: str, project: str | None = None,
             worker: str = 'all') -> list[str]:
  """argv of `gcloud compute tpus tpu-vm ssh NAME --worker=W --command=COMMAND`."""
  return _tpu_vm('ssh', name, zone, project) + [f'--worker={worker}', f'--command={command}']


def create_argv(*, name: str, zone: str, accelerator_type: str, version: str | None = None,
                project: str | None = None, spot: bool = False,
                preemptible: bool = False) -> list[str]:
  """argv of `gcloud compute tpus tpu-vm create` (version: the JAX default of the generation)."""
  if spot and preemptible:
    raise ValueError('spot and preemptible are exclusive')
  parse_accelerator_type(accelerator_type)
  version = version or default_runtime_version(accelerator_type)
  argv = _tpu_vm('create', name, zone, project)
  argv += [f'--accelerator-type={accelerator_type}', f'--version={version}']
  if spot:
    argv.append('--spot')
  if preemptible:
    argv.append('--preemptible')
  return argv


def setup_command(*, repo_dir: str = REPO_DIR, jax_version: str, python: str = PYTHON) -> str:
  """The remote shell command that makes repo_dir's venv and installs segjax's requirements."""
  py = shlex.quote(python)
  steps = []
  if re.fullmatch(r'python3\.\d+', python):
    # Ubuntu 22.04 (the TPU VM images) ships Python 3.10; jammy has 3.11 as a package.
    steps.append(f'if ! command -v {py} >/dev/null 2>&1; then sudo apt-get update -q && '
                 'sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q '
                 f'{py} {shlex.quote(python + "-venv")}; fi')
  if not re.fullmatch(r'[0-9A-Za-z.+!-]+', jax_version):
    raise ValueError(f'bad jax version {jax_version!r}')
  jax_tpu = f'"jax[tpu]=={jax_version}"'
  steps.append(f'cd {_remote_path(repo_dir)} && {py} -m venv venv && . venv/bin/activate && '
               'pip install -q -U pip && pip install -q -r requirements.txt && '
               f'pip install -q {jax_tpu} -f {LIBTPU_RELEASES} && '
               'python -c "import jax; print(jax.__version__)"')
  return 'set -e; ' + '; '.join(steps)


def install_argvs(*, name: str, zone: str, project: str | None = None, repo_dir: str = REPO_DIR,
                  local_repo: str | os.PathLike | None = None, repo_url: str | None = None,
                  branch: str | None = None, python: str = PYTHON,
                  jax_version: str | None = None) -> list[list[str]]:
  """argvs that put the code on every worker and install it in repo_dir/venv.

  With repo_url, every worker clones it into repo_dir (or pulls, where it is
  there already); otherwise launch.py, requirements.txt, configs/ and segjax/ of
  local_repo (this checkout by default) are copied there. jax[tpu] is installed
  at jax_version, by default the version pinned in local_repo's requirements.txt.
  """
  local = Path(local_repo) if local_repo is not None else ROOT
  if not repo_url:
    missing = [f for f in INSTALL_FILES if not (local / f).exists()]
    if missing:
      raise ValueError(f'{local} is not a segjax checkout: no {", ".join(missing)}')
  if jax_version is None:
    if not (local / 'requirements.txt').exists():
      raise ValueError(f'no {local / "requirements.txt"} to read the jax version from; '
                       'pass jax_version (--jax_version)')
    jax_version = pinned_jax_version(local / 'requirements.txt')
  dest = _remote_path(repo_dir)
  if repo_url:
    ref = f'--branch {shlex.quote(branch)} ' if branch else ''
    fetch = [ssh_argv(name=name, zone=zone, project=project, command=(
        f'if [ -d {dest}/.git ]; then git -C {dest} pull -q --ff-only; '
        f'else git clone -q {ref}{shlex.quote(repo_url)} {dest}; fi'))]
  else:
    if branch:
      raise ValueError('branch needs repo_url')
    fetch = [
        ssh_argv(name=name, zone=zone, project=project, command=f'mkdir -p {dest}'),
        _tpu_vm('scp', name, zone, project, positional=(
            ['--recurse'] + [str(local / f) for f in INSTALL_FILES] +
            [f'{name}:{_home_relative(repo_dir)}/'])) + ['--worker=all'],
    ]
  setup = ssh_argv(name=name, zone=zone, project=project, command=setup_command(
      repo_dir=repo_dir, jax_version=jax_version, python=python))
  return fetch + [setup]


def launch_argv(*, name: str, zone: str, launch_args: list[str], project: str | None = None,
                repo_dir: str = REPO_DIR, log: str | None = None,
                accelerator_type: str | None = None) -> list[str]:
  """argv of `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...` that runs
  `python launch.py <launch_args...>` in repo_dir's venv on every worker.

  Each launch argument is shell-quoted in the remote command, which the remote
  shell turns back into exactly launch_args. With log (a path on the workers;
  ~/ is their home), the run goes to the background with nohup, its output to
  log, and the ssh returns at once; without it, the ssh streams the output and
  lasts as long as the run. With accelerator_type, a multi-host slice prints a
  reminder that the workdir must be shared (workdir_warning). A URL workdir
  (gs://...) is refused: launch.py writes through the local filesystem.
  """
  if isinstance(launch_args, str) or not all(isinstance(a, str) for a in launch_args):
    raise TypeError(f'launch_args must be a list of strings, got {launch_args!r}')
  bad = [a for a in launch_args if '\n' in a or '\r' in a or '\0' in a]
  if bad:
    # They would split the printed command over several lines (or not survive it).
    raise ValueError(f'launch arguments with a newline or NUL are not supported: {bad}')
  workdir = _workdir(launch_args)
  if workdir is not None and '://' in workdir:
    raise ValueError(f'--workdir={workdir}: launch.py takes a path, not a URL; mount the bucket '
                     'with gcsfuse (or use NFS/Filestore) at the same path on every worker')
  if accelerator_type:
    warning = workdir_warning(accelerator_type, launch_args)
    if warning:
      print(warning, file=sys.stderr)
  python = 'python launch.py' + ''.join(' ' + shlex.quote(a) for a in launch_args)
  enter = f'cd {_remote_path(repo_dir)} && . venv/bin/activate'
  if log is None:
    command = f'{enter} && {python}'
  else:
    log_q = _remote_path(log)
    command = (f'{enter} || exit 1; nohup {python} > {log_q} 2>&1 < /dev/null & '
               f'echo "$(hostname): started launch.py, pid $!, log" {log_q}')
  return ssh_argv(name=name, zone=zone, project=project, command=command)


def default_log(launch_args: Sequence[str]) -> str:
  """The log `launch` gives a run: ~/segjax_<run_name>.log on each worker."""
  return f'~/segjax_{run_name(launch_args)}.log'


def logs_argv(*, name: str, zone: str, project: str | None = None, log: str | None = None,
              worker: str = '0', lines: int = 50, follow: bool = False) -> list[str]:
  """argv that tails log (default: the newest ~/segjax_*.log) on one worker."""
  if log is None:
    find = ('log=$(ls -t "$HOME"/segjax_*.log 2>/dev/null | head -n 1); '
            '[ -n "$log" ] || { echo "no ~/segjax_*.log on $(hostname)" >&2; exit 1; }')
  else:
    find = f'log={_remote_path(log)}'
  tail = f'tail -n {int(lines)}' + (' -F' if follow else '')
  return ssh_argv(name=name, zone=zone, project=project, worker=worker,
                  command=f'{find}; echo "== $(hostname): $log"; {tail} "$log"')


def status_argvs(*, name: str, zone: str, project: str | None = None) -> list[list[str]]:
  """argvs that describe the TPU and list every worker's launch.py processes."""
  # [l]aunch.py matches launch.py but not the shell running this pattern.
  pattern = '"python [l]aunch.py"'
  procs = (f'if pgrep -f {pattern} >/dev/null; then '
           f'pgrep -af {pattern} | sed "s/^/$(hostname): /"; '
           'else echo "$(hostname): no launch.py running"; fi')
  return [_tpu_vm('describe', name, zone, project),
          ssh_argv(name=name, zone=zone, project=project, command=procs)]


def delete_argv(*, name: str, zone: str, project: str | None = None,
                quiet: bool = False) -> list[str]:
  """argv of `gcloud compute tpus tpu-vm delete` (quiet: without gcloud's confirmation)."""
  return _tpu_vm('delete', name, zone, project) + (['--quiet'] if quiet else [])


# ----------------------------------------------------------------------------
# Running


def format_commands(argvs: Sequence[Sequence[str]]) -> str:
  """The commands as shell lines, one per line."""
  return ''.join(shlex.join(argv) + '\n' for argv in argvs)


def run_commands(argvs: Sequence[Sequence[str]], *, execute: bool = False,
                 out: TextIO | None = None) -> None:
  """Prints the commands (dry run), or runs them in order, each echoed to stderr.

  A command that exits non-zero, or cannot be started, raises CommandError
  naming it; the commands after it are not run.
  """
  if not execute:
    (out or sys.stdout).write(format_commands(argvs))
    return
  for argv in argvs:
    line = shlex.join(argv)
    print(f'+ {line}', file=sys.stderr, flush=True)
    try:
      rc = subprocess.run(list(argv), check=False).returncode
    except FileNotFoundError as e:
      raise CommandError(f'cannot run {argv[0]!r} ({e.strerror}); is the Google Cloud CLI '
                         f'installed and on PATH? Command: {line}') from e
    if rc != 0:
      raise CommandError(f'command failed with exit status {rc}: {line}')


# ----------------------------------------------------------------------------
# Command line


COMMANDS = ('create', 'install', 'launch', 'logs', 'status', 'delete')


def define_flags(fv: flags.FlagValues) -> None:
  """Defined when run as a command (not on import), so tools import side by side.
  The first argument is the command (COMMANDS); flags a command does not use
  are ignored by it."""
  def string(name, default, text, **kw):
    flags.DEFINE_string(name, default, text, flag_values=fv, **kw)

  def boolean(name, text):
    flags.DEFINE_bool(name, False, text, flag_values=fv)

  string('name', None, 'TPU name.', required=True)
  string('zone', None, 'Zone, e.g. us-central2-b.', required=True)
  string('project', None, 'Project (default: gcloud config).')
  boolean('dry_run', 'Print the commands without running them (the default).')
  boolean('execute', 'Run the commands.')
  string('accelerator_type', None, 'create: e.g. v4-8, v4-32, v5litepod-16; launch: warns of '
         'a local workdir on a multi-host slice.')
  string('version', None, 'create: TPU software version (default: the JAX one for the '
         'generation).')
  boolean('spot', 'create: a Spot TPU.')
  boolean('preemptible', 'create: a preemptible TPU.')
  string('repo_dir', REPO_DIR, 'install, launch: directory on the workers (from ~).')
  string('local_repo', str(ROOT), 'install: checkout to copy (default: this one).')
  string('repo_url', None, 'install: git clone this URL instead of copying.')
  string('branch', None, 'install: branch or tag to clone (with --repo_url).')
  string('python', PYTHON, 'install: interpreter of the venv.')
  string('jax_version', None, "install: jax[tpu] version (default: requirements.txt's pin).")
  string('log', None, 'launch: log on each worker (default: ~/segjax_<last part of '
         '--workdir>.log); logs: log path (default: the newest ~/segjax_*.log).')
  boolean('foreground', 'launch: stream the output over ssh instead of nohup and a log.')
  string('worker', '0', 'logs: worker index.')
  flags.DEFINE_integer('lines', 50, 'logs: lines to show.', flag_values=fv)
  boolean('follow', 'logs: keep following (tail -F).')
  boolean('quiet', "delete: skip gcloud's confirmation prompt.")


def commands(cmd: str, fv: flags.FlagValues, launch_args: list[str]) -> list[list[str]]:
  """The argvs of a parsed command line."""
  common = dict(name=fv.name, zone=fv.zone, project=fv.project)
  if cmd == 'create':
    if not fv.accelerator_type:
      raise ValueError('create needs --accelerator_type, e.g. v4-8')
    if fv.spot and fv.preemptible:
      raise ValueError('--spot and --preemptible exclude each other')
    return [create_argv(**common, accelerator_type=fv.accelerator_type, version=fv.version,
                        spot=fv.spot, preemptible=fv.preemptible)]
  if cmd == 'install':
    return install_argvs(**common, repo_dir=fv.repo_dir, local_repo=fv.local_repo,
                         repo_url=fv.repo_url, branch=fv.branch, python=fv.python,
                         jax_version=fv.jax_version)
  if cmd == 'launch':
    if not launch_args:
      raise ValueError('launch needs the arguments of launch.py after --, e.g. '
                       '-- --config=configs/deeplabv3plus.py --workdir=/mnt/shared/runs/x')
    log = None if fv.foreground else (fv.log or default_log(launch_args))
    return [launch_argv(**common, launch_args=launch_args, repo_dir=fv.repo_dir, log=log,
                        accelerator_type=fv.accelerator_type)]
  if cmd == 'logs':
    return [logs_argv(**common, log=fv.log, worker=fv.worker, lines=fv.lines,
                      follow=fv.follow)]
  if cmd == 'status':
    return status_argvs(**common)
  return [delete_argv(**common, quiet=fv.quiet)]


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  # argv: [program, command, launch.py's arguments (after --)...].
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise cli.UsageError(f'the first argument is the command, one of {", ".join(COMMANDS)}; '
                         f'got {argv[1:2] or "none"}')
  cmd, launch_args = argv[1], list(argv[2:])
  if launch_args and cmd != 'launch':
    raise cli.UsageError(f'arguments after -- are for launch only, got {launch_args}')
  if fv.dry_run and fv.execute:
    raise cli.UsageError('--dry_run and --execute exclude each other')
  try:
    run_commands(commands(cmd, fv, launch_args), execute=fv.execute)
  except (TypeError, OSError, CommandError) as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  cli.run(main, define_flags, positional=True)
