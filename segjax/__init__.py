"""segjax: semantic segmentation in JAX/Flax.

Importing segjax has no side effects; entry points call
segjax.platform.configure_xla_cpu() for the XLA:CPU flags segjax measured.
"""
