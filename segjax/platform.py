"""Process-wide settings that an entry point applies before JAX starts.

`import segjax` changes nothing; entry points (launch.py, the tools, the
benchmarks, tests/conftest.py) call `configure_xla_cpu()` first thing.
"""

import os

from absl import logging
from jax._src import xla_bridge

# XLA:CPU defaults that segjax changes (measured with
# benchmarks/train_throughput.py; see benchmarks/NOTES.md):
#  * YNNPACK convolutions are 2-10x slower than Eigen's on the small-channel and
#    3x3 convolutions of segmentation networks;
#  * the concurrency-optimized scheduler made the train step 1.2-1.5x slower.
# Both flags only affect the CPU backend.
CPU_FLAGS = {
    'xla_cpu_experimental_ynn_fusion_type': '-individual_convolution',
    'xla_cpu_enable_concurrency_optimized_scheduler': 'false',
}


def _backends_exist() -> bool:
  check = getattr(xla_bridge, 'backends_are_initialized', None)  # Private API: may move.
  return bool(check and check())


def configure_xla_cpu(environ=None) -> list[str]:
  """Adds CPU_FLAGS to XLA_FLAGS, each unless XLA_FLAGS already sets it.

  XLA reads XLA_FLAGS when JAX creates its first backend, so call this before
  any array is made or jax.devices() is asked (after that it only warns).
  Returns the flags added.
  """
  environ = os.environ if environ is None else environ
  current = environ.get('XLA_FLAGS', '')
  added = [f'--{flag}={value}' for flag, value in CPU_FLAGS.items() if flag not in current]
  if not added:
    return []
  if environ is os.environ and _backends_exist():
    logging.warning('configure_xla_cpu: JAX backends already exist; %s not applied',
                    ' '.join(added))
    return []
  environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
  return added
