"""Which parameters train: named sets (`all`, `prompt`, `all_but_prompt`, `lora`) or path regexes.

Parameters are a nested pure dict; a path is its keys joined by `/` (e.g.
`decoder/layers/0/self_attention/query/kernel`). Soft prompts live under a path containing
`prompt`, LoRA factors under `<projection>_lora/{a,b}` (mtjax.peft.lora). The step splits the parameters into a trainable
and a frozen dict: only the trainable one is differentiated and seen by the optimizer, so frozen
parameters have no optimizer state and come back bit-identical.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from flax import traverse_util

# name -> (include regexes, exclude regexes); a path trains if it matches an include and no exclude.
NAMED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "all": ((r".*",), ()),
    "prompt": ((r"prompt",), ()),
    "all_but_prompt": ((r".*",), (r"prompt",)),
    "lora": ((r"lora",), ()),
}


def path_str(path: tuple) -> str:
  return "/".join(str(k) for k in path)


def _rules(spec: str | Sequence[str]) -> tuple[list[re.Pattern], list[re.Pattern]]:
  names = (spec,) if isinstance(spec, str) else tuple(spec)
  include, exclude = [], []
  for name in names:
    inc, exc = NAMED.get(name, ((name,), ()))
    try:
      include += [re.compile(p) for p in inc]
      exclude += [re.compile(p) for p in exc]
    except re.error as e:
      raise ValueError(f"train.trainable: {name!r} is neither one of {sorted(NAMED)} nor a "
                       f"valid path regex ({e})") from None
  return include, exclude


def trainable_paths(params: Any, spec: str | Sequence[str]) -> frozenset[tuple]:
  """Paths of the parameters that `spec` selects (regexes use `re.search` on the `/` path)."""
  include, exclude = _rules(spec)
  flat = traverse_util.flatten_dict(params)
  chosen = frozenset(p for p in flat
                     if any(r.search(path_str(p)) for r in include)
                     and not any(r.search(path_str(p)) for r in exclude))
  if not chosen:
    sample = ", ".join(path_str(p) for p in list(flat)[:4])
    raise ValueError(f"train.trainable={spec!r} selects no parameter (paths look like: {sample})")
  return chosen


def partition(params: Any, paths: frozenset[tuple]) -> tuple[dict, dict]:
  """(trainable, frozen) nested dicts; each holds only its own leaves."""
  flat = traverse_util.flatten_dict(params)
  train = {p: v for p, v in flat.items() if p in paths}
  frozen = {p: v for p, v in flat.items() if p not in paths}
  return traverse_util.unflatten_dict(train), traverse_util.unflatten_dict(frozen)


def combine(trainable: dict, frozen: dict) -> dict:
  """Inverse of `partition`."""
  flat = traverse_util.flatten_dict(trainable)
  flat.update(traverse_util.flatten_dict(frozen))
  return traverse_util.unflatten_dict(flat)
