"""Parity tests against peer frameworks (requirements-peers.txt).

Each test builds a peer model with random weights (and random BatchNorm
statistics, so a swapped mean/variance cannot pass), converts its weights
with segjax.models.convert, runs both in inference mode on the same random
input and requires max|ours - peer| / max|peer| <= 1e-4 in float32. The
measured errors are printed in a table at the end of the run.
"""

import os

os.environ.setdefault('KERAS_BACKEND', 'jax')

from tests.parity import util  # noqa: E402


def pytest_terminal_summary(terminalreporter):
  if util.RESULTS:
    terminalreporter.write_sep('-', 'parity: max |ours - peer| / max |peer|')
    for name, err in sorted(util.RESULTS.items()):
      terminalreporter.write_line(f'{name:70s} {err:.2e}')


def pytest_configure(config):
  # Keras 3 on numpy 2 warns about __array__(copy=...) on every weight read.
  config.addinivalue_line('filterwarnings', 'ignore::DeprecationWarning:keras.*')
