import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / 'shared' / 'data'
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# Several tests build the same tiny model and step functions; XLA:CPU compiles
# dominate the suite, so share compiled programs through JAX's persistent cache
# (set through the environment so that subprocesses use it too).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'segjax_test_jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

# The XLA:CPU flags every entry point sets (importing segjax does not); in
# os.environ, so that subprocesses inherit them.
from segjax import platform  # pylint: disable=g-import-not-at-top,wrong-import-position

platform.configure_xla_cpu()


# SEGJAX_REQUIRE_ALL=1 (set by .ci/run): a test that would be skipped (no
# ../shared/data, a peer framework not installed, ...) fails instead, naming
# the skip reason, so CI cannot pass by running less. tests/parity inherits
# this hook (pytest loads this conftest for every test below tests/).
REQUIRE_ALL = os.environ.get('SEGJAX_REQUIRE_ALL', '') not in ('', '0')


def _skip_reason(longrepr) -> str:
  if isinstance(longrepr, tuple) and len(longrepr) == 3:
    return f'{longrepr[0]}:{longrepr[1]}: {longrepr[2]}'
  return str(longrepr)


def _fail_skip(report) -> None:
  if REQUIRE_ALL and report.skipped and not hasattr(report, 'wasxfail'):
    report.outcome = 'failed'
    report.longrepr = ('SEGJAX_REQUIRE_ALL=1: this test must run, but it was skipped: '
                       + _skip_reason(report.longrepr))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  del item, call
  outcome = yield
  _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  del collector
  outcome = yield
  _fail_skip(outcome.get_result())
