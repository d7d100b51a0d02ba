"""JAX's persistent compilation cache for every mtjax command, on by default.

A run's start-up is mostly compilation: the quickstart's train step, evaluation's decode and
scoring programs. XLA's compiled programs do not change between runs of the same model and
shapes, so a later run (a restart after preemption, `mtjax eval` after training, the next
quickstart) loads them from disk instead of compiling again; results are unchanged (the same
program).

Where: `$JAX_COMPILATION_CACHE_DIR` when set (JAX's own variable: left alone), else
`$MTJAX_COMPILATION_CACHE`, else `$XDG_CACHE_HOME/mtjax/jax_cache` (`~/.cache/mtjax/jax_cache`).
`MTJAX_COMPILATION_CACHE=none` turns it off. Every program is kept (JAX's default keeps only
those that took over a second to compile), up to 4 GiB, least recently used dropped first. Always a local folder: every process of the host
reads and writes it (a `gs://` path is refused with one `error:` line). A folder a caller set
before (`jax.config.jax_compilation_cache_dir`, e.g. `mtjax ablate --compilation_cache_dir`) is
kept.
"""

from __future__ import annotations

import logging
import os

from mtjax import errors

log = logging.getLogger(__name__)

ENV = "MTJAX_COMPILATION_CACHE"
MAX_BYTES = 4 << 30


def default_dir() -> str:
  """`$XDG_CACHE_HOME/mtjax/jax_cache`, else `~/.cache/mtjax/jax_cache`."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mtjax", "jax_cache")


def chosen_dir(env=os.environ) -> str | None:
  """The folder this process should use, or None (off, or JAX's own variable decides)."""
  if env.get("JAX_COMPILATION_CACHE_DIR"):
    return None  # JAX reads it itself
  value = env.get(ENV, "")
  if value.lower() == "none":
    return None
  if "://" in value:
    raise errors.ConfigError(f"{ENV}={value}: the compilation cache must be a local folder "
                             "(every process of the host reads and writes it)")
  return value or default_dir()


def enable() -> str | None:
  """Points JAX's compilation cache at `chosen_dir()` unless a folder is set already; returns
  the folder in use (None: no cache). Safe to call more than once."""
  import jax  # pylint: disable=g-import-not-at-top

  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  path = chosen_dir()
  if path is None:
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:  # a read-only home: run without the cache rather than fail
    log.warning("compilation cache %s unusable (%s): compiling without it", path, e)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  # Every program, not only those over JAX's 1 s default: start-up compiles dozens of small
  # ones (parameter initialisers, evaluation's batches) that add up to seconds.
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  # Bounded: least recently used programs go first past MAX_BYTES (a big model's train step
  # is tens of MB; one folder serves every run of the machine).
  if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  return path
