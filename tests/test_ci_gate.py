"""SEGJAX_REQUIRE_ALL=1 (.ci/run) turns skips into failures; without it they stay skips."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SKIPPING = textwrap.dedent('''
    import pytest

    @pytest.mark.skipif(True, reason='no ../shared/data here')
    def test_needs_data():
      pass

    def test_needs_a_peer():
      pytest.importorskip('no_such_peer_framework_xyz', reason='peer not installed')

    def test_runs():
      pass
''')


def _run(tmp_dir: Path, gate: str) -> subprocess.CompletedProcess:
  """pytest on a probe file outside the repository with tests/conftest.py loaded as a plugin."""
  (tmp_dir / 'test_probe.py').write_text(SKIPPING)
  env = dict(os.environ, SEGJAX_REQUIRE_ALL=gate,
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
  return subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider',
                         '-p', 'no:xdist', '-p', 'no:cov', '-p', 'tests.conftest',
                         'test_probe.py'], cwd=tmp_dir, env=env, capture_output=True, text=True,
                        timeout=300)


def test_skips_fail_under_the_gate_and_name_the_reason(tmp_path):
  out = _run(tmp_path, '1')
  assert out.returncode == 1, out.stdout
  assert '1 failed, 1 passed, 1 error' in out.stdout, out.stdout
  assert 'must run, but it was skipped' in out.stdout
  assert 'no ../shared/data here' in out.stdout and 'peer not installed' in out.stdout
  off = _run(tmp_path, '')
  assert off.returncode == 0, off.stdout
  assert '1 passed, 2 skipped' in off.stdout and 'SKIPPED' in off.stdout
