"""Mixtures as the pipeline sees them: a flat, ordered list of (task, rate).

SeqIO is the source of truth for rates: `Mixture.get_rate(task)` already flattens nested
mixtures (a sub-mixture's rate is shared among its tasks in proportion to their rates). The
flattened spec is also written next to the cache so a run on an existing cache needs no SeqIO.
The order of `tasks` defines `task_ids`.
"""

from __future__ import annotations

import dataclasses
import fractions
import json
import math
import os
import tempfile
from typing import Mapping, Sequence

from mtjax import errors, fs

# Staged rate schedule: ((start_step, {task: rate}), ...), increasing start steps. From each
# start step on, the mixture samples with those rates (tasks left out get 0); before the first,
# with the mixture's own. Consumed by `pipeline.PipelineOptions.rate_stages`.
StagedRates = tuple[tuple[int, Mapping[str, float]], ...]


@dataclasses.dataclass(frozen=True)
class TaskRate:
  name: str
  rate: float


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
  name: str
  tasks: tuple[TaskRate, ...]

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(t.name for t in self.tasks)

  @property
  def weights(self) -> tuple[float, ...]:
    """Rates normalised to sum to one."""
    total = sum(t.rate for t in self.tasks)
    return tuple(t.rate / total for t in self.tasks)


# Integer proportions stay below this total: the vectorised plan (`pipeline.WindowPlan`) multiplies
# a remainder below the total by a proportion in int64, so the total must stay below 2**31.
PROPORTION_TOTAL = 2**30
# Rates relative to the smallest are read as fractions with at most this denominator: exact for
# rates written with up to six decimals (1.0099 / 1.0 is 10099 / 10000, not a binary float).
RATIO_DENOMINATOR = 10**6


def int_proportions(weights: Sequence[float]) -> tuple[int, ...]:
  """Integer draw proportions for the deterministic interleave (`select`), exact for the rates.

  Grain's `MapDataset.mix` truncates `weight * 100 / min(weights)` to an integer, so rates within
  1% of the smallest one draw equally often (1.0 and 1.0099 both become 100). Here each weight
  relative to the smallest is read as the nearest fraction with denominator <= 10**6 and all are
  put over their common denominator: 1.0 / 1.0099 / 2.0199 become 10000 / 10099 / 20199. The
  interleave depends only on the ratios of the proportions, so rates whose ratios Grain's
  integers held exactly (equal rates, 3:2, ...) keep their draw order. If the common denominator
  would take the total past `PROPORTION_TOTAL`, the weights are rounded to that total instead
  (relative error at most 2**-31 / normalised weight).
  """
  if not weights or min(weights) <= 0:
    raise ValueError(f"mixing weights must be positive, got {list(weights)}")
  low = min(weights)
  ratios = [fractions.Fraction(w / low).limit_denominator(RATIO_DENOMINATOR) for w in weights]
  common = math.lcm(*(r.denominator for r in ratios))
  ints = [int(r * common) for r in ratios]
  if sum(ints) > PROPORTION_TOTAL:
    total = sum(weights)
    ints = [max(1, round(w / total * PROPORTION_TOTAL)) for w in weights]
  divisor = math.gcd(*ints)
  return tuple(i // divisor for i in ints)


def select(k: int, proportions: Sequence[int]) -> tuple[int, int]:
  """(which part, its element number) of position `k` of the proportional interleave.

  Grain's rule (`mix._dataset_and_key_of_next_element`), on our exact integers: part 0 takes
  `ceil((k + 1) * p0 / total)` of the first `k + 1` positions, the other parts share the rest
  the same way, recursively. Deterministic and stateless, so a position restores the stream.
  After `n` positions part `i` has had `n * p_i / total` elements to within `i + 1` (each level
  of the recursion floors once), so the draw frequencies are the rates, not just in expectation.
  """
  remaining = sum(proportions)
  cur, cur1 = k, k + 1
  for i, p in enumerate(proportions):
    nxt, nxt1 = cur * (remaining - p) // remaining, cur1 * (remaining - p) // remaining
    count = cur1 - nxt1
    if cur - nxt != count:
      return i, count - 1
    remaining -= p
    cur, cur1 = nxt, nxt1
  raise AssertionError(f"no part selected at position {k} of proportions {proportions}")


def from_seqio(name: str) -> MixtureSpec:
  """Flattens a registered SeqIO mixture (or wraps a single task) into a MixtureSpec."""
  import seqio  # pylint: disable=g-import-not-at-top

  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError:
    import difflib  # pylint: disable=g-import-not-at-top

    mixtures, tasks = sorted(seqio.MixtureRegistry.names()), sorted(seqio.TaskRegistry.names())
    close = difflib.get_close_matches(name, mixtures + tasks, n=3, cutoff=0.6)
    if close:
      hint = f" Did you mean {', '.join(map(repr, close))}?"
    else:  # no near miss: name a few that exist
      some = mixtures or tasks
      more = f" and {len(some) - 8} more" if len(some) > 8 else ""
      hint = (f" Registered {'mixtures' if mixtures else 'tasks'}: {', '.join(some[:8])}{more}."
              if some else " No mixture or task is registered.")
    raise errors.ConfigError(f"unknown SeqIO mixture or task {name!r}.{hint} If it is yours, "
                             "list the module that registers it in data.modules.") from None
  if isinstance(provider, seqio.Task):
    return MixtureSpec(name, (TaskRate(provider.name, 1.0),))
  entries = tuple(TaskRate(t.name, float(provider.get_rate(t))) for t in provider.tasks)
  entries = tuple(e for e in entries if e.rate > 0)
  if not entries:
    raise errors.ConfigError(f"mixture {name!r} has no task with a positive rate")
  return MixtureSpec(name, entries)


def _path(name: str, cache_dir: str) -> str:
  return fs.join(cache_dir, "mixtures", f"{name}.json")


def _to_json(spec: MixtureSpec) -> dict:
  return {"name": spec.name, "tasks": [dataclasses.asdict(t) for t in spec.tasks]}


def write_spec(spec: MixtureSpec, cache_dir: str) -> None:
  """Atomic, and safe when several runs share a cache dir: each writer has its own temp file
  (a URL: one object upload, which appears whole)."""
  path = _path(spec.name, cache_dir)
  if fs.is_url(path):
    fs.write_json(path, _to_json(spec), indent=1)
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".tmp", dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(_to_json(spec), f, indent=1)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_spec(name: str, cache_dir: str) -> MixtureSpec | None:
  path = _path(name, cache_dir)
  if fs.is_url(path):
    fs.forget_listings(fs.join(cache_dir, "mixtures"))
    try:
      raw = fs.read_json(path)
    except FileNotFoundError:
      return None
  else:
    if not os.path.exists(path):
      return None
    with open(path) as f:
      raw = json.load(f)
  return MixtureSpec(raw["name"], tuple(TaskRate(**t) for t in raw["tasks"]))
