"""A sweep file and the members it expands to (mixture variants x seeds).

A sweep is YAML or Python (a `.py` file defining `get_sweep()` that returns the same dict):

    name: synthetic_mixtures        # names the output folder (default: the file's name)
    seeds: [0, 1]                   # each seed sets train.seed and data.seed
    set: [train.steps=300]          # overrides applied to every member, as `--set`
    variants:                       # see mtjax.recipes.variants for the keys
      - {name: proportional}
      - {name: no_sort, exclude: [synthetic_sort]}

Each member is an ordinary run in `<out>/members/<variant>-seed<k>/`: the base config with the
sweep's and the variant's overrides, the member's seeds, and the variant's rates as
`data.rate_stages = ((0, rates),)`.

The sweep file and the output folder may be URLs (`gs://bucket/sweeps/x.yaml`); they are read
and written through `mtjax.fs`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mtjax import fs
from mtjax.config import overrides, python_config, schema
from mtjax.recipes import variants as variants_lib

KEYS = ("name", "seeds", "set", "variants")


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  variants: tuple[variants_lib.Variant, ...]
  seeds: tuple[int, ...] = (0,)
  set: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of the sweep."""
  variant: variants_lib.Variant
  seed: int
  config: schema.RunConfig
  rates: Mapping[str, float]  # normalised, over every task of the mixture

  @property
  def name(self) -> str:
    return member_name(self.variant.name, self.seed)

  @property
  def run_dir(self) -> str:
    return self.config.run_dir

  @property
  def fingerprint(self) -> str:
    """Hash of the member's full config: a finished member with another config is stale."""
    text = json.dumps(schema.to_dict(self.config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def member_name(variant: str, seed: int) -> str:
  return f"{variant}-seed{seed}"


def _read_raw(path: str) -> dict:
  if not fs.exists(path):
    raise FileNotFoundError(f"sweep file {path!r} does not exist")
  if path.endswith(".py"):
    raw = python_config.call_file(path, "get_sweep", "sweep", "dict")  # local or URL
  elif path.endswith((".yaml", ".yml")):
    import yaml  # pylint: disable=g-import-not-at-top

    try:
      raw = yaml.safe_load(fs.read_text(path))
    except yaml.YAMLError as e:
      raise ValueError(f"sweep file {path}: invalid YAML ({e})") from None
  else:
    raise ValueError(f"sweep file {path!r}: use a .yaml/.yml file or a .py file with get_sweep()")
  if not isinstance(raw, Mapping):
    raise TypeError(f"sweep file {path}: expected a mapping at the top, got {type(raw).__name__}")
  return dict(raw)


def parse(raw: Mapping[str, Any], default_name: str = "sweep") -> Sweep:
  """A Sweep from its dict form; errors name the offending key or variant."""
  unknown = sorted(set(raw) - set(KEYS))
  if unknown:
    raise ValueError(f"sweep: unknown key(s) {unknown} (valid: {list(KEYS)})")
  items = raw.get("variants")
  if not items or not isinstance(items, Sequence) or isinstance(items, str):
    raise ValueError("sweep: `variants` must be a non-empty list of variant mappings")
  variants = tuple(variants_lib.parse(v, i) for i, v in enumerate(items))
  names = [v.name for v in variants]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"sweep: variant names must be unique, repeated: {duplicates}")
  seeds = raw.get("seeds", [0])
  seeds = [seeds] if isinstance(seeds, int) else seeds
  if (not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
      or len(set(seeds)) != len(seeds)):
    raise ValueError(f"sweep: `seeds` must be a list of distinct integers, got {seeds!r}")
  sets = raw.get("set", ())
  sets = (sets,) if isinstance(sets, str) else tuple(sets)
  return Sweep(name=str(raw.get("name") or default_name), variants=variants,
               seeds=tuple(seeds), set=sets)


def load(path: str) -> Sweep:
  default = os.path.splitext(os.path.basename(path))[0]
  return parse(_read_raw(path), default_name=default)


def _with_overrides(cfg: schema.RunConfig, assignments: Sequence[str], where: str):
  try:
    return overrides.apply_all(cfg, list(assignments))
  except (KeyError, ValueError) as e:
    raise ValueError(f"{where}: {e.args[0] if e.args else e}") from None


def members(sweep: Sweep, base: schema.RunConfig, out_dir: str,
            mixture_spec) -> list[Member]:
  """Every member's config, in a fixed order (variants as listed, then seeds).

  `mixture_spec(name) -> mixing.MixtureSpec` flattens a registered mixture (tests pass a stub).
  """
  if base.data.rate_stages:
    raise ValueError("mtjax ablate sets each member's data.rate_stages to its variant's rates; "
                     "the base config already sets data.rate_stages: remove it")
  base = _with_overrides(base, sweep.set, "sweep `set`")
  out = []
  for variant in sweep.variants:
    cfg = _with_overrides(base, variant.set, f"sweep variant {variant.name!r} `set`")
    mixture = variant.mixture or cfg.data.mixture
    rates = variants_lib.task_rates(variant, mixture_spec(mixture))
    for seed in sweep.seeds:
      run_dir = os.path.join(out_dir, "members", member_name(variant.name, seed))
      member_cfg = dataclasses.replace(
          cfg, run_dir=run_dir,
          data=dataclasses.replace(cfg.data, mixture=mixture, seed=seed,
                                   rate_stages=((0, dict(rates)),)),
          train=dataclasses.replace(cfg.train, seed=seed),
          eval=dataclasses.replace(cfg.eval, at_end=True))  # the table needs the metrics
      out.append(Member(variant, seed, member_cfg, rates))
  return out


def shard(items: Sequence[Member], index: int, count: int) -> list[Member]:
  """Members `index, index + count, ...`: machine `index` of `count` runs these."""
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"--shard_index must be in [0, --num_shards), got {index} of {count}")
  return [m for i, m in enumerate(items) if i % count == index]
