"""Compilation settings for entry points: the persistent JAX compilation cache,
XLA's GPU autotuning level, and timed (ahead-of-time) compilation.

Entry points (launch.py, the benchmarks, the tools) call `setup(config)` once,
before anything is compiled and ideally before the first JAX backend call:

  from segjax import compile_cache
  compile_cache.setup(config)            # cache dir + autotune level
  compiled, seconds = compile_cache.timed_compile(jitted_step, state, batch, rng)

Nothing happens on import. Config keys (segjax/config.py, block `compile`):

  compile.cache_dir   'auto' (default): $JAX_COMPILATION_CACHE_DIR if set, else
                      $XDG_CACHE_HOME/segjax/jax_cache (~/.cache/segjax/jax_cache);
                      '' disables the cache; anything else is the directory.
                      A rerun or a resumed run with the same program, jax
                      version and XLA flags loads the executable instead of
                      compiling it again.
  compile.cache_min_compile_seconds  programs that compiled faster are not
                      written; -1 (default) keeps jax's setting (1 s, or
                      $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS); 0 caches all.
  compile.gpu_autotune_level  XLA's --xla_gpu_autotune_level (0 = no autotuning:
                      cuDNN/cuBLAS heuristics pick the kernels, fastest
                      compile; 1 = autotune; 2-4 add buffer initialisation,
                      re-initialisation and redzone correctness checks, each
                      slower to compile). -1 leaves XLA's default (4) alone.
                      Only read when the GPU backend starts, so setup() must
                      run before it; an XLA_FLAGS value the user set wins.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

DEFAULT_AUTOTUNE_LEVEL = -1  # Keep XLA's default until a GPU measurement says otherwise.

_counts_lock = threading.Lock()
_counts = {'hits': 0, 'misses': 0, 'requests': 0}
_listening = False


def default_cache_dir() -> str:
  """$JAX_COMPILATION_CACHE_DIR, else <XDG cache>/segjax/jax_cache."""
  env = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  if env:
    return env
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'segjax', 'jax_cache')


def resolve_cache_dir(value: str) -> str:
  """The cache directory a compile.cache_dir value means ('' = disabled)."""
  value = str(value)
  if value == 'auto':
    return default_cache_dir()
  return os.path.abspath(os.path.expanduser(value)) if value else ''


def _on_event(event: str, **kwargs) -> None:
  del kwargs
  key = {'/jax/compilation_cache/cache_hits': 'hits',
         '/jax/compilation_cache/cache_misses': 'misses',
         '/jax/compilation_cache/compile_requests_use_cache': 'requests'}.get(event)
  if key:
    with _counts_lock:
      _counts[key] += 1


def _listen() -> None:
  global _listening
  if not _listening:
    from jax import monitoring  # pylint: disable=g-import-not-at-top
    monitoring.register_event_listener(_on_event)
    _listening = True


def cache_counts() -> dict[str, int]:
  """Persistent-cache hits, misses and requests seen since setup() (from jax's
  monitoring events)."""
  with _counts_lock:
    return dict(_counts)


def set_cache_dir(directory: str, min_compile_seconds: float = -1.0) -> str:
  """Points jax's persistent compilation cache at `directory` ('' disables it)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  _listen()
  current = getattr(jax.config, 'jax_compilation_cache_dir', None)
  if directory:
    os.makedirs(directory, exist_ok=True)
    if min_compile_seconds >= 0:
      jax.config.update('jax_persistent_cache_min_compile_time_secs', float(min_compile_seconds))
  if (current or '') != directory:
    jax.config.update('jax_compilation_cache_dir', directory or None)
    # jax decides once per process whether the cache is on; start over.
    cc.reset_cache()
  return directory


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def set_autotune_level(level: int) -> str | None:
  """Adds --xla_gpu_autotune_level=level to XLA_FLAGS (before the backend
  starts). Returns a warning line when it cannot take effect, else None."""
  level = int(level)
  if level < 0:
    return None
  if not 0 <= level <= 4:
    raise ValueError(f'compile.gpu_autotune_level must be -1 or in [0, 4], got {level}')
  flags = os.environ.get('XLA_FLAGS', '')
  if '--xla_gpu_autotune_level' in flags:
    return None  # The user's explicit XLA_FLAGS win.
  if _backend_started():
    return (f'WARNING: compile.gpu_autotune_level={level} not applied: the JAX backend '
            'had already started; call segjax.compile_cache.setup() earlier or set '
            f'XLA_FLAGS=--xla_gpu_autotune_level={level}')
  os.environ['XLA_FLAGS'] = (flags + f' --xla_gpu_autotune_level={level}').strip()
  return None


def setup(config) -> dict[str, Any]:
  """Applies config.compile (see the module docstring); returns what was set."""
  c = config.compile
  warning = set_autotune_level(int(c.gpu_autotune_level))
  if warning:
    print(warning, flush=True)
  directory = set_cache_dir(resolve_cache_dir(c.cache_dir),
                            float(c.cache_min_compile_seconds))
  return {'cache_dir': directory, 'autotune_level': int(c.gpu_autotune_level),
          'autotune_applied': warning is None}


def timed_compile(jitted: Callable, *args, **kwargs) -> tuple[Any, float, int]:
  """(compiled, seconds, persistent-cache hits) of jitted.lower(*args).compile().

  The compiled executable runs like the jitted function for arguments of the
  same shapes, dtypes and shardings (donation included).
  """
  before = cache_counts()['hits']
  t0 = time.perf_counter()
  compiled = jitted.lower(*args, **kwargs).compile()
  seconds = time.perf_counter() - t0
  return compiled, seconds, cache_counts()['hits'] - before


def compile_message(name: str, seconds: float, hits: int) -> str:
  how = 'loaded from the persistent compilation cache' if hits else 'compiled'
  return f'{name}: {how} in {seconds:.1f} s'
