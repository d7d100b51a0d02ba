"""Gin front end, with T5X habits: `--gin_file=a.gin --gin.MACRO=value --gin.Class.param=value`.

`--gin.X=Y` becomes the binding `X = Y`. Gin itself rejects unknown configurables and
parameters (naming them); an override of a macro that no gin file uses is rejected here, since
gin would otherwise ignore it silently.

Gin files (and their `include`s) are looked up as gin does, in search paths: the working
directory, `--gin_search_paths` (comma-separated, as in T5X), the folders of the given files, and
last the packaged configs (`mtjax/config/packaged.py`), so `--gin_file=quickstart.gin` and
`include 'experiments/t0.gin'` work from a plain `pip install`. A file may be a URL (`gs://...`),
read through `mtjax.fs`.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re

import gin

from mtjax import errors, fs
from mtjax.config import packaged, schema

_MACRO_REF = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")
_INCLUDE = re.compile(r"""^\s*include\s+(['"])(.+?)\1""", re.MULTILINE)


def _gin_reads_urls() -> None:
  """Lets gin open `scheme://` files (and includes) through mtjax.fs (idempotent)."""
  gin.config.register_file_reader(fs.open, lambda p: fs.is_url(p) and fs.isfile(p))


def _not_a_missed_lookup(record) -> bool:
  """Root-logger filter: drops the lines gin's package-resource reader logs for every search path
  it tries (an error 'Path not found' even when a later search path has the file)."""
  return not (record.pathname.endswith(os.path.join("gin", "resource_reader.py"))
              and record.msg in ("Path not found: %s", "system_path_file_exists:%s"))


def _locate(path: str, search_dirs: list[str]) -> str:
  if fs.is_url(path) or os.path.isabs(path):
    if fs.exists(path):
      return path
  else:
    for folder in [""] + search_dirs:
      candidate = fs.join(folder, path) if folder else path
      if fs.exists(candidate):
        return candidate
  raise errors.MissingError(f"gin file {path!r} not found (searched {['.'] + search_dirs}; "
                            f"packaged: {', '.join(packaged.gin_names())})")


def _read(path: str, search_dirs: list[str], seen: set[str] | None = None) -> str:
  """The text of a gin file and of everything it includes (to find the macros they use)."""
  seen = set() if seen is None else seen
  where = _locate(path, search_dirs)
  if where in seen:
    return ""
  seen.add(where)
  text = fs.read_text(where)
  included = [_read(m.group(2), search_dirs, seen) for m in _INCLUDE.finditer(text)]
  return "\n".join([text] + included)


def search_paths(gin_files: list[str], search_dirs: list[str] = ()) -> list[str]:
  """The gin search path: the given folders, each file's folder, then the packaged configs."""
  paths = [d for d in search_dirs if d]
  for f in gin_files:
    if fs.is_url(f):
      d = posixpath.dirname(f)
    elif os.path.exists(f):
      d = os.path.dirname(os.path.abspath(f))
    else:
      continue
    if d not in paths:
      paths.append(d)
  if packaged.config_dir() not in paths:
    paths.append(packaged.config_dir())
  return paths


def load(gin_files: list[str], bindings: list[str] = (),
         search_dirs: list[str] = ()) -> schema.RunConfig:
  """Parses gin files and `X=Y` bindings, and builds the RunConfig they describe."""
  # A name that is no file here may be a packaged one (`quickstart.gin`, `experiments/t0`).
  gin_files = [f if fs.is_url(f) or os.path.exists(f) else packaged.resolve_gin(f) or f
               for f in gin_files]
  search_dirs = search_paths(gin_files, list(search_dirs))
  texts = [_read(f, search_dirs) for f in gin_files]
  used = {m for t in texts for m in _MACRO_REF.findall(t)}
  lines = []
  for binding in bindings:
    if "=" not in binding:
      raise errors.ConfigError(f"--gin.{binding}: expected --gin.NAME=VALUE")
    name, value = (s.strip() for s in binding.split("=", 1))
    if "." not in name and "/" not in name and name not in used:
      raise errors.ConfigKeyError(f"unknown gin macro {name!r} in --gin.{name}: no gin file "
                                  f"uses %{name} (macros used: "
                                  f"{', '.join(sorted(used)) or 'none'})")
    lines.append(f"{name} = {value}")
  gin.clear_config()
  _gin_reads_urls()
  # Gin keeps its search path in a module-level list that only grows; this call's folders are
  # removed again afterwards, so a later load cannot find files through an earlier one's.
  prefixes = getattr(gin.config, "_LOCATION_PREFIXES", None)
  saved = list(prefixes) if prefixes is not None else None
  for path in search_dirs:
    gin.add_config_file_search_path(path)
  logging.getLogger().addFilter(_not_a_missed_lookup)
  try:
    gin.parse_config_files_and_bindings(gin_files, lines, finalize_config=False)
    return schema.RunConfig()
  finally:
    logging.getLogger().removeFilter(_not_a_missed_lookup)
    # The RunConfig is the product; bindings left behind would silently change the defaults
    # of every config section built later in this process.
    gin.clear_config()
    if saved is not None:
      prefixes[:] = saved
