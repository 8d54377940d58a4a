import os
import sys
import tempfile
from pathlib import Path

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
