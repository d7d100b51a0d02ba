"""`--set a.b=value` overrides on a RunConfig, with errors that name the offending key."""

from __future__ import annotations

import ast
import dataclasses
import typing
from typing import Any

from mtjax import errors
from mtjax.config import schema


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # bare words are strings: --set data.mixture=synthetic


def _coerce(key: str, value: Any, hint: Any) -> Any:
  """Checks `value` against the field's resolved type hint; ints widen to floats."""
  origin = typing.get_origin(hint)
  if hint is bool:
    if isinstance(value, bool):
      return value
  elif hint is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif hint is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif hint is str:
    return str(value)
  elif origin is tuple:
    if isinstance(value, (list, tuple)):
      return tuple(value)
    if isinstance(value, str):
      return tuple(v for v in value.split(",") if v)
  else:
    return value
  raise errors.ConfigError(f"config key {key!r} expects {getattr(hint, '__name__', hint)}, "
                           f"got {value!r}")


def apply(cfg: schema.RunConfig, key: str, raw_value: str) -> schema.RunConfig:
  """Returns `cfg` with dotted `key` set to the parsed `raw_value`."""
  parts = key.split(".")
  return _apply(cfg, parts, key, _parse_value(raw_value))


def _apply(obj, parts, full_key, value):
  hints = typing.get_type_hints(type(obj))
  fields = {f.name for f in dataclasses.fields(obj)}
  head = parts[0]
  if head not in fields:
    prefix = full_key[: len(full_key) - len(".".join(parts))]
    raise errors.ConfigKeyError(f"unknown config key {full_key!r}: {type(obj).__name__} has no "
                                f"field {head!r} (valid: "
                                f"{', '.join(prefix + f for f in sorted(fields))})")
  current = getattr(obj, head)
  if len(parts) == 1:
    if dataclasses.is_dataclass(current):
      raise errors.ConfigKeyError(f"config key {full_key!r} is a section; set one of its "
                                  "fields")
    return dataclasses.replace(obj, **{head: _coerce(full_key, value, hints[head])})
  if not dataclasses.is_dataclass(current):
    raise errors.ConfigKeyError(f"unknown config key {full_key!r}: {head!r} is not a section")
  return dataclasses.replace(obj, **{head: _apply(current, parts[1:], full_key, value)})


def apply_all(cfg: schema.RunConfig, assignments: list[str]) -> schema.RunConfig:
  for item in assignments:
    if "=" not in item:
      raise errors.ConfigError(f"--set expects key=value, got {item!r}")
    key, value = item.split("=", 1)
    cfg = apply(cfg, key.strip(), value.strip())
  return cfg
