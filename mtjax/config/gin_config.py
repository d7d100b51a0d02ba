"""Gin front end, with T5X habits: `--gin_file=a.gin --gin.MACRO=value --gin.Class.param=value`.

`--gin.X=Y` becomes the binding `X = Y`. Gin itself rejects unknown configurables and
parameters (naming them); an override of a macro that no gin file uses is rejected here, since
gin would otherwise ignore it silently.
"""

from __future__ import annotations

import os
import re

import gin

from mtjax.config import schema

_MACRO_REF = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")


def _read(path: str, search_dirs: list[str]) -> str:
  for folder in [""] + search_dirs:
    candidate = os.path.join(folder, path)
    if os.path.exists(candidate):
      with open(candidate) as f:
        return f.read()
  raise FileNotFoundError(f"gin file {path!r} not found (searched {['.'] + search_dirs})")


def load(gin_files: list[str], bindings: list[str] = (),
         search_dirs: list[str] = ()) -> schema.RunConfig:
  """Parses gin files and `X=Y` bindings, and builds the RunConfig they describe."""
  search_dirs = list(search_dirs)
  for f in gin_files:
    d = os.path.dirname(os.path.abspath(f))
    if d not in search_dirs:
      search_dirs.append(d)
  texts = [_read(f, search_dirs) for f in gin_files]
  used = {m for t in texts for m in _MACRO_REF.findall(t)}
  lines = []
  for binding in bindings:
    if "=" not in binding:
      raise ValueError(f"--gin.{binding}: expected --gin.NAME=VALUE")
    name, value = (s.strip() for s in binding.split("=", 1))
    if "." not in name and "/" not in name and name not in used:
      raise KeyError(f"unknown gin macro {name!r} in --gin.{name}: no gin file uses %{name} "
                     f"(macros used: {', '.join(sorted(used)) or 'none'})")
    lines.append(f"{name} = {value}")
  gin.clear_config()
  for path in search_dirs:
    gin.add_config_file_search_path(path)
  try:
    gin.parse_config_files_and_bindings(gin_files, lines, finalize_config=False)
    return schema.RunConfig()
  finally:
    # The RunConfig is the product; bindings left behind would silently change the defaults
    # of every config section built later in this process.
    gin.clear_config()
