"""Python-config front end: a file defining `get_config() -> RunConfig`, plus `--set` overrides."""

from __future__ import annotations

import importlib.util
import os

import gin

from mtjax.config import overrides, schema


def call_file(path: str, function: str, what: str, returns: str):
  """Imports the Python file `path` (a config or sweep) and returns `function()`; errors name
  the file and what it must define."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"mtjax_{what}_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, function):
    raise AttributeError(f"{what} file {path!r} must define {function}() -> {returns}")
  return getattr(module, function)()


def load(path: str, assignments: list[str] = ()) -> schema.RunConfig:
  gin.clear_config()  # python configs must not see stale gin bindings
  cfg = call_file(path, "get_config", "config", "RunConfig")
  if not isinstance(cfg, schema.RunConfig):
    raise TypeError(f"{path}: get_config() returned {type(cfg).__name__}, expected RunConfig")
  return overrides.apply_all(cfg, list(assignments))
