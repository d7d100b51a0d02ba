"""Quiet start: TensorFlow's C++ start-up lines stay off stderr (`mtjax ... --verbose` shows them).

mtjax uses TensorFlow only through SeqIO (task preprocessing when caching, metric functions), yet
importing it prints, twice (two of its shared libraries each log before absl is initialised):

  WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
  I0000 00:00:... cudart_stub.cc:31] Could not find cuda drivers on your machine, ...

Those lines are written by absl's C++ logging before TensorFlow reads `TF_CPP_MIN_LOG_LEVEL`, so
no environment variable reaches them. `TF_CPP_MIN_LOG_LEVEL=3` (set by `install` unless the user
set it) does silence what TensorFlow logs later (`cuda_platform.cc ... failed call to cuInit`,
`cpu_feature_guard.cc`). For the import itself, an import hook runs the first
`import tensorflow` with file descriptor 2 pointed at a temporary file, then writes everything
back to stderr except absl's banner and C++ log lines at levels I / W / E (fatal ones and
anything that is not such a line, e.g. a Python traceback, are kept). Only that import is
filtered, and only in the process that installs the hook.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

HOOKED = ("tensorflow",)
# absl / glog C++ log lines, e.g. `I0000 00:00:1796107737.418019    1832 cudart_stub.cc:31] ...`
_CPP_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:[\d.]+\s+\d+ \S+:\d+\] ")
_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",  # cpu_feature_guard's second line
)


def is_noise(line: str) -> bool:
  """Whether a stderr line is C++ start-up logging (not fatal), which quiet mode drops."""
  return bool(_CPP_LOG.match(line)) or line.startswith(_NOISE)


@contextlib.contextmanager
def filtered_stderr():
  """Runs the block with fd 2 captured; afterwards writes back what `is_noise` keeps (all of it
  if the block raises, so an import error shows everything that led to it)."""
  sys.stderr.flush()
  saved = os.dup(2)
  failed = False
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    except BaseException:
      failed = True
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      text = capture.read().decode("utf-8", "replace")
      kept = text if failed else "".join(line for line in text.splitlines(keepends=True)
                                         if not is_noise(line))
      if kept:
        sys.stderr.write(kept)
        sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
  """Wraps a module's loader: its body runs under `filtered_stderr`."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    with filtered_stderr():
      self._loader.exec_module(module)

  def __getattr__(self, name):  # is_package, get_code, ... of the real loader
    return getattr(self._loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
  """Finds `HOOKED` top-level modules with the other finders and wraps their loader (once)."""

  def find_spec(self, name, path=None, target=None):
    if name not in HOOKED:
      return None
    uninstall()  # one import is enough (and find_spec below must not come back here)
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
      return spec
    spec.loader = _QuietLoader(spec.loader)
    return spec


_FINDER = _QuietFinder()


def install() -> None:
  """Quiet mode for this process: TF's log level (unless the user set one) and the import hook
  (nothing to hook when TensorFlow is already imported)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if any(name in sys.modules for name in HOOKED) or _FINDER in sys.meta_path:
    return
  sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
  if _FINDER in sys.meta_path:
    sys.meta_path.remove(_FINDER)
