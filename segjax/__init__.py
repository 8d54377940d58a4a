"""segjax: semantic segmentation in JAX/Flax."""

import os as _os

# XLA:CPU defaults that segjax changes (measured with
# benchmarks/train_throughput.py; see benchmarks/NOTES.md):
#  * YNNPACK convolutions are 2-10x slower than Eigen's on the small-channel and
#    3x3 convolutions of segmentation networks;
#  * the concurrency-optimized scheduler made the train step 1.2-1.5x slower.
# Both flags only affect the CPU backend, and only when jax has not created it
# yet; a setting of the same flag in XLA_FLAGS wins.
_CPU_FLAGS = {
    'xla_cpu_experimental_ynn_fusion_type': '-individual_convolution',
    'xla_cpu_enable_concurrency_optimized_scheduler': 'false',
}
for _flag, _value in _CPU_FLAGS.items():
  if _flag not in _os.environ.get('XLA_FLAGS', ''):
    _os.environ['XLA_FLAGS'] = (_os.environ.get('XLA_FLAGS', '') +
                                f' --{_flag}={_value}').strip()
