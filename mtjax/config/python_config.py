"""Python-config front end: a file defining `get_config() -> RunConfig`, plus `--set` overrides.

The file is a path, a URL (`gs://...`, read through `mtjax.fs`) or the name of a packaged config
(`quickstart`, `experiments/t0`: `mtjax/config/packaged.py`).
"""

from __future__ import annotations

import importlib.util
import os
import types

import gin

from mtjax import errors, fs
from mtjax.config import overrides, packaged, schema


def call_file(path: str, function: str, what: str, returns: str):
  """Imports the Python file `path` (a config or sweep; a local path or a URL) and returns
  `function()`; errors name the file and what it must define."""
  name = f"mtjax_{what}_{abs(hash(path))}"
  if fs.is_url(path):
    if not fs.exists(path):
      raise errors.MissingError(f"{what} file {path!r} does not exist")
    module = types.ModuleType(name)
    module.__file__ = path
    exec(compile(fs.read_text(path), path, "exec"), module.__dict__)  # pylint: disable=exec-used
  else:
    if not os.path.exists(path):
      raise errors.MissingError(f"{what} file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  if not hasattr(module, function):
    raise AttributeError(f"{what} file {path!r} must define {function}() -> {returns}")
  return getattr(module, function)()


def load(path: str, assignments: list[str] = ()) -> schema.RunConfig:
  gin.clear_config()  # python configs must not see stale gin bindings
  path = packaged.resolve_python(path)
  cfg = call_file(path, "get_config", "config", "RunConfig")
  if not isinstance(cfg, schema.RunConfig):
    raise TypeError(f"{path}: get_config() returned {type(cfg).__name__}, expected RunConfig")
  return overrides.apply_all(cfg, list(assignments))
