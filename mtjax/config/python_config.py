"""Python-config front end: a file defining `get_config() -> RunConfig`, plus `--set` overrides."""

from __future__ import annotations

import importlib.util
import os

import gin

from mtjax.config import overrides, schema


def load(path: str, assignments: list[str] = ()) -> schema.RunConfig:
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  gin.clear_config()  # python configs must not see stale gin bindings
  spec = importlib.util.spec_from_file_location(f"mtjax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"config file {path!r} must define get_config() -> RunConfig")
  cfg = module.get_config()
  if not isinstance(cfg, schema.RunConfig):
    raise TypeError(f"{path}: get_config() returned {type(cfg).__name__}, expected RunConfig")
  return overrides.apply_all(cfg, list(assignments))
