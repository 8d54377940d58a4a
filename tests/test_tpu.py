"""segjax.tools.tpu: the gcloud commands, their quoting, dry run and execution (no gcloud, no network)."""

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segjax import cli
from segjax.tools import tpu

ROOT = Path(__file__).resolve().parents[1]
TPU_VM = ['gcloud', 'compute', 'tpus', 'tpu-vm']
ZONE = 'us-central2-b'
LIBTPU = 'https://storage.googleapis.com/jax-releases/libtpu_releases.html'
NASTY = ['--config=configs/deeplabv3plus.py:dataset=camvid,runlocal',
         '--workdir=/mnt/shared/runs/x/lr=0.001', '--config.optimizer.lr=0.001',
         '--config.data.crop_size=(1, 2)', '--config.name=a b  c', "--config.note=it's",
         '--config.q="double"', '--config.home=$HOME', '--config.cmd=`id`; rm -rf x && y | z',
         '--config.glob=*', '--config.tilde=~', '--config.bs=a\\b', '--config.tab=a\tb', '',
         '--flag', 'value with spaces']


def _command(argv):
  """The remote command of an ssh argv."""
  assert argv[-1].startswith('--command=')
  return argv[-1][len('--command='):]


def _fake_repo(path, jax_line='jax==1.2.3'):
  path.mkdir()
  (path / 'launch.py').write_text('')
  (path / 'requirements.txt').write_text(f'# core\n{jax_line}\njaxlib==1.2.3\nflax==0.1\n')
  (path / 'configs').mkdir()
  (path / 'segjax').mkdir()
  return path


# ----------------------------------------------------------------------------
# create / delete / logs / status


@pytest.mark.parametrize('accelerator,version', [
    ('v4-8', 'tpu-ubuntu2204-base'), ('v4-32', 'tpu-ubuntu2204-base'),
    ('v2-8', 'tpu-ubuntu2204-base'), ('v3-32', 'tpu-ubuntu2204-base'),
    ('v5litepod-16', 'v2-alpha-tpuv5-lite'), ('v5p-8', 'v2-alpha-tpuv5'),
    ('v6e-8', 'v2-alpha-tpuv6e')])
def test_create_default_version(accelerator, version):
  assert tpu.create_argv(name='seg', zone=ZONE, accelerator_type=accelerator) == TPU_VM + [
      'create', 'seg', f'--zone={ZONE}', f'--accelerator-type={accelerator}',
      f'--version={version}']


def test_create_options():
  assert tpu.create_argv(name='seg', zone=ZONE, accelerator_type='v4-32', project='my-proj',
                         spot=True) == TPU_VM + [
      'create', 'seg', f'--zone={ZONE}', '--project=my-proj', '--accelerator-type=v4-32',
      '--version=tpu-ubuntu2204-base', '--spot']
  argv = tpu.create_argv(name='seg', zone=ZONE, accelerator_type='v7x-8', version='my-rt',
                         preemptible=True)
  assert argv[-3:] == ['--accelerator-type=v7x-8', '--version=my-rt', '--preemptible']
  with pytest.raises(ValueError, match='exclusive'):
    tpu.create_argv(name='seg', zone=ZONE, accelerator_type='v4-8', spot=True, preemptible=True)


def test_delete_logs_status():
  assert tpu.delete_argv(name='seg', zone=ZONE) == TPU_VM + ['delete', 'seg', f'--zone={ZONE}']
  assert tpu.delete_argv(name='seg', zone=ZONE, project='p', quiet=True)[-2:] == [
      '--project=p', '--quiet']
  logs = tpu.logs_argv(name='seg', zone=ZONE, log='~/segjax_x.log', follow=True, lines=7)
  assert logs[:8] == TPU_VM + ['ssh', 'seg', f'--zone={ZONE}', '--worker=0']
  assert _command(logs).startswith('log="$HOME"/segjax_x.log;')
  assert _command(logs).endswith('tail -n 7 -F "$log"')
  assert 'ls -t "$HOME"/segjax_*.log' in _command(tpu.logs_argv(name='seg', zone=ZONE))
  describe, procs = tpu.status_argvs(name='seg', zone=ZONE)
  assert describe == TPU_VM + ['describe', 'seg', f'--zone={ZONE}']
  assert procs[:8] == TPU_VM + ['ssh', 'seg', f'--zone={ZONE}', '--worker=all']
  assert 'pgrep -af "python [l]aunch.py"' in _command(procs)


# ----------------------------------------------------------------------------
# install


def test_install_argvs_copy(tmp_path):
  repo = _fake_repo(tmp_path / 'checkout')
  argvs = tpu.install_argvs(name='seg', zone=ZONE, project='p', local_repo=repo)
  ssh = TPU_VM + ['ssh', 'seg', f'--zone={ZONE}', '--project=p', '--worker=all']
  assert argvs[0] == ssh + ['--command=mkdir -p segjax']
  assert argvs[1] == TPU_VM + [
      'scp', '--recurse', f'{repo}/launch.py', f'{repo}/requirements.txt', f'{repo}/configs',
      f'{repo}/segjax', 'seg:segjax/', f'--zone={ZONE}', '--project=p', '--worker=all']
  assert argvs[2] == ssh + [
      '--command=set -e; if ! command -v python3.11 >/dev/null 2>&1; then sudo apt-get update '
      '-q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3.11 '
      'python3.11-venv; fi; cd segjax && python3.11 -m venv venv && . venv/bin/activate && '
      'pip install -q -U pip && pip install -q -r requirements.txt && '
      f'pip install -q "jax[tpu]==1.2.3" -f {LIBTPU} && '
      'python -c "import jax; print(jax.__version__)"']
  assert len(argvs) == 3


def test_install_jax_version_is_the_pinned_one():
  pins = [line.split('==', 1)[1].strip() for line in
          (ROOT / 'requirements.txt').read_text().splitlines() if line.startswith('jax==')]
  assert len(pins) == 1
  setup = _command(tpu.install_argvs(name='seg', zone=ZONE)[-1])
  assert f'pip install -q "jax[tpu]=={pins[0]}" -f {LIBTPU}' in setup
  assert tpu.pinned_jax_version() == pins[0]


def test_install_repo_url_and_options(tmp_path):
  repo = _fake_repo(tmp_path / 'checkout')
  argvs = tpu.install_argvs(name='seg', zone=ZONE, local_repo=repo, repo_dir='~/code/seg',
                            repo_url='https://example.com/a b.git', branch='v1',
                            python='python3.12', jax_version='9.9.9')
  assert len(argvs) == 2
  assert _command(argvs[0]) == (
      'if [ -d "$HOME"/code/seg/.git ]; then git -C "$HOME"/code/seg pull -q --ff-only; '
      'else git clone -q --branch v1 \'https://example.com/a b.git\' "$HOME"/code/seg; fi')
  setup = _command(argvs[1])
  assert 'apt-get install -y -q python3.12 python3.12-venv' in setup
  assert 'cd "$HOME"/code/seg && python3.12 -m venv venv' in setup
  assert '"jax[tpu]==9.9.9"' in setup
  # Not an apt package name: no apt step.
  assert 'apt-get' not in tpu.setup_command(jax_version='1', python='/opt/py/bin/python3')


def test_install_bad_input(tmp_path):
  missing = 'no launch.py, requirements.txt, configs, segjax'
  with pytest.raises(ValueError, match=f'not a segjax checkout: {missing}'):
    tpu.install_argvs(name='seg', zone=ZONE, local_repo=tmp_path)
  repo = _fake_repo(tmp_path / 'nojax', jax_line='numpy==1')
  with pytest.raises(ValueError, match='pins no jax version'):
    tpu.install_argvs(name='seg', zone=ZONE, local_repo=repo)
  with pytest.raises(ValueError, match='no .*requirements.txt to read the jax version from'):
    tpu.install_argvs(name='seg', zone=ZONE, local_repo=tmp_path, repo_url='u')
  assert tpu.install_argvs(name='seg', zone=ZONE, local_repo=tmp_path, repo_url='u',
                           jax_version='1.0')[-1][-1].count('"jax[tpu]==1.0"') == 1
  with pytest.raises(ValueError, match='branch needs repo_url'):
    tpu.install_argvs(name='seg', zone=ZONE, branch='main')
  with pytest.raises(ValueError, match='bad jax version'):
    tpu.install_argvs(name='seg', zone=ZONE, jax_version='1; rm -rf ~')


def _fake_tool(path, body):
  path.write_text(body)
  path.chmod(0o755)


def test_install_setup_runs_in_a_shell(tmp_path):
  """The setup command, run by sh with fake python3.11/pip, installs what it should."""
  home = tmp_path / 'home'
  (home / 'segjax').mkdir(parents=True)
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  calls = tmp_path / 'calls'
  # python3.11 -m venv venv: a venv whose pip and python record their arguments.
  _fake_tool(bin_dir / 'python3.11', f"""#!/bin/sh
[ "$1 $2" = "-m venv" ] || exit 9
mkdir -p "$3/bin"
echo "PATH=\\"$PWD/$3/bin:\\$PATH\\"" > "$3/bin/activate"
for t in pip python; do
  printf '#!/bin/sh\\necho "%s $*" >> {calls}\\n' "$t" > "$3/bin/$t"; chmod +x "$3/bin/$t"
done
""")
  command = tpu.setup_command(jax_version='0.10.2')
  env = dict(os.environ, HOME=str(home), PATH=f'{bin_dir}:/usr/bin:/bin')
  subprocess.run(['sh', '-c', command], cwd=home, env=env, check=True)
  assert calls.read_text().splitlines() == [
      'pip install -q -U pip', 'pip install -q -r requirements.txt',
      f'pip install -q jax[tpu]==0.10.2 -f {LIBTPU}',
      'python -c import jax; print(jax.__version__)']


# ----------------------------------------------------------------------------
# launch


def test_launch_argv_exact():
  args = ['--config=configs/deeplabv3plus.py:runlocal', '--workdir=/mnt/shared/runs/x/lr=0.001',
          '--config.optimizer.lr=0.001']
  assert tpu.launch_argv(name='seg', zone=ZONE, launch_args=args) == TPU_VM + [
      'ssh', 'seg', f'--zone={ZONE}', '--worker=all',
      '--command=cd segjax && . venv/bin/activate && python launch.py '
      '--config=configs/deeplabv3plus.py:runlocal --workdir=/mnt/shared/runs/x/lr=0.001 '
      '--config.optimizer.lr=0.001']
  argv = tpu.launch_argv(name='seg', zone=ZONE, launch_args=args, project='p',
                         log='~/segjax_lr_0.001.log')
  assert argv[7:9] == ['--project=p', '--worker=all']
  assert _command(argv) == (
      'cd segjax && . venv/bin/activate || exit 1; nohup python launch.py '
      '--config=configs/deeplabv3plus.py:runlocal --workdir=/mnt/shared/runs/x/lr=0.001 '
      '--config.optimizer.lr=0.001 > "$HOME"/segjax_lr_0.001.log 2>&1 < /dev/null & '
      'echo "$(hostname): started launch.py, pid $!, log" "$HOME"/segjax_lr_0.001.log')


@pytest.mark.parametrize('log', [None, '~/segjax_x.log'])
def test_launch_command_round_trips(log):
  command = _command(tpu.launch_argv(name='seg', zone=ZONE, launch_args=NASTY, log=log))
  words = shlex.split(command)
  start = words.index('launch.py') + 1
  assert words[start:start + len(NASTY)] == NASTY
  assert words[start + len(NASTY):start + len(NASTY) + 1] == ([] if log is None else ['>'])
  # Quoted: nothing of the arguments is left for the shell to expand or run.
  assert "'--config.home=$HOME'" in command and "'--config.glob=*'" in command


@pytest.mark.parametrize('background', [False, True])
def test_launch_command_runs_in_a_shell(tmp_path, background):
  """The remote command, run by bash as sshd would, gives launch.py exactly the arguments."""
  home = tmp_path / 'home'
  venv_bin = home / 'segjax' / 'venv' / 'bin'
  venv_bin.mkdir(parents=True)
  (venv_bin / 'activate').write_text(f'PATH="{venv_bin}:$PATH"\n')
  out = tmp_path / 'argv.json'
  _fake_tool(venv_bin / 'python', f"""#!{sys.executable}
import json, os, sys
json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd()}}, open({str(out)!r}, 'w'))
print('training')
""")
  log = '~/logs dir/x.log' if background else None
  if background:
    (home / 'logs dir').mkdir()
  command = _command(tpu.launch_argv(name='seg', zone=ZONE, launch_args=NASTY, log=log))
  env = dict(os.environ, HOME=str(home))
  res = subprocess.run(['bash', '-c', command], cwd=home, env=env, capture_output=True,
                       text=True, timeout=60, check=True)
  if background:
    assert 'started launch.py, pid' in res.stdout and str(home / 'logs dir/x.log') in res.stdout
    for _ in range(200):
      if out.exists() and (home / 'logs dir/x.log').read_text():
        break
      time.sleep(0.05)
    assert (home / 'logs dir/x.log').read_text() == 'training\n'
  else:
    assert res.stdout == 'training\n'
  got = json.loads(out.read_text())
  assert got == {'argv': ['launch.py'] + NASTY, 'cwd': str(home / 'segjax')}


def test_every_remote_command_is_valid_shell(tmp_path):
  repo = _fake_repo(tmp_path / 'checkout')
  argvs = (tpu.install_argvs(name='seg', zone=ZONE, local_repo=repo) +
           tpu.install_argvs(name='seg', zone=ZONE, local_repo=repo, repo_url='u', branch='b') +
           [tpu.launch_argv(name='seg', zone=ZONE, launch_args=NASTY, log=log)
            for log in (None, '~/l.log', 'rel/l.log')] +
           [tpu.logs_argv(name='seg', zone=ZONE, log=log) for log in (None, '~/l.log')] +
           tpu.status_argvs(name='seg', zone=ZONE))
  commands = [_command(a) for a in argvs if a[4] == 'ssh']
  assert len(commands) == 10
  for command in commands:
    assert subprocess.run(['bash', '-n', '-c', command]).returncode == 0, command


@pytest.mark.parametrize('accelerator,workdir,warns', [
    ('v4-32', '/home/me/runs/x', True), ('v4-32', 'runs/x', True),
    ('v4-32', '/mnt/shared/runs/x', True), ('v4-8', 'runs/x', False),
    ('v5litepod-16', 'runs/x', True), ('v5litepod-8', 'runs/x', False),
    ('v5p-16', 'runs/x', True), ('v6e-64', 'runs/x', True)])
def test_workdir_warning(capsys, accelerator, workdir, warns):
  tpu.launch_argv(name='seg', zone=ZONE, launch_args=['--config=c.py', f'--workdir={workdir}'],
                  accelerator_type=accelerator)
  err = capsys.readouterr().err
  assert (f'--workdir={workdir} must be on a filesystem that every worker mounts' in err) == warns
  assert (accelerator in err) == warns
  # --workdir X works as well as --workdir=X.
  assert (tpu.workdir_warning(accelerator, ['--workdir', workdir]) is not None) == warns


def test_url_workdir_is_refused():
  with pytest.raises(ValueError, match='gs://b/x: launch.py takes a path, not a URL'):
    tpu.launch_argv(name='seg', zone=ZONE, launch_args=['--config=c.py', '--workdir=gs://b/x'])


def test_run_name():
  assert tpu.run_name(['--workdir=/mnt/shared/runs/x/lr=0.001/']) == 'lr_0.001'
  assert tpu.run_name(['--workdir', 'runs/a b(1)']) == 'a_b_1'
  assert tpu.run_name(['--config=c.py']) == 'run'
  assert tpu.default_log(['--workdir=runs/x']) == '~/segjax_x.log'


# ----------------------------------------------------------------------------
# Command line: dry run


def _main(capsys, *argv):
  rc = cli.invoke(tpu.define_flags, tpu.main, list(argv), prog='segjax tpu', positional=True)
  out, err = capsys.readouterr()
  return rc, out, err


def test_cli_dry_run_prints_the_commands(capsys):
  rc, out, _ = _main(capsys, 'create', '--name=seg', f'--zone={ZONE}',
                     '--accelerator_type=v4-32', '--spot')
  assert rc == 0
  assert out == (f'gcloud compute tpus tpu-vm create seg --zone={ZONE} '
                 '--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot\n')
  rc, out, _ = _main(capsys, 'delete', '--name=seg', f'--zone={ZONE}', '--dry_run')
  assert (rc, out) == (0, f'gcloud compute tpus tpu-vm delete seg --zone={ZONE}\n')

  rc, out, _ = _main(capsys, 'install', '--name=seg', f'--zone={ZONE}')
  assert rc == 0
  assert out == tpu.format_commands(tpu.install_argvs(name='seg', zone=ZONE))
  assert [shlex.split(line) for line in out.splitlines()] == tpu.install_argvs(
      name='seg', zone=ZONE)

  rc, out, err = _main(capsys, 'launch', '--name=seg', f'--zone={ZONE}',
                       '--accelerator_type=v4-32', '--', *NASTY)
  assert rc == 0 and 'every worker mounts' in err  # v4-32 is multi-host.
  expected = tpu.launch_argv(name='seg', zone=ZONE, launch_args=NASTY,
                             log='~/segjax_lr_0.001.log')
  assert [shlex.split(line) for line in out.splitlines()] == [expected]

  rc, out, _ = _main(capsys, 'launch', '--name=seg', f'--zone={ZONE}', '--foreground', '--',
                     '--config=c.py', '--workdir=runs/x')
  assert out == ('gcloud compute tpus tpu-vm ssh seg --zone=us-central2-b --worker=all '
                 "'--command=cd segjax && . venv/bin/activate && python launch.py "
                 "--config=c.py --workdir=runs/x'\n")


def test_cli_module_entry_point():
  res = subprocess.run([sys.executable, '-m', 'segjax.tools.tpu', 'delete', '--name=seg',
                        f'--zone={ZONE}', '--project=p'], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert res.returncode == 0, res.stderr
  assert res.stdout == f'gcloud compute tpus tpu-vm delete seg --zone={ZONE} --project=p\n'


# ----------------------------------------------------------------------------
# Command line: execution with a fake gcloud


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
  """A gcloud on PATH that records its arguments and fails when they contain $FAKE_FAIL."""
  bin_dir = tmp_path / 'fakebin'
  bin_dir.mkdir()
  calls = tmp_path / 'gcloud_calls'
  _fake_tool(bin_dir / 'gcloud', """#!/bin/sh
{ for a in "$@"; do printf '%s\\037' "$a"; done; printf '\\n'; } >> "$FAKE_CALLS"
if [ -n "$FAKE_FAIL" ]; then case "$*" in *"$FAKE_FAIL"*) exit 3;; esac; fi
exit 0
""")
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  monkeypatch.setenv('FAKE_CALLS', str(calls))
  monkeypatch.delenv('FAKE_FAIL', raising=False)

  def recorded():
    if not calls.exists():
      return []
    return [['gcloud'] + line.split('\x1f')[:-1] for line in calls.read_text().splitlines()]
  return recorded


def test_execute_runs_the_commands_in_order(capsys, fake_gcloud, tmp_path):
  repo = _fake_repo(tmp_path / 'checkout')
  rc, out, err = _main(capsys, 'install', '--name=seg', f'--zone={ZONE}',
                       f'--local_repo={repo}', '--execute')
  assert rc == 0 and out == ''
  expected = tpu.install_argvs(name='seg', zone=ZONE, local_repo=repo)
  assert fake_gcloud() == expected
  assert err == ''.join(f'+ {shlex.join(a)}\n' for a in expected)
  rc, _, _ = _main(capsys, 'launch', '--name=seg', f'--zone={ZONE}', '--execute', '--', *NASTY)
  assert rc == 0
  assert fake_gcloud()[-1] == tpu.launch_argv(name='seg', zone=ZONE, launch_args=NASTY,
                                              log='~/segjax_lr_0.001.log')


def test_execute_stops_at_a_failing_command(capsys, fake_gcloud, monkeypatch, tmp_path):
  repo = _fake_repo(tmp_path / 'checkout')
  argvs = tpu.install_argvs(name='seg', zone=ZONE, local_repo=repo)
  monkeypatch.setenv('FAKE_FAIL', 'scp')
  with pytest.raises(tpu.CommandError) as e:
    tpu.run_commands(argvs, execute=True)
  assert str(e.value) == f'command failed with exit status 3: {shlex.join(argvs[1])}'
  assert fake_gcloud() == argvs[:2]  # The setup after the failed scp did not run.
  rc, out, err = _main(capsys, 'delete', '--name=seg', f'--zone={ZONE}', '--execute')
  assert rc == 0
  monkeypatch.setenv('FAKE_FAIL', 'delete')
  rc, out, err = _main(capsys, 'delete', '--name=seg', f'--zone={ZONE}', '--execute')
  assert rc == 1
  assert err.endswith('ERROR: command failed with exit status 3: '
                      f'gcloud compute tpus tpu-vm delete seg --zone={ZONE}\n')


def test_execute_without_gcloud(monkeypatch, tmp_path):
  monkeypatch.setenv('PATH', str(tmp_path))
  with pytest.raises(tpu.CommandError, match="cannot run 'gcloud'.*Google Cloud CLI.*"
                     'Command: gcloud compute tpus tpu-vm delete seg'):
    tpu.run_commands([tpu.delete_argv(name='seg', zone=ZONE)], execute=True)


def test_dry_run_runs_nothing(capsys, fake_gcloud):
  rc, out, _ = _main(capsys, 'status', '--name=seg', f'--zone={ZONE}')
  assert rc == 0 and len(out.splitlines()) == 2
  assert fake_gcloud() == []


# ----------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize('accelerator', ['v4_8', 'v4', 'tpu-v4-8', 'v4-', 'V4-8', 'v4-0',
                                         'v4-8 ', ''])
def test_bad_accelerator_type(accelerator):
  with pytest.raises(ValueError, match=r'unknown accelerator type .*expected <generation>-<size>'):
    tpu.create_argv(name='seg', zone=ZONE, accelerator_type=accelerator)


def test_unknown_generation_needs_a_version(capsys):
  with pytest.raises(ValueError, match=r"no default TPU software version for 'v5e-8' "
                     r'\(TPU v5e is v5litepod-<chips>\).*pass --version'):
    tpu.create_argv(name='seg', zone=ZONE, accelerator_type='v5e-8')
  rc, out, err = _main(capsys, 'create', '--name=seg', f'--zone={ZONE}',
                       '--accelerator_type=v4_8')
  assert (rc, out) == (2, '')
  assert err.startswith("ERROR: unknown accelerator type 'v4_8'") and err.count('\n') == 1


@pytest.mark.parametrize('missing', ['--name', '--zone'])
def test_missing_name_or_zone(capsys, missing):
  argv = [a for a in ['launch', '--name=seg', f'--zone={ZONE}']
          if not a.startswith(missing)] + ['--', '--config=c.py', '--workdir=w']
  rc, out, err = _main(capsys, *argv)
  assert (rc, out) == (2, '')
  assert err == f'ERROR: {missing}=None: Flag {missing} must have a value other than None.\n'


def test_bad_names_and_arguments(capsys):
  with pytest.raises(ValueError, match='a TPU name is needed'):
    tpu.delete_argv(name='', zone=ZONE)
  with pytest.raises(ValueError, match="bad TPU name 'My_TPU'"):
    tpu.delete_argv(name='My_TPU', zone=ZONE)
  with pytest.raises(ValueError, match='a zone is needed'):
    tpu.delete_argv(name='seg', zone='')
  with pytest.raises(ValueError, match="bad zone 'us central'"):
    tpu.delete_argv(name='seg', zone='us central')
  with pytest.raises(ValueError, match='with a newline or NUL are not supported'):
    tpu.launch_argv(name='seg', zone=ZONE, launch_args=['--config.x=a\nb'])
  with pytest.raises(TypeError, match='list of strings'):
    tpu.launch_argv(name='seg', zone=ZONE, launch_args='--config=c.py --workdir=w')
  rc, _, err = _main(capsys, 'launch', '--name=seg', f'--zone={ZONE}')
  assert rc == 2 and 'launch needs the arguments of launch.py after --' in err
  rc, _, err = _main(capsys, 'delete', '--name=seg', f'--zone={ZONE}', '--', '--x')
  assert rc == 2 and 'arguments after -- are for launch only' in err
  rc, _, err = _main(capsys, 'delete', '--name=seg', f'--zone={ZONE}', '--dry_run', '--execute')
  assert rc == 2 and '--dry_run and --execute exclude each other' in err
  rc, _, err = _main(capsys, 'create', '--name=seg', f'--zone={ZONE}', '--accelerator_type=v4-8',
                     '--spot', '--preemptible')
  assert rc == 2 and '--spot and --preemptible exclude each other' in err
