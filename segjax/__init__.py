"""segjax: semantic segmentation in JAX/Flax."""

import os as _os

# XLA:CPU's YNNPACK convolutions are 2-10x slower than its Eigen ones on the
# small-channel and 3x3 convolutions of segmentation networks (measured in
# benchmarks/train_throughput.py, see benchmarks/NOTES.md). The flag only
# affects the CPU backend and only when jax has not created it yet; an
# explicit setting of the same flag in XLA_FLAGS wins.
_YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
if _YNN_FLAG not in _os.environ.get('XLA_FLAGS', ''):
  _os.environ['XLA_FLAGS'] = (_os.environ.get('XLA_FLAGS', '') +
                              f' --{_YNN_FLAG}=-individual_convolution').strip()
