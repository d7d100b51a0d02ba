"""Which parameters train: named sets (`all`, `prompt`, `all_but_prompt`, `lora`), HFT halves
(`hft`, `hft:<round>`: mtjax.peft.hft, drawn from `seed`) or path regexes.

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

from mtjax.peft import hft

# name -> (include regexes, exclude regexes); a path trains if it matches an include and no exclude.
NAMED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "all": ((r".*",), ()),
    "prompt": ((r"prompt",), ()),
    "all_but_prompt": ((r".*",), (r"prompt",)),
    "lora": ((r"lora",), ()),
}


def path_str(path: tuple) -> str:
  return "/".join(str(k) for k in path)


def _rules(names: Sequence[str]) -> tuple[list[re.Pattern], list[re.Pattern]]:
  include, exclude = [], []
  for name in names:
    inc, exc = NAMED.get(name, ((name,), ()))
    try:
      include += [re.compile(p) for p in inc]
      exclude += [re.compile(p) for p in exc]
    except re.error as e:
      raise ValueError(f"train.trainable: {name!r} is neither one of {sorted(NAMED)}, hft, "
                       f"hft:<round> nor a valid path regex ({e})") from None
  return include, exclude


def trainable_paths(params: Any, spec: str | Sequence[str], *, seed: int = 0) -> frozenset[tuple]:
  """Paths of the parameters that `spec` selects (regexes use `re.search` on the `/` path).

  `spec` items are unioned: a path trains if an include (a named set's, a regex, or an HFT half)
  selects it and no named set's exclude does. `hft` / `hft:<round>` select the trainable half of
  mtjax.peft.hft's draw for `seed` (the run's train.seed) and that round."""
  names = (spec,) if isinstance(spec, str) else tuple(spec)
  rounds = [r for r in map(hft.parse, names) if r is not None]
  include, exclude = _rules([n for n in names if hft.parse(n) is None])
  flat = traverse_util.flatten_dict(params)
  strs = {p: path_str(p) for p in flat}
  halves = set()
  for r in rounds:
    frozen = hft.select(strs.values(), seed=seed, round=r)
    halves |= {p for p, s in strs.items() if s not in frozen}
  chosen = frozenset(p for p in flat
                     if (p in halves or any(r.search(strs[p]) for r in include))
                     and not any(r.search(strs[p]) for r in exclude))
  if not chosen:
    sample = ", ".join(path_str(p) for p in list(flat)[:4])
    raise ValueError(f"train.trainable={spec!r} selects no parameter (paths look like: {sample})")
  return chosen


def describe(params: Any, spec: str | Sequence[str], *, seed: int = 0) -> dict:
  """What `<run_dir>/trainable.json` records: the spec, the seed, and the trainable and frozen
  paths with their parameter counts."""
  flat = traverse_util.flatten_dict(params)
  paths = trainable_paths(params, spec, seed=seed)
  size = lambda v: int(getattr(v, "size", 0))
  trainable = sorted(path_str(p) for p in flat if p in paths)
  frozen = sorted(path_str(p) for p in flat if p not in paths)
  return {"spec": [spec] if isinstance(spec, str) else list(spec), "seed": seed,
          "num_trainable": sum(size(v) for p, v in flat.items() if p in paths),
          "num_frozen": sum(size(v) for p, v in flat.items() if p not in paths),
          "trainable": trainable, "frozen": frozen}


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
